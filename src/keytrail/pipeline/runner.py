"""The consumer runner: read a batch → drop what was counted → aggregate → checkpoint → commit.

One runner owns offsets; aggregations stay pure. Exactly-once in effect over at-least-once
delivery: records below the partition's checkpointed offset are skipped (redelivery after a
crash between persist and commit) and eventIDs among the partition's recent ones are dropped
(duplicates the shipper re-sent under new offsets).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

import polars as pl

from keytrail.pipeline.clock_steps import ClockStep, in_log_order
from keytrail.pipeline.cost import LIFECYCLE_EVENTS, lifecycle_events
from keytrail.pipeline.dedup import SeenIds, event_hashes, no_hashes
from keytrail.pipeline.frame import empty_frame, frame_from_avro, frame_from_records
from keytrail.pipeline.lastused import last_used
from keytrail.pipeline.state import PartitionState, StaleBatchError, StateUpdate
from keytrail.pipeline.usage import usage_minutes

__all__ = ["UNCOUNTED", "Batch", "RunStats", "Runner", "Source", "aggregate", "drop_seen", "state_file"]

log = logging.getLogger(__name__)
T = TypeVar("T")
UNCOUNTED = "their calls are not counted"  # what a source's records deleted before they were read cost


@dataclass(frozen=True)
class Batch:
    """Records of one source partition with their offsets (ascending).

    Exactly one of `values` (Avro single-object encoded) or `records` (CloudTrail dicts) is set.
    `source_end` is the partition's end offset when known (for consumer lag). `began_again`: the
    partition's log began again before this batch (a broker that lost it, a topic created anew), so
    the offsets the state covers name other records: none of the batch is skipped as counted.
    `causal`: the offsets whose records the log holds in the order they happened, key by key (a
    node's own calls in its event log; not CloudTrail files, sorted by name, nor the history
    `keytrail audit import` added, nor a Kafka partition, which several nodes' shippers fill each
    at its pace): their lifecycle events are billed in log order (clock_steps.py).
    """

    partition: str
    offsets: Sequence[int]
    values: Sequence[bytes] = ()
    records: Sequence[Mapping[str, Any]] = ()
    source_end: int | None = None
    began_again: bool = False
    causal: Sequence[range] = ()

    @property
    def end(self) -> int:
        return self.offsets[-1] + 1

    def frame_from(self, index: int) -> pl.DataFrame:
        """The fixed-schema frame of the records from position `index` on (without the values
        that cannot be decoded: the caller counts them as unreadable)."""
        if self.values:
            from keytrail.pipeline.decode import readable_avro  # needs the audit layer's schema files

            avro, offsets = readable_avro(self.values[index:], self.offsets[index:], self.partition)
            return frame_from_avro(avro, offsets) if offsets else empty_frame()
        return frame_from_records(self.records[index:], self.offsets[index:])


class Source(Protocol):
    """Where batches come from: the embedded log, a Kafka consumer group, CloudTrail files. A live
    source may also tell its lag (`lag() -> {partition: records not yet consumed}`, see `Runner.lag`)."""

    def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        """Yield batches; `start_at(partition)` is the offset to begin a partition from."""
        ...

    async def commit(self, batch: Batch) -> None:
        """Acknowledge `batch` (and all before it in its partition) once its state is persisted."""
        ...

    async def rewind(self, partition: str, offset: int) -> None:
        """Deliver `partition` again from `offset` (after another owner moved it on)."""
        ...


@dataclass
class RunStats:
    """Counters of one run."""

    batches: int = 0
    records: int = 0
    counted: int = 0
    redelivered: int = 0
    duplicates: int = 0
    unreadable: int = 0  # CloudTrail records without a readable eventTime or eventName
    network: int = 0  # CloudTrail network activity events: no requests of their own
    lag: dict[str, int] = field(default_factory=dict)


def state_file(state_dir: Path, partition: str) -> Path:
    """The state file of `partition` among a runner's state files."""
    return state_dir / f"{partition}.sqlite"


def drop_seen(frame: pl.DataFrame, seen: SeenIds) -> tuple[pl.DataFrame, pl.Series]:
    """The first occurrence of each event not in `seen`, and the hashes of those kept. An event is
    known by its sharedEventID where it has one (both accounts' copies of a cross-account call are
    one call), else by its eventID."""
    hashes = event_hashes(frame.select(pl.coalesce("sharedEventID", "eventID")).to_series())
    keep = _one_copy(frame, hashes) & ~seen.remembered(hashes)
    if keep.all():
        return frame, hashes
    return frame.filter(keep), hashes.filter(keep)


def _one_copy(frame: pl.DataFrame, hashes: pl.Series) -> pl.Series:
    """Which rows are the copy of their call a batch counts: its first, but of a call logged in two
    accounts, the first naming the caller by ARN: the key owner's copy names it by account alone
    (frame.OTHER_ACCOUNT), and counted in the other's stead it lost the caller's principal."""
    first = hashes.is_first_distinct()
    if first.all():  # most batches: no call twice
        return first
    rows = pl.DataFrame({"hash": hashes, "named": frame.get_column("principalArn").str.starts_with("arn:")})
    index = pl.col("index")
    chosen = pl.coalesce(index.filter(pl.col("named")).first(), index.first()).over("hash")
    return rows.with_row_index().select(index == chosen).to_series()


#: CloudTrail network activity events (a VPC endpoint owner's log of the calls through it) repeat a
#: call that has its own record, or record one the endpoint policy refused before it reached KMS:
#: neither is a request to count, bill or take as use (nor, as it may carry the call's
#: sharedEventID, an event that makes the call's own record a duplicate).
_NETWORK_ACTIVITY = pl.col("eventType").eq("AwsVpceEvent").fill_null(False)


def aggregate(frame: pl.DataFrame, seen: pl.Series | None = None, uses_before: datetime | None = None) -> StateUpdate:
    """Everything one batch of new events adds to the state (pure); `seen`: their eventID hashes;
    `uses_before`: last used takes only the uses dated before it."""
    outcomes = frame.group_by("eventName", pl.col("errorCode").fill_null("")).agg(
        count=pl.len().cast(pl.Int64)
    )
    times = frame.get_column("eventTime")
    return StateUpdate(
        usage=usage_minutes(frame),
        last_used=last_used(frame, uses_before),
        lifecycle=lifecycle_events(frame),
        outcomes=outcomes,
        seen=no_hashes() if seen is None else seen,
        earliest=cast("datetime | None", times.min()),
        latest=cast("datetime | None", times.max()),
    )


class Runner:
    """Drives one Source into per-partition state files under `state_dir`.

    Batches are staged and checkpointed together every `checkpoint_records` records or
    `checkpoint_seconds` seconds (and at the end): persist state with offsets, then commit.
    `uses_before`: last used keeps only the uses dated before it (a report as of that time: the
    state keeps one use per key x principal, so a later one would hide the last before it).
    `on_clock_step`: told of the first clock step of each key this run meets (clock_steps.py).
    """

    def __init__(
        self,
        state_dir: Path,
        source: Source,
        *,
        dedup_capacity: int = 1_000_000,
        checkpoint_records: int = 100_000,
        checkpoint_seconds: float = 2.0,
        after_checkpoint: Callable[[], None] | None = None,
        uses_before: datetime | None = None,
        on_clock_step: Callable[[ClockStep], None] | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.source = source
        self.dedup_capacity = dedup_capacity
        self.checkpoint_records = checkpoint_records
        self.checkpoint_seconds = checkpoint_seconds
        self.after_checkpoint = after_checkpoint
        self.uses_before = uses_before
        self.on_clock_step = on_clock_step
        self._stepped: set[str] = set()  # keys whose clock step was told
        self.stats = RunStats()
        self.dirty_days: set[date] = set()  # UTC days whose usage changed (for the Parquet export)
        self._states: dict[str, PartitionState] = {}
        self._uncommitted: dict[str, Batch] = {}
        self._staged = 0
        self._rewound: dict[str, int] = {}
        self._worker: ThreadPoolExecutor | None = None

    def state(self, partition: str) -> PartitionState:
        """The (cached) state of `partition`."""
        if partition not in self._states:
            path = state_file(self.state_dir, partition)
            state = PartitionState(path, dedup_capacity=self.dedup_capacity, owner=True)
            state.usage_files.remove_orphans()  # only an owner may: readers never delete
            self._states[partition] = state
        return self._states[partition]

    async def counted(self, partition: str, value: bytes) -> bool:
        """Whether the state of `partition` counted the record `value` (Avro), by its eventID among
        the recent ones: a source checks the record below its start offset with it, to tell a log
        restored or replaced since the state was written from the one counted. A record that was no
        request (unreadable, network activity) cannot tell, and is taken as counted."""
        return await self._in_worker(self._counted, partition, value)

    def _counted(self, partition: str, value: bytes) -> bool:
        seen = self.state(partition).seen
        frame = Batch(partition, (0,), values=(value,)).frame_from(0).filter(~_NETWORK_ACTIVITY)
        if not frame.height or not len(seen):
            return True
        hashes = event_hashes(frame.select(pl.coalesce("sharedEventID", "eventID")).to_series())
        return bool(seen.remembered(hashes).all())

    async def run(self) -> RunStats:
        """Consume until the source ends (or the task is cancelled); checkpoint on the way out."""
        queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)  # read one batch ahead
        reader = asyncio.create_task(self._read(queue))
        next_batch: asyncio.Future[Batch | None] | None = None
        clock = asyncio.get_running_loop().time
        due = clock() + self.checkpoint_seconds
        try:
            while True:
                # A pending get is kept across timeouts, never cancelled: no batch can be lost.
                next_batch = next_batch or asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({next_batch}, timeout=max(0.0, due - clock()))
                if done:
                    batch, next_batch = next_batch.result(), None
                    if batch is None:
                        break
                    await self._in_worker(self.process, batch)
                # Every `checkpoint_seconds` even under steady traffic, not only after an idle spell.
                if not done or self._staged >= self.checkpoint_records or clock() >= due:
                    await self.checkpoint()
                    due = clock() + self.checkpoint_seconds
            await self.checkpoint()
            await reader
        finally:
            for task in (reader, next_batch):
                if task is not None:
                    task.cancel()
            self.close()
        return self.stats

    async def _read(self, queue: asyncio.Queue[Batch | None]) -> None:
        try:
            async for batch in self.source.batches(lambda p: self.state(p).next_offset):
                await queue.put(batch)
        except asyncio.CancelledError:  # `run` is gone: the end put in a full queue would wait for ever
            raise
        except BaseException:  # the source failed: `run` takes the end, then the error from the task
            await queue.put(None)
            raise
        await queue.put(None)

    def process(self, batch: Batch) -> int:
        """Stage what `batch` adds; return how many events it counted."""
        state = self.state(batch.partition)
        if not self._accepts(batch):
            return 0
        covered = batch.offsets[0] if batch.began_again else state.next_offset
        skip = sum(1 for offset in batch.offsets if offset < covered)
        counted = unreadable = network = 0
        if skip < len(batch.offsets):
            readable = batch.frame_from(skip)
            unreadable = len(batch.offsets) - skip - readable.height
            requests = readable.filter(~_NETWORK_ACTIVITY)
            network = readable.height - requests.height
            frame, hashes = drop_seen(requests, state.seen)
            update = aggregate(frame, hashes, self.uses_before) if frame.height else _empty_update()
            if batch.causal and update.lifecycle.get_column("eventName").is_in(LIFECYCLE_EVENTS).any():
                update = self._in_log_order(update, frame, batch.causal, state)
            state.stage(update, batch.end)
            self.dirty_days.update(update.usage.get_column("minute").dt.date().unique().to_list())
            counted = frame.height
        # Committing needs the partition and offsets only: the records need not wait for it.
        self._uncommitted[batch.partition] = replace(batch, values=(), records=())
        self._staged += len(batch.offsets)
        self._record(batch, skip, counted, unreadable, network)
        return counted

    def _in_log_order(self, update: StateUpdate, frame: pl.DataFrame, causal: Sequence[range],
                      state: PartitionState) -> StateUpdate:
        """`update` with its lifecycle events in log order (clock_steps.py); a step's key is told once."""
        lifecycle = pl.col("eventName").is_in(LIFECYCLE_EVENTS) & pl.col("errorCode").is_null()
        in_order = pl.any_horizontal(pl.col("logOffset").is_between(span.start, span.stop, closed="left")
                                     for span in causal)
        ids = set(frame.filter(lifecycle & in_order).get_column("eventID").to_list())
        # An event counted before and read again (a log restored, read from its start beyond the
        # eventIDs remembered) is no step: it is in the lifecycle already, at its own place.
        ids -= state.stored_lifecycle(ids)
        moved, steps = in_log_order(update.lifecycle, ids, state.latest_lifecycle)
        if not steps:
            return update
        for step in steps:
            if self.on_clock_step is not None and step.key_arn not in self._stepped:
                self.on_clock_step(step)
            self._stepped.add(step.key_arn)
        # The storage of the days from the time a step takes on changes: export them again.
        self.dirty_days.update(step.after_time.date() for step in steps)
        return replace(update, lifecycle=moved, clock_steps=tuple(steps))

    def _accepts(self, batch: Batch) -> bool:
        # After a rewind, batches read ahead from beyond the rewind point are dropped: the
        # source delivers them again from the rewound offset.
        target = self._rewound.get(batch.partition)
        if target is None:
            return True
        if batch.offsets[0] > target:
            return False
        del self._rewound[batch.partition]
        return True

    async def checkpoint(self) -> None:
        """Persist every staged partition with its offsets, then commit to the source."""
        for partition, state in list(self._states.items()):
            try:
                await self._in_worker(state.flush)
            except StaleBatchError as error:  # another owner moved the partition on: read again
                log.info("%s", error)
                self._uncommitted.pop(partition, None)
                self._rewound[partition] = state.next_offset
                await self.source.rewind(partition, state.next_offset)
        for batch in self._uncommitted.values():
            await self.source.commit(batch)
        self._uncommitted.clear()
        self._staged = 0
        if self.after_checkpoint is not None:
            await self._in_worker(self.after_checkpoint)

    def _record(self, batch: Batch, skipped: int, counted: int, unreadable: int, network: int) -> None:
        stats = self.stats
        stats.batches += 1
        stats.records += len(batch.offsets)
        stats.redelivered += skipped
        stats.counted += counted
        stats.unreadable += unreadable
        stats.network += network
        stats.duplicates += len(batch.offsets) - skipped - counted - unreadable - network
        if batch.source_end is not None:
            stats.lag[batch.partition] = max(0, batch.source_end - batch.end)

    def lag(self) -> dict[str, int]:
        """Records not yet consumed per partition: the source's own figure where it tells one (every
        partition it reads, as of now, counted to what the state on disk covers), else the last
        batch's. From batches alone, a partition with nothing new since the start had no figure, and
        one no longer read kept its last: a partition revoked in a rebalance is another consumer's
        to tell, so it drops out rather than show what it lagged as of the last fetch here."""
        source_lag = getattr(self.source, "lag", None)
        return dict(self.stats.lag) if source_lag is None else source_lag()

    async def _in_worker(self, func: Callable[..., T], *args: Any) -> T:
        # All polars and SQLite work runs on one thread: each thread that allocates gets its own
        # allocator arena holding on to freed pages, so batches spread over a thread pool
        # multiplied the resident memory.
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="keytrail-aggregate")
        return await asyncio.get_running_loop().run_in_executor(self._worker, func, *args)

    def close(self) -> None:
        if self._worker is not None:
            # A run cancelled mid-batch (Ctrl-C) left the worker processing or flushing a state:
            # closed under it, SQLite crashed the process (SIGSEGV), so the state waits for it.
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        for state in self._states.values():
            state.close()
        self._states.clear()


def _empty_update() -> StateUpdate:
    return aggregate(empty_frame())
