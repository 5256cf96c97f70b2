"""`detect --kafka` judges the audit topic's records in one order, the same on every read: by their
Kafka timestamp (the shipper writes them in its log's order), then partition, each partition's in
offset order, however the broker's fetches interleave the partitions (detect/sources.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from keytrail.detect.sources import SETTLE_MS, PartitionMerge


@dataclass(frozen=True)
class Record:
    """What the merge reads of an aiokafka ConsumerRecord."""

    partition: int
    offset: int
    timestamp: int | None
    value: bytes | None = b"call"


@dataclass(frozen=True)
class Part:
    """What the merge reads of an aiokafka TopicPartition."""

    partition: int


def topic(stamps: Sequence[Sequence[int]]) -> list[list[Record]]:
    """Each partition's records, timestamps given in offset order."""
    return [[Record(p, offset, stamp) for offset, stamp in enumerate(part)] for p, part in enumerate(stamps)]


def read(partitions: list[list[Record]], rng: random.Random) -> list[Record]:
    """Every record as one read of the topic judges it: fetches bring a random run of a random
    partition each (as the broker's answers come), `unread` the partitions not read to their end;
    then an empty fetch."""
    merge, cursor, judged = PartitionMerge(), [0] * len(partitions), []
    while any(at < len(part) for at, part in zip(cursor, partitions, strict=True)):
        p = rng.choice([p for p, part in enumerate(partitions) if cursor[p] < len(part)])
        take = rng.randint(1, 4)
        merge.add({Part(p): partitions[p][cursor[p]:cursor[p] + take]})
        cursor[p] += take
        unread = [p for p, part in enumerate(partitions) if cursor[p] < len(part)]
        judged += merge.release(unread, idle=False)
    return judged + merge.release([], idle=True)


def test_every_read_of_a_topic_judges_its_records_in_the_order_they_were_written() -> None:
    rng = random.Random(5)
    stamps = [sorted(rng.sample(range(0, 5000, 7), 40)) for _ in range(4)]  # ties across partitions too
    partitions = topic(stamps)
    written = sorted((r for part in partitions for r in part), key=lambda r: (r.timestamp, r.partition, r.offset))
    for seed in range(20):
        assert read(partitions, random.Random(seed)) == written


def test_a_partition_not_read_yet_holds_back_the_others() -> None:
    merge = PartitionMerge()
    merge.add({Part(0): [Record(0, 0, 100), Record(0, 1, 5000)]})
    assert merge.release([1], idle=True) == []  # partition 1 may hold a record written before them
    merge.add({Part(1): [Record(1, 0, 50)]})
    assert [(r.partition, r.offset) for r in merge.release([1], idle=True)] == [(1, 0)]  # and its next may too
    assert [(r.partition, r.offset) for r in merge.release([], idle=True)] == [(0, 0), (0, 1)]


def test_records_written_just_now_wait_for_those_written_before_them_on_other_partitions() -> None:
    """A shipping round's parts reach the partitions a moment apart: the fetch that brought one part
    may be answered before the broker has the next."""
    merge = PartitionMerge()
    merge.add({Part(1): [Record(1, 0, 1000)]})
    assert merge.release([], idle=False) == []
    merge.add({Part(0): [Record(0, 0, 999)]})  # written just before, to partition 0: read after
    merge.add({Part(0): [Record(0, 1, 1000 + SETTLE_MS)]})  # written later: the first two have settled
    assert [(r.partition, r.offset) for r in merge.release([], idle=False)] == [(0, 0), (1, 0)]
    assert merge.held(0) == 1
    assert [(r.partition, r.offset) for r in merge.release([], idle=True)] == [(0, 1)]  # nothing on its way


def test_records_without_a_value_or_a_timestamp_are_merged_as_written_first() -> None:
    merge = PartitionMerge()
    merge.add({Part(0): [Record(0, 0, 10), Record(0, 1, 20, value=None)], Part(1): [Record(1, 0, None)]})
    assert [(r.partition, r.offset) for r in merge.release([], idle=True)] == [(1, 0), (0, 0)]
    assert merge.holds_below({Part(0): 2}) is False
