"""`keytrail_pipeline_consumer_lag` of a Kafka consumer against the real broker (tansu): records
read but not yet checkpointed are lag, as serve's consumer counts them (the log's end less the
offset its last checkpoint covers)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from keytrail.audit import schema
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from tests.support.services import kafka_broker, kafka_topic
from tests.support.waits import eventually
from tests.unit.detect.records import T0, event, key_arn

pytestmark = pytest.mark.integration

from aiokafka import AIOKafkaProducer  # noqa: E402

from keytrail.pipeline.kafka_source import AUDIT_TOPIC, KafkaSource  # noqa: E402

PARTITION = f"{AUDIT_TOPIC}-0"


async def _send(producer: AIOKafkaProducer, first: int, count: int) -> None:
    for n in range(first, first + count):
        await producer.send(AUDIT_TOPIC, schema.encode(event("Decrypt", T0 + timedelta(seconds=n), key_arn(1))))
    await producer.flush()


async def test_records_read_but_not_checkpointed_are_lag_until_the_checkpoint_covers_them(tmp_path: Path) -> None:
    """The lag was the broker's end less the offset fetched: 0 while the counts the queries read
    were up to a checkpoint (2 s, or 100,000 records) behind."""
    with kafka_broker() as bootstrap:
        await kafka_topic(bootstrap, AUDIT_TOPIC, 1)
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        source = KafkaSource(bootstrap, group_id="metrics-lag")
        # No checkpoint by time in this test: the 100th record staged is the one that makes it.
        runner = Runner(state_dir(tmp_path), source, checkpoint_records=100, checkpoint_seconds=3600)
        running = asyncio.create_task(runner.run())
        try:
            await _send(producer, 0, 50)
            await eventually(lambda: runner.stats.records == 50 and source.lag(), timeout=60,
                             what="the consumer reading the first 50 records")
            await asyncio.sleep(0.5)  # fetches answered since: the broker's end told again
            assert source.lag() == {PARTITION: 50}  # read, staged, not checkpointed
            assert runner.lag() == {PARTITION: 50}  # what /metrics shows
            assert MetricsStore(tmp_path).offsets() == {PARTITION: 0}
            await _send(producer, 50, 50)
            # A message that is no audit event last: skipped, nothing to count, so no lag either.
            await producer.send_and_wait(AUDIT_TOPIC, b"not an audit event")
            await eventually(lambda: MetricsStore(tmp_path).offsets() == {PARTITION: 100}, timeout=60,
                             what="the checkpoint at the 100th record")
            await eventually(lambda: source.lag() == {PARTITION: 0}, timeout=10, what="the lag back to 0")
            assert runner.lag() == {PARTITION: 0}
        finally:
            source.stop.set()
            await asyncio.wait_for(running, 30)
            await producer.stop()
    assert sum(MetricsStore(tmp_path).outcomes().values()) == 100
