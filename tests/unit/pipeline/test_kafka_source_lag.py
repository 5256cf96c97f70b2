"""KafkaSource.lag without a broker: the partition's end less the offset the persisted state covers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiokafka import TopicPartition

from keytrail.audit.schema import encode
from keytrail.pipeline.kafka_source import AUDIT_TOPIC, KafkaSource, _SeekToState
from keytrail.pipeline.runner import Batch
from tests.unit.detect.records import T0, event, key_arn

TP = TopicPartition(AUDIT_TOPIC, 0)
PARTITION = f"{AUDIT_TOPIC}-0"


@dataclass
class _Message:
    offset: int
    value: bytes | None


def _audit(offset: int) -> _Message:
    return _Message(offset, encode(event("Decrypt", T0 + timedelta(seconds=offset), key_arn(1))))


class _Consumer:
    """aiokafka answering `fetches` in turn, the partition ending at `end`."""

    def __init__(self, *fetches: list[_Message], end: int) -> None:
        self.fetches = [{TP: messages} for messages in fetches]
        self.end = end

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[_Message]]:
        return self.fetches.pop(0) if self.fetches else {}

    def highwater(self, tp: TopicPartition) -> int:
        return self.end

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


async def _read(consumer: _Consumer, start: int) -> tuple[KafkaSource, list[Batch]]:
    source = KafkaSource("unused:9092", idle_seconds=0.0)
    source._consumer, source.listener = consumer, _SeekToState(consumer, lambda partition: start)  # type: ignore[assignment]
    await source.listener.on_partitions_assigned([TP])
    return source, [batch async for batch in source._poll(consumer)]  # type: ignore[arg-type]


async def test_records_fetched_are_lag_until_their_batch_is_committed() -> None:
    """The runner commits a batch once the state covering it is on disk: until then the queries
    (usage, cost, /metrics' counts) do not have them. The lag was 0 from the fetch on."""
    source, batches = await _read(_Consumer([_audit(n) for n in range(10, 15)], end=20), start=10)
    assert source.lag() == {PARTITION: 10}  # 5 fetched, not checkpointed, and 5 not fetched
    await source.commit(batches[0])
    assert source.lag() == {PARTITION: 5}


async def test_a_batch_handed_on_after_the_checkpoint_is_lag_again() -> None:
    source, batches = await _read(_Consumer([_audit(0), _audit(1)], [_audit(2)], end=3), start=0)
    await source.commit(batches[0])
    assert source.lag() == {PARTITION: 1}  # the second batch, read but not committed
    await source.commit(batches[1])
    assert source.lag() == {PARTITION: 0}


async def test_messages_skipped_as_no_audit_events_are_no_lag_once_the_rest_is_committed() -> None:
    """Nothing to count in them, and no batch to commit: a partition ending in one would lag for ever."""
    fetch = [_audit(0), _audit(1), _Message(2, None), _Message(3, b"not keytrail")]
    source, batches = await _read(_Consumer(fetch, end=4), start=0)
    assert source.lag() == {PARTITION: 4}
    await source.commit(batches[0])
    assert source.lag() == {PARTITION: 0}


async def test_a_rewind_to_the_offset_another_owner_persisted_is_covered() -> None:
    source, _ = await _read(_Consumer([_audit(n) for n in range(5)], end=9), start=0)
    await source.rewind(PARTITION, 7)  # the runner's StaleBatchError: the state on disk covers 7
    assert source.lag() == {PARTITION: 2}


async def test_a_partition_assigned_caught_up_has_no_lag() -> None:
    source, _ = await _read(_Consumer(end=6), start=6)
    assert source.lag() == {PARTITION: 0}
