"""Parquet tables in `<data-dir>/metrics/`: usage and cost partitioned by day, last used per key.

Written from the merged state of every partition (temp file + rename), so a reader never sees
a half-written table and concurrent consumers converge on the same content. A consumer that
stopped between a checkpoint and its export (kill -9, a crash) left days out of date: on start,
`stale_days` finds them by the state's usage files written after the day's table.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from keytrail.owner_only import make_dirs, reserve
from keytrail.pipeline.files import write_parquet
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir

__all__ = ["export_tables", "stale_days"]


def export_tables(data_dir: Path, days: Iterable[date], prices: PriceTable | None = None) -> list[Path]:
    """Rewrite the usage and cost tables of `days`, and the last-used table; return the files written."""
    store = MetricsStore(data_dir)
    root = data_dir / "metrics"
    written = []
    for day in sorted(set(days)):
        since = datetime.combine(day, time(), UTC)
        until = since + timedelta(days=1)
        name = f"day={day.isoformat()}"
        written.append(_write(store.usage_minutes(since, until), root / "usage" / name / "usage.parquet"))
        written.append(
            _write(store.cost(prices or PriceTable(), since, until), root / "cost" / name / "cost.parquet")
        )
    written.append(_write(store.last_used_by_key(), root / "last_used" / "last_used.parquet"))
    return written


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
    write_parquet(frame, reserve(temp))
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(path)
    return path
