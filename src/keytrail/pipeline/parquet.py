"""Parquet tables in `<data-dir>/metrics/`: usage and cost partitioned by day, last used per key.

Written from the merged state of every partition (temp file + rename), so a reader never sees
a half-written table and concurrent consumers converge on the same content.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import polars as pl

from keytrail.pipeline.files import write_parquet
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore

__all__ = ["export_tables"]


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


def _write(frame: pl.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write_parquet(frame, temp)
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(path)
    return path
