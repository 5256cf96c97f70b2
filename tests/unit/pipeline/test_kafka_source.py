"""KafkaSource without a broker: a partition whose log began again (Kafka's out-of-range reset)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiokafka import TopicPartition

from keytrail.audit.schema import encode
from keytrail.pipeline.kafka_source import AUDIT_TOPIC, KafkaSource, _SeekToState
from tests.unit.detect.records import T0, event, key_arn

TP = TopicPartition(AUDIT_TOPIC, 0)


@dataclass
class _Message:
    offset: int
    value: bytes


class _Consumer:
    """Stands for aiokafka after a Kafka broker answered a fetch at offset 200 'out of range' and
    aiokafka went back to the partition's start: the records come from offset 0 again."""

    def __init__(self) -> None:
        self.fetches = [{TP: [_Message(n, encode(event("Decrypt", T0 + timedelta(seconds=n), key_arn(1))))
                              for n in range(3)]}]

    async def getmany(self, **kwargs: Any) -> dict[TopicPartition, list[_Message]]:
        return self.fetches.pop(0) if self.fetches else {}

    def highwater(self, tp: TopicPartition) -> int:
        return 3

    def seek(self, tp: TopicPartition, offset: int) -> None:
        pass

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass


async def test_records_from_below_where_a_partition_is_read_are_a_log_that_began_again(
        caplog: pytest.LogCaptureFixture) -> None:
    """The runner skipped them all as counted already (they are below its state's offset)."""
    consumer = _Consumer()
    source = KafkaSource("unused:9092", idle_seconds=0.0)
    source._consumer, source.listener = consumer, _SeekToState(consumer, lambda partition: 200)  # type: ignore[assignment]
    await source.listener.on_partitions_assigned([TP])
    batches = [batch async for batch in source._poll(consumer)]  # type: ignore[arg-type]
    assert [(list(b.offsets), b.began_again) for b in batches] == [([0, 1, 2], True)]
    assert "keytrail.audit.v1-0 began again at offset 0, below where this consumer reads (200)" in caplog.text
    # The state covers none of the new log until the runner checkpoints the batch (and commits it).
    assert source.lag() == {"keytrail.audit.v1-0": 3}
    await source.commit(batches[0])
    assert source.lag() == {"keytrail.audit.v1-0": 0}
