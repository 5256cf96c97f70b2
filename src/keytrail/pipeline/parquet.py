"""Parquet tables in `<data-dir>/metrics/`: usage and cost partitioned by day, last used per key.

Written from the merged state of every partition (temp file + rename), so a reader never sees
a half-written table and concurrent consumers converge on the same content. A consumer that
stopped between a checkpoint and its export (kill -9, a crash) left days out of date: on start,
`stale_days` finds them by the state's usage files written after the day's table.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from keytrail.owner_only import make_dirs, reserve_anew
from keytrail.pipeline.files import write_parquet
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir

__all__ = ["export_tables", "stale_days"]


def export_tables(data_dir: Path, days: Iterable[date], prices: PriceTable | None = None) -> list[Path]:
    """Rewrite the usage tables of `days`, the cost tables whose figures they changed (of those
    they may change, see `_cost_days`), and the last-used table; return the files written."""
    store = MetricsStore(data_dir)
    root = data_dir / "metrics"
    changed = set(days)
    written = []
    for day in sorted(changed):
        since = datetime.combine(day, time(), UTC)
        written.append(_write(store.usage_minutes(since, since + timedelta(days=1)), _table(root, "usage", day)))
    today = store.now().date()  # the data dir's: its dev clock's where one went ahead
    lifecycle = store.lifecycle()  # every day's storage is priced from it: read once, not once a day
    for day in sorted(_cost_days(root, store, changed, today)):
        since = datetime.combine(day, time(), UTC)
        cost = store.cost(prices or PriceTable(), since, since + timedelta(days=1), lifecycle=lifecycle)
        if _write_if_changed(cost, path := _table(root, "cost", day)):
            written.append(path)
    written.append(_write(store.last_used_by_key(), root / "last_used" / "last_used.parquet"))
    return written


def _cost_days(root: Path, store: MetricsStore, changed: set[date], today: date) -> set[date]:
    """The days whose cost table may no longer say what the state does: a key's storage accrues
    every day it exists, with or without events, and an event (a CreateKey, a DeleteKey read late)
    may change the storage of every day after its own. So, besides the changed days, every day of
    the storage span from the first changed one on, and every day of it that has no table yet (a
    quiet day, which no event marks as changed: without it, summing the daily tables left out its
    storage). A day after `today` has no cost table until it comes (the export then writes it as
    a day without one): its storage has not happened, and would be billed whole."""
    span = _storage_span(store, today)
    start = min(changed, default=date.max)
    days = changed | {day for day in span if day >= start or not _table(root, "cost", day).exists()}
    return {day for day in days if day <= today}


def _storage_span(store: MetricsStore, today: date) -> list[date]:
    """The UTC days from the first key creation read (storage is billed for keys seen created) to
    the last event's, and no later than `today`: an event stamped years ahead (a skewed clock, a
    bad record) must not have the export write a table for each day until then."""
    created = store.lifecycle().filter(pl.col("eventName").is_in(["CreateKey", "ReplicateKey"]))["eventTime"].min()
    last = store.time_bounds()[1]
    if not isinstance(created, datetime) or last is None:
        return []
    first = created.astimezone(UTC).date()
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
    except OSError:  # a full disk: no partial file left beside the table
        temp.unlink(missing_ok=True)
        raise
    temp.replace(path)
