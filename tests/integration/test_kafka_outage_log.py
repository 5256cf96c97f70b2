"""While the Kafka broker is down, the log stays readable: aiokafka's retries thinned, keytrail's own lines kept."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.support.server import KeytrailServer
from tests.support.services import free_port

pytestmark = pytest.mark.integration

AIOKAFKA_LINE = re.compile(r" (?:ERROR|WARNING) aiokafka(?:\.\w+)*: ", re.MULTILINE)
PAUSED_LINE = re.compile(r" WARNING keytrail\.audit\.shipper: audit shipping to \S+ paused: ", re.MULTILINE)


def test_serve_with_its_broker_down_logs_aiokafka_s_repeated_line_once_and_keeps_its_own(tmp_path: Path) -> None:
    """The audit shipper (serve's child) retries a closed port every 0.2, 0.4, … 5 s, aiokafka logging
    each failed connect: the first of those lines is written, the next ones left out for a minute."""
    server = KeytrailServer(tmp_path / "data", "--kafka", f"127.0.0.1:{free_port()}", "--no-detector").start()
    try:
        deadline = time.monotonic() + 30
        while len(PAUSED_LINE.findall(server.log.read_text())) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        server.stop()
    log = server.log.read_text()
    assert len(PAUSED_LINE.findall(log)) >= 4, log  # four attempts: four aiokafka lines, unthinned
    assert len(AIOKAFKA_LINE.findall(log)) == 1, log
