"""Parquet tables in `<data-dir>/metrics/`: usage and cost partitioned by day, last used per key.

Written from the merged state of every partition (temp file + rename), so a reader never sees
a half-written table and concurrent consumers converge on the same content. A consumer that
stopped between a checkpoint and the end of its export (kill -9, a crash) left days out of date:
on start, `stale_days` finds them by the state's usage files written after the day's table (the
usage tables are written last for that reason).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from keytrail.clock import shifted
from keytrail.owner_only import STALE_TEMP_SECONDS, make_dirs, remove_stale_temps, reserve_anew
from keytrail.pipeline.cost import MATERIAL_IMPORTED
from keytrail.pipeline.files import write_parquet
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir

__all__ = ["ExportCutShort", "export_tables", "remove_stale_temp_files", "stale_days"]


class ExportCutShort(Exception):
    """An export stopped before its usage tables, as `stopping` asked: they stay older than the
    state, so the next export (the next start's, by `stale_days`) prices their days again and
    writes the cost tables this one did not get to."""


def _never() -> bool:
    return False


def export_tables(data_dir: Path, days: Iterable[date], prices: PriceTable | None = None,
                  stopping: Callable[[], bool] = _never) -> list[Path]:
    """Rewrite the usage tables of `days`, the cost tables whose figures they changed (of those
    they may change, see `_cost_days`), and the last-used table; return the files written.
    ExportCutShort once `stopping()` says so before a cost table: a span of years of quiet days
    (a dev clock moved a century: 36,500 tables) held a stopping consumer for over a minute."""
    store = MetricsStore(data_dir)
    root = data_dir / "metrics"
    changed = set(days)
    written: list[Path] = []
    today = store.now().date()  # the data dir's: its dev clock's where one went ahead
    lifecycle = store.lifecycle()  # every day's storage is priced from it: read once, not once a day
    table = prices or PriceTable()
    # The cost tables before the usage tables: an export cut short (killed, or a stop that would not
    # wait) leaves its changed days' usage tables older than their state, so `stale_days` hands them
    # to the next export, which prices every day they change again. Written first, the usage tables
    # would hide the cost tables left unwritten (a late CreateKey's storage from its day on).
    # So is the last-used table: written after them, one cut short before it was never written again.
    cost_days = _cost_days(root, store, lifecycle, changed, today, table.free_tier_requests > 0)
    for day, cost in store.daily_costs(table, cost_days, lifecycle):
        if stopping():
            raise ExportCutShort(f"{len(written)} of {len(cost_days)} cost tables written")
        if _write_if_changed(cost, path := _table(root, "cost", day)):
            written.append(path)
    written.append(_write(store.last_used_by_key(), root / "last_used" / "last_used.parquet"))
    for day in sorted(changed):
        since = datetime.combine(day, time(), UTC)
        until = shifted(since, timedelta(days=1))  # 9999-12-31 has no next day
        written.append(_write(store.usage_minutes(since, until), _table(root, "usage", day)))
    return written


def _cost_days(
    root: Path, store: MetricsStore, lifecycle: pl.DataFrame, changed: set[date], today: date, free_tier: bool
) -> set[date]:
    """The days whose cost table may no longer say what the state does (or has none yet), no later
    than `today` (a day after it has no cost table until it comes: its storage has not happened).

    A changed day's requests changed, and with a free tier the requests of the rest of its month
    (granted in time order). A key's storage up to an hour depends only on its lifecycle events
    before that hour, so a lifecycle event read late (a CreateKey, a ScheduleKeyDeletion) changes
    the storage of every day from its own on (a multi-Region key's rotation, its family's; an AWS
    managed row, which counts from its own time too) and of no day before. A key spec is the key's
    on every day, though: one read late reprices the key's requests on every day it was called.
    A quiet day of the storage span that has no table yet is written too (without it, summing the
    daily tables left out its storage). The changed days' lifecycle rows are not all new ones: the
    days are a superset, which the byte comparison (`_write_if_changed`) leaves unwritten.
    """
    span = _storage_span(store, lifecycle, today)
    tabled = {date.fromisoformat(p.name.removeprefix("day=")) for p in (root / "cost").glob("day=*")}
    priced = pl.col("eventName") != MATERIAL_IMPORTED  # it prices nothing: no day to price again
    late = lifecycle.filter(pl.col("eventTime").dt.date().is_in(sorted(changed)) & priced)
    storage_from = late["eventTime"].min()
    start = storage_from.astimezone(UTC).date() if isinstance(storage_from, datetime) else date.max
    requests = changed | _days_called(store, late.filter(pl.col("keySpec").is_not_null())["keyArn"].unique())
    if free_tier:
        requests |= {later for day in requests for later in _rest_of_month(day)}
    days = {day for day in requests if day in changed or day in span or day in tabled}
    days |= {day for day in span if day >= start or day not in tabled}
    days |= {day for day in tabled if day >= start}
    return {day for day in days if day <= today}


def _days_called(store: MetricsStore, keys: pl.Series) -> set[date]:
    """The UTC days on which any of `keys` was called (read only when a key spec came late)."""
    if keys.is_empty():
        return set()
    days = store.usage(["keyArn"], "day").filter(pl.col("keyArn").is_in(keys.to_list()))["windowStart"]
    return {moment.astimezone(UTC).date() for moment in days}


def _rest_of_month(day: date) -> Iterable[date]:
    """`day` and the days after it in its calendar month."""
    while True:
        yield day
        if (day := day + timedelta(days=1)).day == 1:
            return


#: The day AWS KMS opened (re:Invent, 2014-11-12): no key of it was made before.
KMS_LAUNCH_DAY = date(2014, 11, 12)


def _storage_span(store: MetricsStore, lifecycle: pl.DataFrame, today: date) -> list[date]:
    """The UTC days from the first key creation read (storage is billed for keys seen created) to
    the last event's, no earlier than the day AWS KMS opened and no later than `today`: an event
    stamped years ahead (a skewed clock, a bad record) must not have the export write a table for
    each day until then, nor one stamped before KMS existed (a CreateKey of 0001-01-01 or of the
    Unix epoch, from a tool that lost its time) a table for each day since: 739,000 tables, an hour
    of a `consume` that a SIGTERM does not cut short. Such a record's own day keeps its tables."""
    created = lifecycle.filter(pl.col("eventName").is_in(["CreateKey", "ReplicateKey"]))["eventTime"].min()
    last = store.time_bounds()[1]
    if not isinstance(created, datetime) or last is None:
        return []
    first = max(created.astimezone(UTC).date(), KMS_LAUNCH_DAY)
    end = min(last.astimezone(UTC).date(), today)
    return [first + timedelta(days=n) for n in range((end - first).days + 1)]


def _table(root: Path, name: str, day: date) -> Path:
    return root / name / f"day={day.isoformat()}" / f"{name}.parquet"


def stale_days(data_dir: Path) -> set[date]:
    """UTC days whose usage state changed after their table was exported (or never exported)."""
    stale = set()
    for folder in (state_dir(data_dir) / "usage").glob("day=*"):
        changed = max((_mtime(p) for p in folder.glob("*.parquet")), default=-1)
        if changed > _mtime(data_dir / "metrics" / "usage" / folder.name / "usage.parquet"):
            stale.add(date.fromisoformat(folder.name.removeprefix("day=")))
    return stale


def remove_stale_temp_files(data_dir: Path, min_age_seconds: float = STALE_TEMP_SECONDS) -> None:
    """Delete the temp files of table writes a kill cut short (kill -9 mid-export), never renamed:
    each is named for its writer's pid (`_write`, `_replace`), so no later export writes over it,
    and a partial Parquet file stayed beside the table for good, one per kill. Only those older
    than `min_age_seconds`: a younger one may be another consumer's write about to be renamed (a
    group member sharing the data dir), as the state's own temp files (`UsageFiles.remove_orphans`)."""
    remove_stale_temps(data_dir / "metrics", "usage/day=*/.usage.parquet.*.tmp", "cost/day=*/.cost.parquet.*.tmp",
                       "last_used/.last_used.parquet.*.tmp", min_age_seconds=min_age_seconds)


def _mtime(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:  # never exported; or a state file compacted away meanwhile
        return -1


def _write(frame: pl.DataFrame, path: Path) -> Path:
    make_dirs(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_parquet(frame, reserve_anew(temp))
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(path)
    return path


def _write_if_changed(frame: pl.DataFrame, path: Path) -> bool:
    """Write `frame` (a small table: a day's cost rows) to `path` unless the file there holds the
    very bytes it would: an event read late (an older log imported after newer ones) may change the
    storage of every day after its own, but mostly changes none (a Decrypt, a key already known),
    and each rewrite costs a file, an fsync and a rename. The bytes are compared, so the tables are
    those a full rewrite gives."""
    data = _encoded(frame, path)
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    _replace(path, data)
    return True


def _encoded(frame: pl.DataFrame, path: Path) -> bytes:
    """The Parquet file of `frame`, as `write_parquet` would write it to `path`."""
    buffer = io.BytesIO()
    try:
        frame.write_parquet(buffer)
    except pl.exceptions.PolarsError as exc:
        raise OSError(f"cannot write {path}: {exc}") from None
    return buffer.getvalue()


def _replace(path: Path, data: bytes) -> None:
    """`path` holds `data` whole or not at all, synced before the rename (temp file + rename)."""
    make_dirs(path.parent)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(reserve_anew(temp), "r+b") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:  # a full disk: no partial file left beside the table
        temp.unlink(missing_ok=True)
        # A write's or fsync's error names no file: "No space left on device" alone said not which disk.
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None
    temp.replace(path)
