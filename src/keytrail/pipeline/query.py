"""Queries over every partition's state in a data directory: usage, cost, last used.

Each partition's state is exact for its events and partitions never share an event (Kafka
keys by key ARN; the embedded log is one partition), so merged results equal a single
consumer's.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import polars.selectors as cs

from keytrail.clock import data_dir_now, shifted
from keytrail.pipeline.clock_steps import ClockStep
from keytrail.pipeline.cost import BILLABLE, LIFECYCLE_SCHEMA, KeyLifecycles, cost_report, part_request_counts, priced
from keytrail.pipeline.lastused import (
    CRYPTO_OPERATIONS,
    LAST_USED_SCHEMA,
    last_used_per_key,
    latest_per_key,
    merge_last_used,
)
from keytrail.pipeline.layout import consumer_lock, counted_partitions, state_dir
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.state import PartitionState
from keytrail.pipeline.usage import (
    USAGE_SCHEMA,
    Window,
    categorical,
    merge_usage,
    roll_up,
    roll_up_keys,
    rolled_up,
    sorted_by,
)

__all__ = ["MetricsStore", "OpenEnd", "consumer_lock", "state_dir"]


_DAY = timedelta(days=1)
SPAN_ROWS = 25_000  # stored minute rows the free tier's cost reads at a time (whole UTC days)


@dataclass(frozen=True)
class OpenEnd:
    """Where a cost without `until` ends. Requests: after the latest event, every one counted.
    Key storage: after the latest event not dated after `now` (an event dated ahead, from a skewed
    clock or a bad record, would otherwise bill every key until its date); `late` such events."""

    requests: datetime
    storage: datetime
    now: datetime
    late: int = 0
    latest: datetime | None = None  # the latest eventTime counted


class MetricsStore:
    """Read-only view of all partition states under `<data-dir>/metrics/state/`."""

    def __init__(self, data_dir: Path, *, read_only: bool = False) -> None:
        """`read_only`: for the query commands, which must read a data dir they cannot write (a
        read-only copy) and write none: the state files are opened read-only. The node's own
        queries open them as its consumer does: a read-only connection would leave SQLite's -wal and
        -shm files behind where it closes last, at a clean stop too."""
        self.data_dir = data_dir
        self.directory = state_dir(data_dir)
        self.read_only = read_only

    def now(self) -> datetime:
        """Now for these events: the wall clock, or the data dir's dev clock where it went ahead."""
        return data_dir_now(self.data_dir)

    @contextmanager
    def _states(self) -> Iterator[list[PartitionState]]:
        states = [PartitionState(p, read_only=self.read_only) for p in counted_partitions(self.data_dir)]
        try:
            yield states
        finally:
            for state in states:
                state.close()

    def partitions(self) -> list[str]:
        return [p.stem for p in counted_partitions(self.data_dir)]

    def offsets(self) -> dict[str, int]:
        """Per partition, the first source offset its persisted state does not cover yet."""
        with self._states() as states:
            return {s.path.stem: s.persisted_offset for s in states}

    def usage_minutes(self, since: datetime | None = None, until: datetime | None = None) -> pl.DataFrame:
        with self._states() as states:
            return merge_usage([s.usage(since, until) for s in states])

    def usage(
        self,
        by: list[str],
        window: Window | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        *,
        categories: bool = False,
    ) -> pl.DataFrame:
        """Request and error counts grouped by `by` (and a window when given), each partition's
        rolled up as its files stream by, then summed. `categories`: the `by` columns as
        `pl.Categorical` (each distinct ARN held once instead of once per row, for a table of
        every key x principal x operation of a large account), in the same order as strings."""
        keys = roll_up_keys(by, window)
        labels = categorical(by) if categories else _as_stored
        with self._states() as states:
            frames = [s.usage(since, until, lambda rows: rolled_up(labels(rows), by, window)) for s in states]
        if not frames:
            return roll_up(labels(pl.LazyFrame(schema=USAGE_SCHEMA)).collect(), by, window)
        if len(frames) == 1:  # one partition (the embedded log): already summed, no copy to sum again
            return sorted_by(frames[0], keys)
        summed = pl.concat(frames).group_by(keys).agg(pl.col("count").sum(), pl.col("errorCount").sum())
        return sorted_by(summed, keys)

    def lifecycle(self) -> pl.DataFrame:
        with self._states() as states:
            frames = [s.lifecycle() for s in states]
        return pl.concat(frames) if frames else pl.DataFrame(schema=LIFECYCLE_SCHEMA)

    def last_used(self, until: datetime | None = None) -> pl.DataFrame:
        """Last use per key x principal (before `until` when given).

        The state keeps only each pair's latest use: a pair used again at or after `until` takes
        its last use before it from the minute-level usage, so its time is that minute's start
        and it has no eventId.
        """
        with self._states() as states:
            merged = merge_last_used([s.last_used() for s in states])
        if until is None:
            return merged
        later = merged.filter(pl.col("lastUsedTime") >= until).select("keyArn", "principalArn", "lastUsedTime")
        earlier = pl.concat([pl.DataFrame(schema=LAST_USED_SCHEMA), *self._minutes_before(until, later)])
        earlier = earlier.sort("lastUsedTime", "lastUsedOperation").group_by("keyArn", "principalArn").last()
        earlier = earlier.select(list(LAST_USED_SCHEMA)).join(later, on=["keyArn", "principalArn"], how="semi")
        return pl.concat([merged.filter(pl.col("lastUsedTime") < until), earlier]).sort("keyArn", "principalArn")

    def _minutes_before(self, until: datetime, later: pl.DataFrame) -> list[pl.DataFrame]:
        """Each partition's latest minute with a use per key x principal before `until`, as last-used
        rows. The minute `until` falls inside holds uses on both sides of it: it counts for a pair
        only where the pair has more uses in it than the latest one (`later`), known to be after
        `until`, whose minute it is: a key used once, just after `until`, was not used before it."""
        start = until.replace(second=0, microsecond=0)
        with self._states() as states:
            whole = [s.usage(None, start, _minute_uses) for s in states]
            split = [s.usage(start, until, _uses_of_minute) for s in states] if start < until else []
        after = later.filter(pl.col("lastUsedTime").dt.truncate("1m") == start).select("keyArn", "principalArn")
        after = after.with_columns(known=pl.lit(1, pl.Int64))
        return whole + [_fewer(part, after) for part in split]

    def last_used_by_key(self, until: datetime | None = None) -> pl.DataFrame:
        """Last use per key (before `until` when given), every key seen by then included (null
        times for never used)."""
        lifecycle = self.lifecycle()
        lifecycle = lifecycle if until is None else lifecycle.filter(pl.col("eventTime") < until)
        used = self.usage(["keyArn"], None, None, until).select("keyArn").drop_nulls()
        uses = last_used_per_key(self._latest_per_key() if until is None else self.last_used(until))
        # A ReEncrypt's destination key has a use but no usage row (the row names the source key):
        # made before the events start, it is seen in its uses alone.
        keys = pl.concat([used, lifecycle.select("keyArn"), uses.select("keyArn")]).unique()
        return keys.join(uses, on="keyArn", how="left").sort("keyArn")

    def _latest_per_key(self) -> pl.DataFrame:
        """Each key's latest key x principal row, reduced a slice at a time (the pairs of a large
        account are never all in memory)."""
        with self._states() as states:
            parts = [latest_per_key(part) for state in states for part in state.last_used_parts()]
        return pl.concat([pl.DataFrame(schema=LAST_USED_SCHEMA), *parts])

    def time_bounds(self) -> tuple[datetime | None, datetime | None]:
        """Earliest and latest eventTime counted: tracking starts at the earliest."""
        with self._states() as states:
            low = [v for s in states if (v := s.meta("earliest")) is not None]
            high = [v for s in states if (v := s.meta("latest")) is not None]
        return (_time(min(low)) if low else None, _time(max(high)) if high else None)

    def open_end(self, now: datetime | None = None) -> OpenEnd:
        """Where `cost` ends without `until` (see OpenEnd), as of `now` (default: `self.now()`)."""
        now = now or self.now()
        latest = self.time_bounds()[1]
        requests = shifted((latest or now).replace(microsecond=0), timedelta(seconds=1))  # empty: nothing to bill
        if latest is None or latest <= now:
            return OpenEnd(requests, requests, now, 0, latest)
        # Whole minutes, as usage is kept: an event of now's own minute is not counted as ahead; the
        # storage hours billed are the same as to the latest event itself (the hour holding it).
        after = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        before = self._latest_minute(after)
        storage = before + timedelta(minutes=1) if before is not None else now
        return OpenEnd(requests, storage, now, self._events_since(after), latest)

    def _latest_minute(self, until: datetime) -> datetime | None:
        """The latest minute before `until` with any event, read a day at a time from the latest."""
        with self._states() as states:
            days = sorted({day for s in states for day, _ in s.usage_files.day_rows(None, until)}, reverse=True)
            for day in days:
                low = datetime.fromisoformat(day).replace(tzinfo=UTC)
                found = [s.usage(low, until, _latest) for s in states]
                minutes: list[datetime] = [m for f in found for m in f.get_column("minute").drop_nulls()]
                if minutes:
                    return max(minutes)
        return None

    def _events_since(self, since: datetime) -> int:
        with self._states() as states:
            found = [s.usage(since, None, _events) for s in states]
        return sum(int(frame.get_column("count").sum()) for frame in found)

    def cost(
        self, prices: PriceTable, since: datetime | None = None, until: datetime | None = None,
        end: OpenEnd | None = None, lifecycle: pl.DataFrame | None = None,
    ) -> pl.DataFrame:
        """Cost per key x account over [since, until). Without `until`: up to `end` (default
        `open_end()`): every request counted, key storage billed to the latest event not dated
        after now (with `until` too, where `end` is given: the month so far of a report as of that
        end). `lifecycle`: `self.lifecycle()` read already (one export prices many days)."""
        lifecycle = self.lifecycle() if lifecycle is None else lifecycle
        if until is None:
            end = end or self.open_end()
            until = end.requests
        storage_until = end.storage if end else None
        # The free tier counts from the start of since's UTC calendar month (not its offset's month).
        utc_since = since.astimezone(UTC) if since else None
        month_start = utc_since.replace(day=1, hour=0, minute=0, second=0, microsecond=0) if utc_since else None
        if prices.free_tier_requests:  # granted in time order: needs the minutes from the month's start,
            # read a few days at a time (a month's minute rows of a large account take hundreds of MB)
            parts: Iterable[pl.DataFrame] = (self.billable_requests(low, high, by_minute=True)
                                             for low, high in self._day_spans(month_start, until))
            return cost_report(parts, lifecycle, prices, since, until, storage_until)
        return cost_report(self.billable_requests(since, until), lifecycle, prices, since, until, storage_until)

    def daily_costs(self, prices: PriceTable, days: Iterable[date],
                    lifecycle: pl.DataFrame | None = None) -> Iterator[tuple[date, pl.DataFrame]]:
        """(day, `cost` of that UTC day) for each of `days`, in order, reading the usage of a run
        of them at once: a first export after importing years of CloudTrail history prices every
        day since. Read a day at a time (with a free tier, its month so far each time), that took
        ≈ 10 ms a day; priced in runs, a third of that, each day's storage and table included."""
        lifecycle = self.lifecycle() if lifecycle is None else lifecycle
        lifecycles = KeyLifecycles(lifecycle)  # every day's storage is priced from it
        for run in _runs(sorted(set(days)), by_month=prices.free_tier_requests > 0):
            yield from self._run_costs(run, prices, lifecycle, lifecycles)

    def _run_costs(self, run: list[date], prices: PriceTable, lifecycle: pl.DataFrame,
                   lifecycles: KeyLifecycles) -> Iterator[tuple[date, pl.DataFrame]]:
        """`daily_costs` of one run, its days priced as each span of usage that holds them is
        counted: a run's counts (a row per key, account and price class a day: about one per
        request for an account of many keys) were held whole, ≈ 70 MB for 270,000 requests."""
        first = datetime.combine(run[0], time(), UTC)
        until = datetime.combine(run[-1], time(), UTC) + _DAY
        start = first.replace(day=1) if prices.free_tier_requests else first  # the free tier's month
        spans = list(self._day_spans(start, until))  # split at UTC midnights: a day is in one span
        parts = (self.billable_requests(low, high, by_minute=True) for low, high in spans)
        counted = part_request_counts(parts, lifecycle, prices.free_tier_requests, first, by_day=True)
        days = iter(run)
        day: date | None = next(days)
        for (_, high), counts in zip(spans, counted, strict=True):
            by_day = counts.partition_by("day", as_dict=True)
            while day is not None and (since := datetime.combine(day, time(), UTC)) < high:
                yield day, priced(by_day.get((day,), counts.clear()), lifecycles, prices, since, since + _DAY)
                day = next(days, None)

    def _day_spans(self, since: datetime | None, until: datetime) -> Iterator[tuple[datetime | None, datetime]]:
        """[low, high) spans that cover [since, until) in time order, split at UTC midnights so that
        each holds about SPAN_ROWS stored minute rows (one day however many it has)."""
        with self._states() as states:
            rows: dict[str, int] = {}
            for state in states:
                for day, count in state.usage_files.day_rows(since, until):
                    rows[day] = rows.get(day, 0) + count
        low, held = since, 0
        for day in sorted(rows):
            start = datetime.fromisoformat(day).replace(tzinfo=UTC)
            if held and held + rows[day] > SPAN_ROWS and (low is None or start > low):
                yield low, start
                low, held = start, 0
            held += rows[day]
        yield low, until

    def billable_requests(self, since: datetime | None, until: datetime, by_minute: bool = False) -> pl.DataFrame:
        """Requests over [since, until) summed per what prices them (key, caller, operation, key
        pair spec) and per minute, or over the period (stamped with one minute inside it), in the
        minute-usage shape. Callers are not told apart: their requests of one key and account
        price alike, and a minute's free requests of one key go to the same row however split."""
        by = ["minute", "keyArn", "accountId", "eventName", "keyPairSpec"] if by_minute else [
            "keyArn", "accountId", "eventName", "keyPairSpec"]
        stamp = pl.col("minute") if by_minute else pl.lit(since or datetime(1970, 1, 1, tzinfo=UTC))
        with self._states() as states:  # the unbilled callers' rows go before callers are summed away
            frames = [s.usage(since, until, lambda rows: _billable(rows, by)) for s in states]
        summed = pl.concat([roll_up(pl.DataFrame(schema=USAGE_SCHEMA), by), *frames])
        summed = summed.group_by(by).agg(pl.col("count").sum(), pl.col("errorCount").sum())
        return summed.select(
            minute=stamp.cast(pl.Datetime("us", "UTC")), keyArn="keyArn", principalArn=pl.lit(None, pl.String),
            accountId="accountId", eventName="eventName", keyPairSpec="keyPairSpec", count="count",
            errorCount="errorCount",
        ).cast(pl.Schema(USAGE_SCHEMA))

    def clock_steps(self, cost: pl.DataFrame) -> list[ClockStep]:
        """The first lifecycle event of each key of a cost frame that was billed in log order, not
        at its own time (a clock step back, clock_steps.py): its cost may be off by the step."""
        keys = set(cost.get_column("keyArn").drop_nulls().to_list())
        first: dict[str, ClockStep] = {}
        with self._states() as states:
            for step in (step for s in states for step in s.clock_steps()):
                if step.key_arn in keys:
                    first.setdefault(step.key_arn, step)
        return sorted(first.values(), key=lambda step: step.key_arn)

    def keys_never_created(self, cost: pl.DataFrame) -> list[str]:
        """Keys of a cost frame that no CreateKey or ReplicateKey in the events made: created before
        the events start (or AWS managed), their storage is not in the frame."""
        created = self.lifecycle().filter(pl.col("eventName").is_in(["CreateKey", "ReplicateKey"]))
        keys = cost.select("keyArn").drop_nulls().unique().join(created.select("keyArn"), on="keyArn", how="anti")
        return sorted(keys.get_column("keyArn").to_list())

    def last_usage(self, key_arn: str) -> dict[str, Any] | None:
        """GetKeyLastUsage's `KeyLastUsage` for `key_arn`, or None when never used since tracking start."""
        with self._states() as states:
            frames = [s.last_used(key_arn) for s in states]
        rows = last_used_per_key(merge_last_used(frames)).to_dicts()
        if not rows:
            return None
        row = rows[0]
        return {
            "Operation": row["lastUsedOperation"],
            "Timestamp": row["lastUsedTime"],
            "CloudTrailEventId": row["eventId"],
            "KmsRequestId": row["requestId"],
            "PrincipalArn": row["lastUsedPrincipalArn"],
            "TrackingStartDate": self.time_bounds()[0],
        }

    def outcomes(self) -> dict[tuple[str, str], int]:
        totals: dict[tuple[str, str], int] = {}
        with self._states() as states:
            for state in states:
                for name, code, count in state.outcomes():
                    totals[(name, code)] = totals.get((name, code), 0) + count
        return totals


def _runs(days: list[date], *, by_month: bool) -> Iterator[list[date]]:
    """Sorted `days` in runs priced together: each calendar month's (`by_month`: the free tier
    reads its month from the start anyway), else each stretch of consecutive days."""
    run: list[date] = []
    for day in days:
        if run and (day.month != run[-1].month or day.year != run[-1].year
                    or (not by_month and day != run[-1] + _DAY)):
            yield run
            run = []
        run.append(day)
    if run:
        yield run


def _billable(rows: pl.LazyFrame, by: list[str]) -> pl.LazyFrame:
    """The billable rows summed by `by`, grouped on categories (≈ 35 MB less for a moment than on
    every row's strings, 300k events) and handed back as strings."""
    summed = rolled_up(categorical(by)(rows.filter(BILLABLE)), by)
    return summed.with_columns(cs.categorical().cast(pl.String))


def _latest(rows: pl.LazyFrame) -> pl.LazyFrame:
    return rows.select(pl.col("minute").max())


def _events(rows: pl.LazyFrame) -> pl.LazyFrame:
    return rows.select(pl.col("count").sum())


def _as_stored(rows: pl.LazyFrame) -> pl.LazyFrame:
    return rows


def _minute_uses(usage: pl.LazyFrame) -> pl.LazyFrame:
    """The latest minute with a successful cryptographic use per key x principal, as last-used rows."""
    return _as_last_used(_crypto_uses(usage).group_by("keyArn", "principalArn").agg(*_latest_minute()))


def _uses_of_minute(usage: pl.LazyFrame) -> pl.LazyFrame:
    """`_minute_uses` of one minute's rows, with how many uses each pair made in it (`uses`)."""
    summed = _crypto_uses(usage).group_by("keyArn", "principalArn").agg(
        *_latest_minute(), uses=(pl.col("count") - pl.col("errorCount")).sum().cast(pl.Int64))
    return _as_last_used(summed, "uses")


def _crypto_uses(usage: pl.LazyFrame) -> pl.LazyFrame:
    return usage.filter(
        pl.col("eventName").is_in(list(CRYPTO_OPERATIONS)) & (pl.col("count") > pl.col("errorCount"))
        & pl.col("keyArn").is_not_null()
    )


def _latest_minute() -> list[pl.Expr]:
    return [pl.col("minute").max().alias("lastUsedTime"),
            pl.col("eventName").sort_by("minute", "eventName").last().alias("lastUsedOperation")]


def _as_last_used(latest: pl.LazyFrame, *kept: str) -> pl.LazyFrame:
    """Latest minutes per key x principal as last-used rows: no eventId, no position in a log."""
    return latest.select(
        "keyArn", "principalArn", "lastUsedTime", "lastUsedOperation",
        pl.lit(None, pl.String).alias("eventId"), pl.lit(None, pl.String).alias("requestId"),
        pl.lit(-1, pl.Int64).alias("logOffset"), *kept,
    ).cast(pl.Schema({**LAST_USED_SCHEMA, **{name: pl.Int64() for name in kept}}))


def _fewer(minute: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """`_uses_of_minute` rows less the uses `after` knows to be later (`known` per pair):
    a pair whose every use there is one of those had none in it."""
    counted = minute.join(after, on=["keyArn", "principalArn"], how="left")
    return counted.filter(pl.col("uses") > pl.col("known").fill_null(0)).drop("uses", "known")


def _time(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
