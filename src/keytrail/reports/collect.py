"""Report data: run the pipeline's own consumer over the input into a scratch state, then query it.

The numbers are the pipeline's (`keytrail.pipeline.query.MetricsStore`), so a report agrees with
`keytrail usage | cost | last-used --format json` over the same events. Denied calls are counted
from the same decoded batches on the way through (each batch is decoded once).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from keytrail.clock import data_dir_now, utc_now
from keytrail.pipeline.cost import COST_SCHEMA, LIFECYCLE_SCHEMA
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, OpenEnd, state_dir
from keytrail.pipeline.runner import Batch, Runner, Source
from keytrail.reports.alarms import KeysAtStart, alarms_frame, read_alarm_lines
from keytrail.reports.alias_evidence import decode
from keytrail.reports.aliases import AliasTally, Holding, aws_managed, holdings, key_aliases, with_aliases
from keytrail.reports.denied import DeniedTally
from keytrail.reports.figures import (
    USAGE_FIELDS,
    choose_window,
    cost_projection,
    keys_going,
    mark_unused,
)
from keytrail.reports.progress import Progress

__all__ = ["ReportData", "ReportOptions", "collect", "collect_event_log", "collect_sync"]

# The scratch state is thrown away, so its checkpoints only bound what the consumer stages between
# them (each staged batch's aggregates keep its decoded strings alive): every 20k records rather
# than the consumer's 100k lowers the consumer phase's peak by ≈ 60 MB (300k events), in as long.
_CHECKPOINT_RECORDS = 20_000


@dataclass(frozen=True)
class ReportOptions:
    """What the report covers and how it prices and judges keys."""

    since: datetime | None = None
    until: datetime | None = None
    prices: PriceTable = field(default_factory=PriceTable)
    unused_days: int = 30  # a key not used for this long (or never) is highlighted
    alarms: Path | None = None  # alarms.jsonl to include, when it exists
    source_name: str = ""  # what the report was made from, for its header
    # The node's data dir the events come from: its now (its dev clock's, where one went ahead)
    # is the report's; None (CloudTrail files): the wall clock. Events dated after it do not move
    # the as-of time (see `_tables`).
    data_dir: Path | None = None


@dataclass(frozen=True)
class ReportData:
    """Every table of a report; usage, cost and last-used columns follow CONTRACTS.md §4 (those of
    usage and usage_over_time that name a key, principal, account or operation as `pl.Categorical`)."""

    options: ReportOptions
    first_event: datetime | None
    last_event: datetime | None
    as_of: datetime | None
    window: str
    events: int
    usage: pl.DataFrame
    usage_over_time: pl.DataFrame
    cost: pl.DataFrame
    projection: pl.DataFrame
    last_used: pl.DataFrame
    denied: pl.DataFrame
    alarms: pl.DataFrame
    alarms_note: str | None = None  # why `alarms` may lack some (its file unreadable in part)
    # key ARN -> the aliases that named it in the period (space-separated), as each table's `aliases` holds them
    aliases: dict[str, str] = field(default_factory=dict)
    keys_not_created: int = 0  # keys in the cost table that no CreateKey/ReplicateKey of the input made
    clock_steps: tuple[str, ...] = ()  # per key of the cost table billed in log order, why (clock_steps.py)
    open_end: OpenEnd | None = None  # where the period ends without --until; its `late`: events dated after now
    # The keys' lifecycle events (pipeline.cost's LIFECYCLE_SCHEMA), which tell the usage rows that
    # are requests (`billable_rows`): the CreateKey of a key AWS made is none.
    lifecycle: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LIFECYCLE_SCHEMA))

    def period_events(self) -> int:
        """The events of the period, as the usage table counts them: `events` is every one read,
        those before --since and after --until too."""
        return int(self.usage.get_column("count").sum() or 0) if self.usage.height else 0

    def tables(self) -> dict[str, pl.DataFrame]:
        """The report's tables by name, in the order the report shows them."""
        return {"usage": self.usage, "usage_over_time": self.usage_over_time, "cost": self.cost,
                "cost_projection": self.projection, "last_used": self.last_used, "denied": self.denied,
                "alarms": self.alarms}


@dataclass(frozen=True)
class _FramedBatch(Batch):
    """A batch whose frame is already decoded, so the runner does not decode it again."""

    frame: pl.DataFrame | None = None

    def frame_from(self, index: int) -> pl.DataFrame:
        return self.frame.slice(index) if self.frame is not None else super().frame_from(index)


class _TeeSource:
    """Passes a source's batches on, decoded once, after counting their denied calls and keeping
    what they say of aliases."""

    def __init__(self, source: Source, denied: DeniedTally, on_batch: Callable[[Batch], None] | None) -> None:
        self.source = source
        self.denied = denied
        self.aliases = AliasTally()
        self.on_batch = on_batch

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        async for batch in self.source.batches(start_at):
            frame, aliases = await asyncio.to_thread(decode, batch)
            self.denied.add(frame)
            self.aliases.add(aliases)
            if self.on_batch is not None:
                self.on_batch(batch)
            yield _FramedBatch(**{f.name: getattr(batch, f.name) for f in fields(batch)}, frame=frame)

    async def commit(self, batch: Batch) -> None:
        await self.source.commit(batch)

    async def rewind(self, partition: str, offset: int) -> None:
        await self.source.rewind(partition, offset)


async def collect(source: Source, options: ReportOptions,
                  on_batch: Callable[[Batch], None] | None = None) -> ReportData:
    """Consume `source` to its end into a scratch state and build the report's tables."""
    with tempfile.TemporaryDirectory(prefix="keytrail-report-") as scratch:
        consumed = await _consume(source, Path(scratch), options, on_batch)
        return await asyncio.to_thread(_tables, MetricsStore(Path(scratch)), consumed, options)


def collect_sync(source: Source, options: ReportOptions,
                 on_batch: Callable[[Batch], None] | None = None) -> ReportData:
    """`collect` for callers without an event loop."""
    return asyncio.run(collect(source, options, on_batch))


def collect_event_log(log: Path, options: ReportOptions, progress: bool | None = None) -> ReportData:
    """`collect_sync` over an embedded event log, consumed in a child process: what the consumer
    held (decoded batches, checkpoints, and the freed pages polars' allocator keeps for about
    10 s) goes back to the system before the tables are built, so the report's peak is the larger
    of the two phases, not their sum. `progress`: a bar on stderr (None: when it is a terminal)."""
    spawn = multiprocessing.get_context("spawn")  # a fork of a process that ran polars may deadlock
    with tempfile.TemporaryDirectory(prefix="keytrail-report-") as scratch:
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_die_with,
                                 initargs=(os.getpid(),)) as child:
            try:
                consumed = child.submit(_consume_event_log, log, Path(scratch), options, progress).result()
            except BaseException:
                _kill(child)
                raise
        return _tables(MetricsStore(Path(scratch)), consumed, options)


def _kill(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's child of a report stopped meanwhile: a SIGTERM, which reaches the report
    alone, left it waiting in the pool's shutdown until the child had read the whole event log
    (minutes over a year of events) before it exited 143."""
    for process in list(pool._processes.values()):  # no public way before Python 3.14's terminate_workers()
        process.kill()


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with(parent: int) -> None:
    """In the child, first: killed when the report is (kill -9 too), not left running, and then
    blocked for ever sending a result nobody reads, its scratch state held."""
    if sys.platform == "linux":
        with contextlib.suppress(AttributeError, OSError):
            ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the report died before the line above
        os._exit(1)


def _consume_event_log(log: Path, scratch: Path, options: ReportOptions,
                       progress: bool | None) -> _Consumed:
    """In the child: `_consume` the event log, with its progress bar."""
    from keytrail.pipeline.segment_source import SegmentLogSource

    bar = Progress("events", enabled=progress)
    try:
        source = SegmentLogSource(log, follow=False)
        return asyncio.run(_consume(source, scratch, options, lambda batch: bar.update(batch.end, batch.source_end)))
    finally:
        bar.close()


@dataclass(frozen=True)
class _Consumed:
    """What consuming the input gave beside the scratch state: the events counted, the denied
    calls in the report's period, and the alias evidence (`alias_evidence`)."""

    events: int
    denied: pl.DataFrame
    aliases: pl.DataFrame


async def _consume(source: Source, scratch: Path, options: ReportOptions,
                   on_batch: Callable[[Batch], None] | None) -> _Consumed:
    """Run the pipeline's consumer over `source` into the scratch state `scratch`."""
    tee = _TeeSource(source, DeniedTally(options.since, options.until), on_batch)
    # Last used as of --until from the events themselves: a state that kept each key x principal's
    # latest use, one after --until, could only find the last before it in minute-level usage.
    runner = Runner(state_dir(scratch), tee, checkpoint_records=_CHECKPOINT_RECORDS, uses_before=options.until)
    stats = await runner.run()
    return _Consumed(stats.counted, tee.denied.frame(), tee.aliases.evidence())


def _tables(store: MetricsStore, consumed: _Consumed, options: ReportOptions) -> ReportData:
    first, last = store.time_bounds()
    since, until = options.since, options.until
    # Without --until, the as-of time is where `keytrail cost` ends key storage: after the last
    # event, or after the last one not dated after now where some are (a skewed clock, a bad
    # record): one event of 2099 would otherwise bill every key, project the month and judge the
    # keys unused as of 2099. Those events are still counted as usage and requests.
    end = store.open_end(_now(options)) if until is None and last is not None else None
    as_of = until or (end.storage if end else None)
    window = choose_window(since or first, as_of)
    # The two tables with a row per key x principal (x operation, x window) hold their ARNs as
    # categories (a large account's month: a row per call); the writers turn them into strings.
    usage = store.usage(["keyArn", "principalArn", "accountId", "eventName"], None, since, until, categories=True)
    over_time = store.usage(["keyArn", "principalArn"], window, since, until,  # type: ignore[arg-type]
                            categories=True)
    cost = store.cost(options.prices, since, until, end) if as_of else _empty_cost()
    alarms, alarms_note = _alarms(options, as_of, _keys_at(store, since))
    # The as-of time bounds the last uses as --until does: without it, a use dated after now (the
    # events `end` counts as late) showed as a key's last use, later than the report's as-of time.
    used_until = until or (as_of if end is not None and end.late else None)
    lifecycle = store.lifecycle()
    found = holdings(consumed.aliases)
    return _named(ReportData(
        options=options, first_event=first, last_event=last, as_of=as_of, window=window, events=consumed.events,
        usage=usage.select(USAGE_FIELDS), usage_over_time=over_time, cost=cost,
        projection=cost_projection(store, options.prices, as_of, end),
        last_used=mark_unused(store.last_used_by_key(used_until), as_of, options.unused_days, lifecycle, first,
                              never=[*aws_managed(found), *_named_by_failures_only(store, as_of, lifecycle)]),
        denied=consumed.denied, alarms=alarms, alarms_note=alarms_note,
        keys_not_created=len(store.keys_never_created(cost)), open_end=end,
        clock_steps=tuple(step.line() for step in store.clock_steps(cost)), lifecycle=lifecycle,
    ), found)


def _named_by_failures_only(store: MetricsStore, as_of: datetime | None, lifecycle: pl.DataFrame) -> list[str]:
    """Keys that no successful call or lifecycle event names by `as_of`, only failed calls: such an
    ARN may name no key at all, or another account's (a denied cross-account attempt is logged in
    the caller's account alone), so none is a key to delete, as the unused-key rule leaves them out."""
    calls = store.usage(["keyArn"], None, None, as_of).drop_nulls("keyArn")
    failed = calls.filter(pl.col("count") == pl.col("errorCount")).select("keyArn")
    return failed.join(lifecycle.select("keyArn"), on="keyArn", how="anti").get_column("keyArn").to_list()


def _named(data: ReportData, found: list[Holding]) -> ReportData:
    """`data` with its keys' aliases in the period (from `since`, or the records' start, to the
    as-of time) in an `aliases` column after each table's own, in every table that names keys."""
    names = key_aliases(found, data.options.since, data.as_of)
    return replace(data, aliases=names, usage=with_aliases(data.usage, names),
                   usage_over_time=with_aliases(data.usage_over_time, names), cost=with_aliases(data.cost, names),
                   last_used=with_aliases(data.last_used, names), denied=with_aliases(data.denied, names),
                   alarms=with_aliases(data.alarms, names))


def _now(options: ReportOptions) -> datetime:
    """Now for the report's events, read once they are consumed (a live node's newest events
    are not dated after a now taken before them)."""
    return data_dir_now(options.data_dir) if options.data_dir is not None else utc_now()


def _empty_cost() -> pl.DataFrame:
    return pl.DataFrame(schema=COST_SCHEMA)



def _keys_at(store: MetricsStore, since: datetime | None) -> KeysAtStart | None:
    """The keys as the period starts, which tell the unused-key alarms raised before it that still
    held then (their keys show as unused in the last_used table too)."""
    if since is None:
        return None
    used = store.last_used_by_key(since).drop_nulls("lastUsedTime").select("keyArn", "lastUsedTime")
    return KeysAtStart(dict(used.iter_rows()), frozenset(keys_going(store.lifecycle(), since)))


def _alarms(options: ReportOptions, as_of: datetime | None,
            keys: KeysAtStart | None = None) -> tuple[pl.DataFrame, str | None]:
    """The alarms of the period, up to the as-of time (--until, or where the report ends without
    it: an alarm a detector raised after the last event, an unused-key alarm of a later tick, was
    listed only without --until), and a note when what should hold them could not be read whole:
    "no alarms" would read as a quiet period."""
    path = options.alarms
    found: list[dict[str, Any]] = []
    note = None
    if path is not None and path.exists() and not path.is_file():
        note = f"{path} is not a file: the report shows no alarm"
    elif path is not None and path.is_file():
        found, unreadable = read_alarm_lines(path)
        if unreadable:
            lines = f"{unreadable:,} line{'' if unreadable == 1 else 's'}"
            note = f"{lines} of {path} {'is' if unreadable == 1 else 'are'} no alarm (damaged, or not keytrail's): " \
                   "left out of the report"
    return alarms_frame(found, options.since, as_of, keys), note
