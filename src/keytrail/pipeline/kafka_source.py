"""Source adapter for a Kafka consumer group on `keytrail.audit.v1` (aiokafka).

Each partition's state file holds its offset, so on assignment the consumer seeks to it rather
than to the group's committed offset; the group commit follows each persisted batch (for lag
and tooling) and a commit lost to a rebalance is harmless. Two consumers in one group split the
partitions; their state files together give the single-consumer result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from keytrail.log_lines import retention_gap
from keytrail.pipeline.decode import known_writer, say_unknown_writers
from keytrail.pipeline.runner import UNCOUNTED, Batch
from keytrail.transport.kafka import quiet_bootstrap, read_again_where_log_ended_below
from keytrail.transport.kafka_security import kafka_client_options
from keytrail.transport.topics import AUDIT_TOPIC

__all__ = ["AUDIT_TOPIC", "KafkaSource"]

# Leaving the group tells the others to take this consumer's partitions now rather than after its
# session timeout; with the broker out of reach aiokafka would try for ever, and a stop must end.
LEAVE_GROUP_SECONDS = 3.0
log = logging.getLogger(__name__)


class _SeekToState(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, consumer: AIOKafkaConsumer, start_at: Callable[[str], int]) -> None:
        self.consumer = consumer
        self.start_at = start_at
        self.assigned: set[TopicPartition] = set()
        self.next: dict[TopicPartition, int] = {}  # the offset each assigned partition is read from next
        # Per assigned partition, the offset its persisted state covers (what the queries read: the
        # runner commits a batch once that state is on disk), and the end of the last batch handed on.
        self.covered: dict[TopicPartition, int] = {}
        self.handed: dict[TopicPartition, int] = {}

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self.assigned -= set(revoked)
        for tp in revoked:
            for offsets in (self.next, self.covered, self.handed):
                offsets.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self.read_from(tp, self.start_at(_partition_name(tp)))
            self.consumer.seek(tp, self.next[tp])
        self.assigned |= set(assigned)

    def read_from(self, tp: TopicPartition, offset: int) -> None:
        """`tp` is read from `offset`, up to which the state covers it: the state's own offset, or the
        start of a log that began again (of which the state covers nothing)."""
        self.next[tp] = self.covered[tp] = offset
        self.handed.pop(tp, None)

    def consumed(self, tp: TopicPartition, default: int) -> int:
        """The offset `tp` is consumed up to (`default` if it is not assigned): what its persisted state
        covers. Once that covers every batch handed on, where it is read up to: what lies between are
        messages skipped as no audit events, with nothing to count (a partition ending in one would
        otherwise lag for ever)."""
        covered = self.covered.get(tp, default)
        if covered < self.handed.get(tp, covered):
            return covered
        return self.next.get(tp, covered)


def _partition_name(tp: TopicPartition) -> str:
    return f"{tp.topic}-{tp.partition}"


def _topic_partition(name: str) -> TopicPartition:
    """The partition `_partition_name` gave `name`."""
    topic, _, number = name.rpartition("-")
    return TopicPartition(topic, int(number))


class KafkaSource:
    """Batches from a consumer group (`group_id`: one group per consumer kind)."""

    def __init__(
        self,
        bootstrap: str,
        *,
        group_id: str = "keytrail-metrics",
        topic: str = AUDIT_TOPIC,
        max_records: int = 10_000,
        idle_seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.max_records = max_records
        self.idle_seconds = idle_seconds
        self.stop = stop or asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self.listener: _SeekToState | None = None

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
            **kafka_client_options(),
        )
        self._consumer, self.listener = consumer, _SeekToState(consumer, start_at)
        consumer.subscribe([self.topic], listener=self.listener)
        started = False
        try:
            with quiet_bootstrap():  # inside the try: a broker out of reach still closes what start opened
                started = await self._unless_stopped(consumer.start())
            if started:
                async for batch in self._poll(consumer):
                    yield batch
        finally:
            await _close(consumer, self.group_id, joined=started)

    async def _unless_stopped(self, work: Awaitable[None]) -> bool:
        """Await `work` unless `stop` is set first, which cancels it: a stop while the consumer
        starts (a broker gone quiet, a topic still being created) ends the run at once."""
        task = asyncio.ensure_future(work)
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            return False
        task.result()  # what start raised (a broker out of reach) is the caller's to tell
        return True

    async def _poll(self, consumer: AIOKafkaConsumer) -> AsyncIterator[Batch]:
        last_data = time.monotonic()
        began_again: set[TopicPartition] = set()  # read from their start again, until a batch says so
        while not self.stop.is_set():
            data = await consumer.getmany(timeout_ms=300, max_records=self.max_records)
            began_again |= self._read_up_to(data)
            began_again |= await self._ended_below_reading(consumer)
            if not data:
                if self.idle_seconds is not None and time.monotonic() - last_data > self.idle_seconds:
                    self._say_if_unassigned()
                    return
                continue
            last_data = time.monotonic()
            for tp, messages in data.items():
                events = _audit_events(_partition_name(tp), messages)
                if events:
                    if self.listener is not None:
                        self.listener.handed[tp] = events[-1].offset + 1
                    yield Batch(
                        _partition_name(tp),
                        [m.offset for m in events],
                        values=[m.value for m in events],
                        source_end=consumer.highwater(tp),
                        began_again=tp in began_again,
                    )
                    began_again.discard(tp)

    def _say_if_unassigned(self) -> None:
        """Idle without a partition is not caught up: "consumed 0 records" alone read as if it were.
        The group gave every partition to other members, or had not yet moved those of a member that
        died (it holds them until its session times out)."""
        if self.listener is None or self.listener.assigned:
            return
        log.warning("stopped after %g idle seconds holding no partition of %s: the group %s gave them to other "
                    "members, or had not yet taken them from a member that stopped (its session times out in "
                    "about 10 s); run again to read what they hold", self.idle_seconds, self.topic, self.group_id)

    def _read_up_to(self, data: dict[TopicPartition, list[Any]]) -> set[TopicPartition]:
        """Note where each partition of a fetch is read up to; return those it went back in (a Kafka
        broker answered out of range, and aiokafka went back to the partition's start)."""
        went_back = set()
        for tp, messages in data.items():
            if messages and self._went_back(tp, messages[0].offset):
                went_back.add(tp)
                if self.listener is not None:
                    self.listener.read_from(tp, messages[0].offset)
            if messages:
                self._passed_over(tp, messages[0].offset)
            if self.listener is not None and messages:
                self.listener.next[tp] = messages[-1].offset + 1
        return went_back

    def _passed_over(self, tp: TopicPartition, offset: int) -> None:
        """Say, once, what a fetch that began above where `tp` is read passed over: retention
        deleted those records before this consumer read them (Kafka answered its fetch out of
        range, and aiokafka went on from the partition's start, silently). The audit topic is
        neither compacted nor written in transactions, whose markers leave gaps too."""
        expected = self.listener.next.get(tp) if self.listener is not None else None
        if expected is not None and offset > expected:
            log.warning(retention_gap(_partition_name(tp), expected, offset, "consumer", UNCOUNTED))

    async def _ended_below_reading(self, consumer: AIOKafkaConsumer) -> set[TopicPartition]:
        """The assigned partitions whose log now ends below where this consumer reads (tansu answers
        such a fetch with no records, not out of range): read again from their start."""
        listener = self.listener
        if listener is None:
            return set()
        reading = {tp: listener.next.get(tp, 0) for tp in listener.assigned}
        short = await read_again_where_log_ended_below(consumer, reading, "consumer")
        for tp in short:
            listener.read_from(tp, await consumer.position(tp))
        return set(short)

    def _went_back(self, tp: TopicPartition, offset: int) -> bool:
        """Whether `offset` is below where `tp` is read (a Kafka broker answered out of range, and
        aiokafka went back to the start of the partition): its log began again."""
        expected = self.listener.next.get(tp) if self.listener is not None else None
        if expected is None or offset >= expected:
            return False
        _began_again(tp, f"began again at offset {offset}", expected)
        return True

    def lag(self) -> dict[str, int]:
        """Records not yet consumed, per assigned partition whose end the broker told (each fetch
        answer carries it, records or none): the end less the offset the persisted state covers, as
        serve's lag is its event log's end less its last checkpoint's. Records fetched but not yet
        checkpointed (up to 2 s of them) are not in the figures the queries read: they are lag too.
        Every partition read, not only those that brought a batch since the start; a current figure."""
        consumer, listener = self._consumer, self.listener
        if consumer is None or listener is None:
            return {}
        ends = {tp: consumer.highwater(tp) for tp in listener.assigned}
        return {_partition_name(tp): max(0, end - listener.consumed(tp, end))
                for tp, end in ends.items() if end is not None}

    async def rewind(self, partition: str, offset: int) -> None:
        if self._consumer is None:
            return
        tp = _topic_partition(partition)
        if tp in self._consumer.assignment():
            self._consumer.seek(tp, offset)
            if self.listener is not None:  # to what the state on disk covers, on purpose: not a log that began again
                self.listener.read_from(tp, offset)

    async def commit(self, batch: Batch) -> None:
        if self._consumer is None:
            return
        tp = _topic_partition(batch.partition)
        if self.listener is not None and tp in self.listener.covered:  # the state on disk covers it now
            self.listener.covered[tp] = batch.end
        try:
            await self._consumer.commit({tp: batch.end})
        except (CommitFailedError, IllegalStateError, KafkaError) as error:
            log.info(
                "group commit of %s skipped (%s); the state file holds the offset", batch.partition, error
            )


async def _close(consumer: AIOKafkaConsumer, group_id: str, *, joined: bool) -> None:
    """Stop `consumer`, leaving its group if it joined; for LEAVE_GROUP_SECONDS at most."""
    try:
        await asyncio.wait_for(consumer.stop(), LEAVE_GROUP_SECONDS)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
        # aiokafka's fetcher cancels a fetch still retrying against a broker gone, then re-raises
        # that cancellation from stop() (aio-libs/aiokafka#647, #983) before the client is closed.
        await consumer._client.close()
    except (TimeoutError, KafkaError) as error:
        if joined:
            log.warning("stopped without leaving consumer group %s (%s): its other members take over "
                        "this consumer's partitions after the group's session timeout", group_id,
                        type(error).__name__)


def _began_again(tp: TopicPartition, what: str, reading: int) -> None:
    """Say that `tp`'s log began again (a broker that restarted empty or lost its disk, the topic
    deleted and created anew): what the state counted below `reading` is gone from Kafka, and the
    records there now are new ones (or ones the shipper sent again, which the runner drops by
    eventID), to be counted, not skipped as counted already."""
    log.warning("%s %s, below where this consumer reads (%d): the topic was created anew or its broker lost "
                "the log; reading it from its start, repeats dropped by eventID", _partition_name(tp), what, reading)


def _audit_events(partition: str, messages: list[Any]) -> list[Any]:
    """The messages that are audit events of a schema this build reads. Anything else on the topic
    (a tombstone, another producer's bytes) is skipped with a warning: it would stop the
    partition for good if it failed the batch, and it has nothing to count."""
    events: list[Any] = []
    odd: list[Any] = []
    for message in messages:
        if isinstance(message.value, bytes) and known_writer(message.value[:10]):
            events.append(message)
        else:
            odd.append(message)
    # A newer keytrail's events are said to be that, not another producer's bytes.
    avro = [message for message in odd if message.value is not None]
    newer = say_unknown_writers(partition, [m.value for m in avro], [m.offset for m in avro])
    odd = [message.offset for message in odd if message.offset not in newer]
    if odd:
        log.warning("%s: skipped %d messages that are not keytrail audit events (offsets %s)",
                    partition, len(odd), ", ".join(map(str, odd[:10])) + (" …" if len(odd) > 10 else ""))
    return events
