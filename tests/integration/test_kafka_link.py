"""The shipper's Kafka link against a real Kafka-protocol broker (tansu, memory storage)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from keytrail.transport.kafka import BrokerLostRecords, KafkaProducerLink, Message, ensure_topic
from tests.support.services import free_port, kafka_broker

pytestmark = pytest.mark.integration

TOPIC = "link.test"
PARTITIONS = [0, 1, 2]


def _messages(count: int) -> list[Message]:
    """Keyed messages, every third with a header."""
    return [(f"arn:aws:kms:us-east-1:111122223333:key/{i % 7}".encode(), f"value-{i}".encode(),
             [("n", b"%d" % i)] if i % 3 == 0 else []) for i in range(count)]


async def _consume(bootstrap: str, want: int) -> list[tuple[int, bytes, list[tuple[str, bytes]]]]:
    consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    found: list[tuple[int, bytes, list[tuple[str, bytes]]]] = []
    try:
        async with asyncio.timeout(30):
            while len(found) < want:
                batches = await consumer.getmany(timeout_ms=500)
                found += [(m.partition, m.value, list(m.headers)) for ms in batches.values() for m in ms if m.value]
    finally:
        await consumer.stop()
    return found


async def test_keyed_messages_land_where_the_default_partitioner_puts_them_in_order() -> None:
    messages = [*_messages(500), (None, b"key-less", [])]
    with kafka_broker() as bootstrap:
        await ensure_topic(bootstrap, TOPIC, len(PARTITIONS))
        async with KafkaProducerLink(bootstrap) as link:
            await link.send_batch(TOPIC, messages)
        found = await _consume(bootstrap, len(messages))
    default = DefaultPartitioner()
    expected: dict[int, list[bytes]] = {partition: [] for partition in PARTITIONS}
    for key, value, _ in messages:  # key-less messages go to the first partition
        expected[default(key, PARTITIONS, PARTITIONS) if key else PARTITIONS[0]].append(value)
    assert {p: [value for q, value, _ in found if q == p] for p in PARTITIONS} == expected
    assert {value: headers for _, value, headers in found} == {value: headers for _, value, headers in messages}


async def test_a_broker_that_restarted_empty_is_never_taken_as_having_stored_the_records() -> None:
    port = free_port()
    with kafka_broker(port) as bootstrap:
        await ensure_topic(bootstrap, TOPIC, len(PARTITIONS))
        link = await KafkaProducerLink(bootstrap).__aenter__()
        await link.send_batch(TOPIC, _messages(50))
    try:
        with kafka_broker(port):  # same address, memory storage: the topic and its records are gone
            outcomes = []
            for _ in range(5):  # the first sends may meet the broken connection instead
                try:
                    await link.send_batch(TOPIC, _messages(50))
                    outcomes.append("acknowledged")
                except BrokerLostRecords:
                    outcomes.append("lost")
                    break
                except Exception as exc:  # connection errors while the client reconnects
                    outcomes.append(type(exc).__name__)
            assert "acknowledged" not in outcomes and outcomes[-1] == "lost", outcomes
    finally:
        await link.__aexit__(None, None, None)
