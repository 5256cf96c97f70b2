"""While the Kafka broker is down, the log stays readable: aiokafka's retries thinned, keytrail's own lines kept."""

from __future__ import annotations

import re
import signal
import socket
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

AIOKAFKA_LINE = re.compile(r" (?:ERROR|WARNING) aiokafka(?:\.\w+)*: ", re.MULTILINE)
PAUSED_LINE = re.compile(r" WARNING keytrail\.audit\.shipper: audit shipping to \S+ paused: ", re.MULTILINE)


def test_serve_with_its_broker_down_logs_aiokafka_s_repeated_line_once_and_its_own_once(tmp_path: Path) -> None:
    """The audit shipper (serve's child) retries a closed port every 0.2, 0.4, … 5 s, aiokafka logging
    each failed connect: the first of those lines is written, the next ones left out for a minute.
    The shipper's own 'paused' line likewise: it was written at every retry, 720 lines an hour.
    Stopped, it names the records it leaves in the log (it said so only for a broker that never answers)."""
    server = KeytrailServer(tmp_path / "data", "--kafka", f"127.0.0.1:{free_port()}", "--no-detector").start()
    try:
        server.client().create_key()
        eventually_blocking(lambda: PAUSED_LINE.search(server.log.read_text()), what="shipping paused")
        time.sleep(6)  # retries after 0.2, 0.4, 0.8, 1.6 and 3.2 s: five more failed connects
    finally:
        server.stop()
    log = server.log.read_text()
    assert len(PAUSED_LINE.findall(log)) == 1, log
    assert len(AIOKAFKA_LINE.findall(log)) == 1, log
    assert re.search(r" WARNING keytrail\.audit\.shipping: audit shipping to \S+ stopped with records 0 to \d+ not "
                     r"acknowledged: they wait in the event log", log), log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_serve_stops_without_waiting_for_a_broker_that_never_answers(tmp_path: Path, sig: int) -> None:
    """A broker that takes connections and never answers (hung, or a proxy with nothing behind it)
    held the audit shipper's connection attempt (10 s) past serve's stop, which killed it after
    5 s with a warning. Now shipping ends before that, saying which records wait in the log."""
    with socket.create_server(("127.0.0.1", 0)) as hung:  # never accepted: the kernel's backlog completes the connects
        bootstrap = f"127.0.0.1:{hung.getsockname()[1]}"
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
        try:
            server.client().create_key()
        finally:
            assert server.stop(sig) == 0
    log = server.log.read_text()
    assert "did not stop" not in log and "Traceback" not in log, log
    # The shipper child's line under its module's name: as `python -m`, it read 'WARNING __main__: …'.
    assert re.search(r" WARNING keytrail\.audit\.shipping: audit shipping to \S+ stopped after 3 s with records 0 to "
                     r"\d+ not acknowledged", log), log


def test_serve_stops_in_one_stop_time_with_an_alarm_waiting_for_a_broker_that_never_answers(tmp_path: Path) -> None:
    """The detector's Kafka hook, still inside its first delivery (not yet known to be down), held
    the close's drain for its whole 10 s, and the shipper's 3 s came after that: 13.5 s in all.
    Now the drain ends once the hook has taken nothing for 3 s (its outbox keeps the alarm), and the
    detector and the shipper stop side by side."""
    with socket.create_server(("127.0.0.1", 0)) as hung:  # never accepted: the kernel's backlog completes the connects
        bootstrap = f"127.0.0.1:{hung.getsockname()[1]}"
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, dev_clock=False).start()
        try:
            kms = server.client()
            blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
            with pytest.raises(ClientError, match="AccessDeniedException"):
                server.client("bob").decrypt(CiphertextBlob=blob)  # an unauthorized decrypt: an alarm
            outbox = tmp_path / "data" / "alarm-outbox-kafka.jsonl"
            eventually_blocking(lambda: outbox.exists() and outbox.stat().st_size > 0, what="the alarm it is owed")
        finally:
            started = time.monotonic()
            assert server.stop() == 0
            stopped_in = time.monotonic() - started
    log = server.log.read_text()
    assert "did not stop" not in log and "Traceback" not in log, log
    assert re.search(r"alarm\(s\) not delivered when the hooks closed after 3s: Kafka 127\.0\.0\.1:\d+ \(kept for the "
                     r"next start\)", log), log
    assert "stopped after 3 s with records" in log, log
    assert stopped_in < 10, stopped_in  # the drain's whole time alone was 10 s


def test_serve_stopped_while_a_batch_waits_for_a_broker_gone_logs_no_traceback(tmp_path: Path) -> None:
    """The shipper's stop ends a batch that aiokafka still retries against a broker gone since:
    when the producer then failed it, asyncio logged its exception, never retrieved, with a traceback."""
    with kafka_broker() as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
        kms = server.client()
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        shipped = tmp_path / "data" / "audit" / "shipped-offset"
        eventually_blocking(shipped.exists, what="the first batch shipped")
    try:  # the broker is gone: the next batch is retried until its request times out (10 s)
        kms.encrypt(KeyId=key, Plaintext=b"x")
        eventually_blocking(lambda: "Got error produce response" in server.log.read_text(), what="the batch retried")
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "never retrieved" not in log, log
    assert "stopped after 3 s with records" in log, log
