"""Durability under failure: `kill -9` of `keytrail serve` mid-load, and a Kafka broker outage.

Every call that got an answer has its record (matched on requestID) in the embedded log and,
with `--kafka`, on `keytrail.audit.v1` once the server or the broker is back.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from keytrail.audit.schema import EventCodec
from tests.integration.e2e.load import Load
from tests.integration.e2e.support import audit_events, cli, consume_sync, eventually, metric
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker

pytestmark = pytest.mark.integration

TOPIC = "keytrail.audit.v1"
# The audit trail issue's outage (30 s), longer than each timer a long outage meets: the shipper's
# retry backoff reaches its 5 s cap after ≈ 6 s and retries at it, and a produce request times out
# after 10 s (KafkaProducerLink).
OUTAGE_SECONDS = 30


def _shipped(bootstrap: str, want: set[str], timeout: float = 60.0) -> set[str]:
    """requestIDs on the audit topic, read until every one of `want` arrived (or the timeout)."""
    codec, seen, read = EventCodec(), set[str](), [0]

    def done(messages: list[tuple[bytes | None, bytes]]) -> bool:
        seen.update(codec.decode(value)["requestID"] for _, value in messages[read[0]:])
        read[0] = len(messages)
        return want <= seen

    with contextlib.suppress(TimeoutError):  # the caller's assertion then shows what is missing
        consume_sync(bootstrap, TOPIC, done, timeout)
    return seen


def test_kill_9_mid_load_keeps_every_answered_call_in_the_log_and_on_kafka(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with kafka_broker() as bootstrap:
        server = KeytrailServer(data, "--kafka", bootstrap).start()
        key = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
        load = Load(server, key)
        with load:
            load.wait_for(300)
            server.kill()
        answered = set(load.answered)
        # recovery: torn tail cut; shipping resumes from the persisted offset
        restarted = KeytrailServer(data, "--kafka", bootstrap).start()
        try:
            on_kafka = _shipped(bootstrap, answered)
        finally:
            assert restarted.stop() == 0
    stored = [event["requestID"] for event in audit_events(data)]
    assert len(answered) >= 300
    assert answered <= set(stored)
    assert len(stored) == len(set(stored))  # no record written twice in the log
    assert not answered - on_kafka, f"{len(answered - on_kafka)} of {len(answered)} records not on Kafka"
    assert cli("audit", "verify", "--data-dir", str(data)).returncode == 0


def test_broker_outage_under_load_delivers_every_record(tmp_path: Path) -> None:
    data, port = tmp_path / "data", free_port()
    with kafka_broker(port) as bootstrap:
        server = KeytrailServer(data, "--kafka", bootstrap).start()
        key = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
        load = Load(server, key, threads=4, pause=0.02).__enter__()
        load.wait_for(100)
        load.pause()  # the memory broker forgets on restart: read what it holds, then stop it
        before = set(load.answered)
        assert before <= _shipped(bootstrap, before)
    # Resume only once the broker is gone: a record shipped to it while it shuts down is lost with
    # its memory storage, which would be the test's doing, not the shipper's.
    load.resume()
    try:
        outage_end = time.monotonic() + OUTAGE_SECONDS  # broker down, load on: records wait in the spool
        while time.monotonic() < outage_end:
            assert server.proc is not None and server.proc.poll() is None
            time.sleep(0.5)
        during = len(load.answered) - len(before)
        with kafka_broker(port) as bootstrap:  # back on the same port (empty); shipping resumes itself
            load.wait_for(len(load.answered) + 100)
            load.stop()
            after = set(load.answered) - before
            eventually(lambda: metric(server, "keytrail_audit_spool_depth") == 0, 60, "the spool to drain")
            on_kafka = _shipped(bootstrap, after)
    finally:
        load.stop()
        assert server.stop() == 0
    assert during > 100  # the outage really was under load
    assert not after - on_kafka, f"{len(after - on_kafka)} of {len(after)} records never reached Kafka"
    assert set(load.answered) <= {event["requestID"] for event in audit_events(data)}
