"""Where events come from: AWS CloudTrail log files (offline) and the Kafka audit topic (live).

The topic's values come as they are (`kafka_values`); `DetectorRunner.feed_values` reads the Avro
ones columnwise (`detect.avro_events`) and hands the rest, JSON CloudTrail records and values that
reader cannot read, to `default_decoder` (the audit codec, `keytrail.audit.schema.decode_batch`,
and orjson), which skips what it cannot read.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from keytrail.detect.events import KmsEvent, read_event
from keytrail.detect.time_order import RUN_EVENTS, time_ordered
from keytrail.log_lines import retention_gap
from keytrail.transport.cloudtrail_logs import (
    LogFile,
    LogFileProblem,
    ReadReport,
    collector_paused,
    iter_log_files,
    readable_records,
)
from keytrail.transport.read_problems import Problems
from keytrail.transport.topics import AUDIT_TOPIC, is_imported

__all__ = [
    "AUDIT_TOPIC",
    "UNJUDGED",
    "CloudTrailRead",
    "Decoder",
    "PartitionMerge",
    "ValueBatch",
    "default_decoder",
    "is_avro",
    "kafka_values",
    "read_cloudtrail_events",
]

log = logging.getLogger(__name__)

AVRO_MAGIC = b"\xc3\x01"  # Avro single-object encoding
UNJUDGED = "their calls were not judged"  # what records a source deleted before the detector read them cost
Decoder = Callable[[list[bytes]], list[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class ValueBatch:
    """The audit values judged next (what a fetch let go of, in `PartitionMerge`'s order), and where
    they were read (what a log line about them names)."""

    values: list[bytes]
    where: str
    # Whether each value is history `keytrail audit import` added (its shipper marked it); empty
    # when none is.
    imported: Sequence[bool] = ()
    caught_up: bool = True  # read as far as the source held at the start: no longer replaying the past
    # Records of the source after this batch, per partition (`<topic>-<n>`), as of its fetch: once
    # the batch is judged, how far the detector is behind (`DetectorRunner.lag`).
    lag: Mapping[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CloudTrailRead:
    """What reading CloudTrail files for detection saw besides the events it gives."""

    problems: Problems = field(default_factory=Problems)  # records that could not be read: counted, the first kept
    events: int = 0  # KMS events read
    later: int = 0  # of them, dated after `up_to`: not given


@contextmanager
def read_cloudtrail_events(paths: Iterable[Path], *, up_to: datetime | None = None,
                           run_events: int = RUN_EVENTS) -> Iterator[tuple[Iterator[KmsEvent], CloudTrailRead]]:
    """The KMS events of CloudTrail log files (`{"Records": [...]}`, .json or .json.gz, files or
    folders) dated up to `up_to` (all by default), in eventTime order, and what the reading saw:
    the problems of the records that could not be read, each naming its file and record (the
    records every other reader of the files refuses too, `transport.cloudtrail_records`); other
    services' records are passed over uncounted. Digest files are passed over; a file that is no
    CloudTrail log raises LogFileProblem (a ValueError) naming it, for detection over part of the
    input would misjudge the rest. Every file is read on entry, `run_events` events held at a
    time (`detect.time_order`); the events are given once, while inside."""
    read, report = CloudTrailRead(), ReadReport()
    events = _dated_up_to(_file_events(paths, read, report), up_to, read)
    # Stable, by time alone: events of one second (CloudTrail's resolution) keep the files' order,
    # which for keytrail's own export is the log's, the order the live detector judged them in.
    # The collector paused: every file's dicts are acyclic (~2x on a 50k-record file).
    with collector_paused(), time_ordered(events, run_events=run_events, text_read=lambda: report.text) as ordered:
        yield ordered, read


def _file_events(paths: Iterable[Path], read: CloudTrailRead, report: ReadReport) -> Iterator[KmsEvent]:
    """The KMS events of the files, in the files' order, their records' text counted in `report`;
    each record let go of once its event is read."""
    for path in iter_log_files(paths, _unlisted):
        for _, record in readable_records(LogFile(path), report, read.problems.append):
            read.events += 1
            yield read_event(record)


def _dated_up_to(events: Iterator[KmsEvent], up_to: datetime | None, read: CloudTrailRead) -> Iterator[KmsEvent]:
    for event in events:
        if up_to is None or event.event_time <= up_to:
            yield event
        else:
            read.later += 1


def _unlisted(problem: str) -> None:
    """A folder that cannot be listed, or a log's name in one on what is no regular file, is input
    not read, as a file that is no log: detection stops."""
    raise LogFileProblem(problem)


def is_avro(value: bytes) -> bool:
    """Whether an audit topic value is Avro single-object encoded (else a JSON CloudTrail record)."""
    return value[:2] == AVRO_MAGIC


def default_decoder() -> Decoder:
    """The audit codec for Avro single-object values, JSON CloudTrail records otherwise; a value
    neither can read is logged and skipped (one bad message must not stop the detector)."""
    from keytrail.audit.schema import decode_batch as avro_batch

    def decode_run(values: list[bytes], avro: bool) -> list[dict[str, Any]]:
        try:
            return list(avro_batch(values)) if avro else [_json_record(v) for v in values]
        except Exception as exc:
            if len(values) > 1:  # find the bad one(s), keep the rest
                return [record for value in values for record in decode_run([value], avro)]
            log.warning("skipping an audit message that cannot be decoded: %s", exc)
            return []

    def decode(values: list[bytes]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for avro, run in itertools.groupby(values, key=is_avro):
            records += decode_run(list(run), avro)
        return records

    return decode


def _json_record(value: bytes) -> dict[str, Any]:
    """The CloudTrail record of a JSON value. JSON that is no object (another producer's null, a
    number) is refused here: let on to the rules, it failed them and cost the rest of its batch."""
    record = orjson.loads(value)
    if not isinstance(record, dict):
        raise ValueError(f"not a JSON object: {value[:40]!r}")
    return record


# Records are judged in the order they were written to the topic, whatever partition holds them: by
# their Kafka timestamp (set per record when the node's shipper writes it, in its log's order), then
# partition, each partition's in offset order. Events of different keys sit in different partitions
# (keyed by key ARN), and rules that weigh one principal's calls of several keys against each other
# (unauthorized-decrypt's first keys before the flood alarm, key-reconnaissance's call that reaches
# min_keys, a ReEncrypt's second key in the ledger) judged them in whatever order the broker's fetches
# interleaved the partitions: each restart paged new alarms, and two detectors disagreed. Deciding in
# the rules from what alarms.jsonl holds would have kept a restart quiet, but not two detectors, nor
# every rule weighing keys against each other, in agreement. Merging by event time would judge history
# `audit import` adds, or a node's spool shipped late, where a restart's replay puts it, not where the
# live detector met it: that replay would page anew. The written order is what the live detector
# meets, and what every replay finds again.
# A record written SETTLE_MS after it having been read, the records written up to it to any partition
# have been too (a shipping round's parts reach the partitions within milliseconds of each other, the
# next round only once the broker took them; the margin covers nodes' clocks a little apart). A fetch
# that brings nothing settles everything held.
SETTLE_MS = 500
# Records held (read ahead of a slower partition) at most, shared evenly by the partitions: one whose
# share is full pauses its fetching, so memory stays bounded when a partition runs far ahead.
HELD_RECORDS = 50_000


class PartitionMerge:
    """The records of a topic's partitions in one order, the same on every read of the topic: by
    their Kafka timestamp, then partition, each partition's in offset order (`release`)."""

    def __init__(self) -> None:
        self._held: dict[int, deque[Any]] = {}  # partition -> its records read, not released yet
        self._newest = -1  # the latest Kafka timestamp read (ms)

    def add(self, fetched: Mapping[Any, Sequence[Any]]) -> None:
        """The records of one fetch (partition -> its records in offset order)."""
        for part, messages in fetched.items():
            kept = [m for m in messages if m.value is not None]
            self._held.setdefault(part.partition, deque()).extend(kept)
            self._newest = max([self._newest, *(_stamp(m) for m in kept)])

    def release(self, unread: Collection[int], *, idle: bool) -> list[Any]:
        """The records that can be judged now, in order. `unread`: the partitions with records not
        read yet: one holding none of them back is waited for, as its next may come first. `idle`:
        the last fetch brought nothing, so no record written before those held is on its way."""
        if any(not self._held.get(part) for part in unread):
            return []
        heads = [(_stamp(queue[0]), part) for part, queue in self._held.items() if queue]
        heapq.heapify(heads)
        ready: list[Any] = []
        while heads and (idle or heads[0][0] <= self._newest - SETTLE_MS):
            part = heads[0][1]
            queue = self._held[part]
            ready.append(queue.popleft())
            if queue:
                heapq.heapreplace(heads, (_stamp(queue[0]), part))
            elif part in unread:
                break  # its next record, not read yet, may come before the other heads
            else:
                heapq.heappop(heads)
        return ready

    def held(self, partition: int) -> int:
        """How many records of `partition` are read and not released yet."""
        return len(self._held.get(partition, ()))

    def holds_below(self, ends: Mapping[Any, int]) -> bool:
        """Whether a record below its partition's `ends` offset is still held (not judged yet)."""
        return any((queue := self._held.get(part.partition)) and queue[0].offset < end for part, end in ends.items())


def _stamp(message: Any) -> int:
    """A record's Kafka timestamp in ms (-1 for a record written without one)."""
    return message.timestamp if message.timestamp is not None else -1


async def kafka_values(bootstrap: str, *, topic: str = AUDIT_TOPIC) -> AsyncIterator[ValueBatch]:
    """The audit topic's values, one batch per fetch (empty when idle or while waiting for a
    partition) naming the offsets it holds, in the order of `PartitionMerge`:
    `DetectorRunner.run` reads them.

    The detector keeps its state in memory, so it reads the topic from the start on every run
    (no committed offsets): its windows and baselines are rebuilt before it raises anything new.
    """
    from aiokafka import AIOKafkaConsumer

    from keytrail.transport.kafka import quiet_bootstrap, read_again_where_log_ended_below
    from keytrail.transport.kafka_security import kafka_client_options

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **kafka_client_options(),
    )
    merge = PartitionMerge()
    try:
        with quiet_bootstrap():  # inside the try: a broker out of reach still closes what start opened
            await consumer.start()
        ends = await _end_offsets(consumer, topic)
        behind = dict(ends)
        reading: dict[Any, int] = {}  # where each partition is read from next, once a fetch told
        while True:
            fetched = await consumer.getmany(timeout_ms=500, max_records=5000)
            _say_passed_over(topic, fetched, reading)
            merge.add(fetched)
            reading = {part: await consumer.position(part) for part in consumer.assignment()}
            began_again = await read_again_where_log_ended_below(consumer, reading, "detector")
            behind = {part: end for part, end in behind.items()
                      if part not in began_again and await consumer.position(part) < end}
            ready = merge.release(_unread(consumer, reading, ends), idle=not any(fetched.values()))
            _pace(consumer, merge)
            yield _batch(topic, ready, caught_up=not behind and not merge.holds_below(ends),
                         lag=_lag(consumer, reading, merge))
    finally:
        await consumer.stop()


def _batch(topic: str, messages: Sequence[Any], *, caught_up: bool, lag: Mapping[str, int]) -> ValueBatch:
    """The batch of the records to judge next."""
    imported = [is_imported(m.headers) for m in messages]
    return ValueBatch([m.value for m in messages], _offsets(topic, messages),
                      imported=imported if any(imported) else (), caught_up=caught_up, lag=lag)


def _unread(consumer: Any, reading: Mapping[Any, int], ends: Mapping[Any, int]) -> list[int]:
    """The partitions holding records after where they are read: up to the end the broker last told
    (every fetch answer carries it), else, before it told any, the end at the start."""
    unread = []
    for part, at in reading.items():
        end = consumer.highwater(part)
        if at < (end if end is not None else ends.get(part, 0)):
            unread.append(part.partition)
    return unread


def _pace(consumer: Any, merge: PartitionMerge) -> None:
    """Pause fetching the partitions whose share of HELD_RECORDS is held (waiting for a slower one),
    resume the others."""
    parts = consumer.assignment()
    share = HELD_RECORDS // max(len(parts), 1)
    for part in parts:
        if merge.held(part.partition) >= share:
            consumer.pause(part)
        elif part in consumer.paused():
            consumer.resume(part)


def _say_passed_over(topic: str, fetched: Mapping[Any, Sequence[Any]], reading: Mapping[Any, int]) -> None:
    """Say, once, what a fetch that began above where its partition was read passed over: retention
    deleted those records while the detector was behind (Kafka answered its fetch out of range, and
    aiokafka went on from the partition's start, silently). A start reads from the log's start,
    wherever retention left it: nothing to say there."""
    for part, messages in fetched.items():
        expected = reading.get(part)
        if messages and expected is not None and messages[0].offset > expected:
            log.warning(retention_gap(f"{topic}-{part.partition}", expected, messages[0].offset, "detector", UNJUDGED))


async def _end_offsets(consumer: Any, topic: str) -> dict[Any, int]:
    """Where each partition of the topic ended at the start. Until every one is read that far the
    detector replays the past, and partitions get there at their own pace: one can be months
    ahead of another in event time."""
    from aiokafka import TopicPartition

    partitions = [TopicPartition(topic, number) for number in sorted(consumer.partitions_for_topic(topic) or ())]
    return dict(await consumer.end_offsets(partitions)) if partitions else {}


def _lag(consumer: Any, reading: Mapping[Any, int], merge: PartitionMerge) -> dict[str, int]:
    """Records not judged: those held in `merge` and those after `reading` (each partition's next
    offset) up to the partition's end as the broker last told it (every fetch answer carries it); a
    partition it has not told yet is left out."""
    ends = {part: consumer.highwater(part) for part in reading}
    return {f"{part.topic}-{part.partition}": max(0, end - reading[part]) + merge.held(part.partition)
            for part, end in sorted(ends.items()) if end is not None}


def _offsets(topic: str, messages: Sequence[Any]) -> str:
    """`<topic> partition P offsets A-B, …` of the records of one batch (each partition's in offset order)."""
    spans: dict[int, tuple[int, int]] = {}
    for message in messages:
        spans[message.partition] = (spans.get(message.partition, (message.offset, 0))[0], message.offset)
    described = [f"partition {part} offsets {first}-{last}" for part, (first, last) in sorted(spans.items())]
    return f"{topic} {', '.join(described)}" if described else f"{topic} (no messages)"
