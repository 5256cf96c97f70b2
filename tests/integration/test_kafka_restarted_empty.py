"""A Kafka broker (tansu, memory storage) killed under shipping and restarted empty: what the
batch that revealed the loss becomes, on the link and through `serve --kafka`."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from keytrail.audit.schema import EventCodec
from keytrail.audit.shipper import AUDIT_TOPIC, ShippedOffset
from keytrail.transport.kafka import BrokerLostRecords, KafkaProducerLink, Message, NextOffsets, ensure_topic
from keytrail.transport.segment_log import SegmentLog
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker, topic_values
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

TOPIC = "restarted.test"


def _messages(first: int, count: int) -> list[Message]:
    return [(f"arn:aws:kms:us-east-1:111122223333:key/{i % 7}".encode(), f"value-{i}".encode(), [])
            for i in range(first, first + count)]


async def test_the_batch_a_broker_restarted_empty_acknowledged_is_said_stored() -> None:
    """As the shipper meets it: a new link after the outage, the topic created again, the offsets
    the old broker acknowledged kept. The batch acknowledged at offset 0 is on the new broker."""
    port, next_offsets = free_port(), NextOffsets()
    with kafka_broker(port) as bootstrap:
        await ensure_topic(bootstrap, TOPIC, 3)
        async with KafkaProducerLink(bootstrap, next_offsets=next_offsets) as link:
            await link.send_batch(TOPIC, _messages(0, 50))
    with kafka_broker(port):
        await ensure_topic(bootstrap, TOPIC, 3)
        async with KafkaProducerLink(bootstrap, next_offsets=next_offsets) as link:
            with pytest.raises(BrokerLostRecords, match="the broker lost records") as lost:
                await link.send_batch(TOPIC, _messages(50, 20))
            assert lost.value.stored
            await link.send_batch(TOPIC, _messages(70, 20))  # the loss is said once: offsets checked from the new log
        values = await topic_values(bootstrap, TOPIC)
    assert sorted(values) == sorted(value for _, value, _ in _messages(50, 40))


async def test_a_batch_acknowledged_on_a_topic_the_broker_no_longer_has_is_not_said_stored() -> None:
    """tansu on memory storage acknowledges writes to a topic it lost: a batch the check cannot
    find a partition for is to be sent again (at least once), not taken as stored."""
    port = free_port()
    with kafka_broker(port) as bootstrap:
        await ensure_topic(bootstrap, TOPIC, 3)
        link = await KafkaProducerLink(bootstrap).__aenter__()
        await link.send_batch(TOPIC, _messages(0, 50))
    try:
        with kafka_broker(port):  # the same link, the topic not created again
            outcomes = []
            for _ in range(5):  # the first sends may meet the broken connection instead
                try:
                    await link.send_batch(TOPIC, _messages(50, 20))
                    outcomes.append("acknowledged")
                except BrokerLostRecords as exc:
                    outcomes.append(f"lost, stored: {exc.stored}")
                    break
                except Exception as exc:  # connection errors while the client reconnects
                    outcomes.append(type(exc).__name__)
            assert outcomes[-1] == "lost, stored: False", outcomes
    finally:
        await link.__aexit__(None, None, None)


class _Load:
    """Encrypt calls, one after another on a thread, each answered requestID kept in order."""

    def __init__(self, server: KeytrailServer, keys: list[str]) -> None:
        self.kms = server.client("alice")
        self.keys = keys
        self.answered: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._call)

    def _call(self) -> None:
        while not self._stop.is_set():
            key = self.keys[len(self.answered) % len(self.keys)]
            self.answered.append(self.kms.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"])
            time.sleep(0.002)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _request_ids(bootstrap: str) -> set[str]:
    return {EventCodec().decode(value)["requestID"] for value in asyncio.run(topic_values(bootstrap, AUDIT_TOPIC))}


def test_serve_ships_the_first_batch_after_a_broker_restarted_empty_once(tmp_path: Path) -> None:
    """The first batch the new broker acknowledged raised BrokerLostRecords (its offsets went
    back): the shipped offset stayed where it was and the batch was sent again, its records (up to
    2,000) twice on the topic. Now each record from the offset the error names is there once."""
    port = free_port()
    offset_file = tmp_path / "data" / "audit" / "shipped-offset"
    first_broker = kafka_broker(port)
    bootstrap = first_broker.__enter__()
    server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
    try:
        kms = server.client("alice")
        load = _Load(server, [kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(4)])
        load.start()
        try:
            eventually_blocking(lambda: offset_file.exists() and ShippedOffset(offset_file).value > 200,
                                what="calls shipped")
            first_broker.__exit__(None, None, None)  # killed under shipping: memory storage, all gone
            killed = len(load.answered)  # these calls' records reached the log after the broker was gone
            eventually_blocking(lambda: " paused: " in server.log.read_text(), what="shipping paused")
            time.sleep(2)  # calls wait in the spool, a retry or two
            with kafka_broker(port):
                eventually_blocking(lambda: "lost records" in server.log.read_text(), what="the loss logged")
                time.sleep(1)  # calls shipped to the new broker
                load.stop()
                assert server.stop() == 0  # it ships the last records, and writes the offset
                on_topic = Counter(EventCodec().decode(value)["requestID"]
                                   for value in asyncio.run(topic_values(bootstrap, AUDIT_TOPIC)))
        finally:
            load.stop()
    finally:
        if server.proc is not None:
            server.stop()
    [lost] = re.findall(r" ERROR keytrail\.audit\.shipper: (.*)", server.log.read_text())
    found = re.fullmatch(rf"audit shipping to {bootstrap}: {AUDIT_TOPIC}\[\d\] acknowledged at offset 0, expected "
                         r"\d+ or more: the broker lost records\. Records this node shipped before offset (\d+) "
                         r"may be gone from Kafka; to send them again, stop serve and write the first offset to "
                         r"resend into \S+shipped-offset \(consumers drop repeats by eventID\)", lost)
    assert found, lost
    after = load.answered[killed:]
    assert len(after) > 100  # the first batch to the new broker carried a good many records
    assert not set(after) - set(on_topic)  # none lost
    repeated = {request_id: count for request_id, count in on_topic.items() if count > 1}
    assert not repeated, f"{len(repeated)} records on the topic more than once, of {len(on_topic)}"
    end = SegmentLog(tmp_path / "data" / "audit" / "log").end_offset()
    assert ShippedOffset(offset_file).value == end
    assert sum(on_topic.values()) == end - int(found[1])  # every record from the offset named, once


def _kafka_losses(server: KeytrailServer) -> str | None:
    found = re.search(r"^keytrail_audit_kafka_losses_total (\S+)$", server.get("/metrics")[1].decode(), flags=re.M)
    return found[1] if found else None


def test_metrics_count_a_broker_that_lost_acknowledged_records(tmp_path: Path) -> None:
    """The shipper's ERROR line was the only sign that Kafka lost audit records it had acknowledged
    (the detector and the consumers reading Kafka never see those calls): /metrics counts each
    loss, which KeytrailAuditKafkaLostRecords pages on, from 0 so that the first one is an increase."""
    port = free_port()
    first_broker = kafka_broker(port)
    bootstrap = first_broker.__enter__()
    server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap, "--no-detector").start()
    try:
        kms = server.client("alice")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        offset_file = tmp_path / "data" / "audit" / "shipped-offset"
        eventually_blocking(lambda: offset_file.exists() and ShippedOffset(offset_file).value >= 1, what="shipped")
        assert _kafka_losses(server) == "0"
        first_broker.__exit__(None, None, None)  # memory storage: the records it acknowledged are gone
        with kafka_broker(port):
            kms.encrypt(KeyId=key_id, Plaintext=b"after the loss")
            eventually_blocking(lambda: "lost records" in server.log.read_text(), what="the loss logged")
            eventually_blocking(lambda: _kafka_losses(server) == "1", what="the loss counted")
            assert server.stop() == 0
    finally:
        if server.proc is not None:
            server.stop()
