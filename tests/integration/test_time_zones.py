"""A real `keytrail serve` on a machine whose zone is not UTC: its log lines and its trail tell
time in UTC, and say so."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from tests.support.server import KeytrailServer

_STAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) WARNING keytrail: --dev-credentials", re.MULTILINE)


@pytest.mark.parametrize("zone", ["Asia/Kolkata", "Pacific/Chatham", "America/New_York"])
def test_serve_stamps_its_log_lines_and_calls_in_utc_under_any_zone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    zone: str) -> None:
    """Stamped in the machine's zone with nothing saying which, serve's lines read 5.5 h off the
    trail under TZ=Asia/Kolkata (`2026-12-08 01:26:02,413` on a line of 19:56Z)."""
    monkeypatch.setenv("TZ", zone)
    before = datetime.fromtimestamp(int(time.time()), UTC)  # whole seconds: the stamp has milliseconds
    server = KeytrailServer(tmp_path / "data", "--dev-credentials", dev_clock=False).start()
    try:
        kms = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                           aws_access_key_id="111122223333", aws_secret_access_key="unchecked",
                           config=Config(retries={"total_max_attempts": 1}))
        kms.create_key()
    finally:
        assert server.stop() == 0
    after = datetime.now(UTC)
    stamp = _STAMPED.search(server.log.read_text())
    assert stamp is not None, server.log.read_text()
    assert before <= datetime.fromisoformat(stamp[1]) <= after, (stamp[1], before, after)
