"""CSV, JSON lines and Parquet forms of a report: every table in one long file.

Each row carries `table` (usage, usage_over_time, cost, cost_projection, last_used, denied,
alarms) and that table's columns; the other columns are empty. Read one table back with
`pl.read_parquet(path).filter(pl.col("table") == "cost")`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any

import polars as pl

from keytrail.pipeline.files import write_parquet

__all__ = ["TabularFormat", "cell_text", "long_form", "write_tabular"]


class TabularFormat(StrEnum):
    csv = "csv"
    json = "json"
    parquet = "parquet"


def long_form(tables: Mapping[str, pl.DataFrame], only: str | None = None) -> pl.DataFrame:
    """One frame holding every table (or only the one named), tagged by a leading `table` column."""
    parts = [frame.select(pl.lit(name).alias("table"), pl.all())
             for name, frame in tables.items() if only is None or name == only]
    if only is not None and not parts:
        raise ValueError(f"no table named {only!r} (choose from {', '.join(tables)})")
    return pl.concat(parts, how="diagonal_relaxed")


def write_tabular(frame: pl.DataFrame, out: Path, form: TabularFormat,
                  columns_of: Mapping[str, Sequence[str]] | None = None) -> Path:
    """Write `frame` to `out` atomically (temp file, then rename). `columns_of`: each table's own
    columns, which JSON lines write even when null (a reader then finds every column of a table)."""
    temp = out.with_name(f".{out.name}.tmp")
    if form is TabularFormat.parquet:
        write_parquet(frame, temp)
    elif form is TabularFormat.csv:
        temp.write_text(_csv(frame), encoding="utf-8")
    else:
        temp.write_text(_json_lines(frame, columns_of or {}), encoding="utf-8")
    temp.replace(out)
    return out


def _csv(frame: pl.DataFrame) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(frame.columns)
    writer.writerows([cell_text(value) for value in row] for row in frame.iter_rows())
    return buffer.getvalue()


def _json_lines(frame: pl.DataFrame, columns_of: Mapping[str, Sequence[str]]) -> str:
    """One object per row with its table's columns (null when empty; other tables' columns left
    out); money as exact decimal numbers."""
    lines = []
    for row in frame.iter_rows(named=True):
        own = columns_of.get(row.get("table") or "", ())
        parts = [f"{json.dumps(name)}: {_json_value(value)}" for name, value in row.items()
                 if value is not None or name in own]
        lines.append("{" + ", ".join(parts) + "}\n")
    return "".join(lines)


def _json_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return cell_text(value)
    if isinstance(value, datetime | date):
        return json.dumps(cell_text(value))
    return json.dumps(value)


def cell_text(value: Any) -> str:
    """A value as one CSV or table cell: ISO times in UTC, exact decimals, empty for null."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
