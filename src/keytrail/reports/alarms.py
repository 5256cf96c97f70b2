"""Alarms for the report: `<data-dir>/alarms.jsonl` (CONTRACTS.md §5 fields), latest state per alarm."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["ALARMS_SCHEMA", "SEVERITY_ORDER", "alarms_frame", "read_alarm_lines"]

SEVERITY_ORDER = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}
ALARMS_SCHEMA: dict[str, pl.DataType] = {
    "alarmId": pl.String(), "rule": pl.String(), "severity": pl.String(), "keyArn": pl.String(),
    "principalArn": pl.String(), "accountId": pl.String(), "region": pl.String(),
    "firstSeen": pl.Datetime("us", "UTC"), "lastSeen": pl.Datetime("us", "UTC"), "count": pl.Int64(),
    "summary": pl.String(), "recommendation": pl.String(), "eventIds": pl.String(),
}


def read_alarm_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """Alarm objects of a JSON-lines file, and how many lines that are not blank were no alarm; a
    later line for the same alarmId replaces the earlier (the detector appends updates and
    escalations)."""
    latest: dict[str, dict[str, Any]] = {}
    unreadable = 0
    with path.open("rb") as handle:  # bytes: a line that is no UTF-8 is one more unreadable line
        for line in handle:
            try:
                alarm = json.loads(line)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError
                unreadable += bool(line.strip())
                continue
            if isinstance(alarm, dict) and alarm.get("alarmId"):
                latest[str(alarm["alarmId"])] = alarm
            else:
                unreadable += 1
    return list(latest.values()), unreadable


def alarms_frame(alarms: Iterable[dict[str, Any]], since: datetime | None = None,
                 until: datetime | None = None) -> pl.DataFrame:
    """Alarms active in [since, until), most severe first; eventIds joined by spaces."""
    rows = [_row(alarm) for alarm in alarms]
    frame = pl.DataFrame(rows, schema=ALARMS_SCHEMA) if rows else pl.DataFrame(schema=ALARMS_SCHEMA)
    if since is not None:
        frame = frame.filter(pl.col("lastSeen").is_null() | (pl.col("lastSeen") >= since))
    if until is not None:
        frame = frame.filter(pl.col("firstSeen").is_null() | (pl.col("firstSeen") < until))
    rank = pl.col("severity").replace_strict(SEVERITY_ORDER, default=len(SEVERITY_ORDER), return_dtype=pl.Int64)
    return frame.sort([rank, pl.col("lastSeen")], descending=[False, True], nulls_last=True)


def _row(alarm: dict[str, Any]) -> dict[str, Any]:
    """One frame row; a field of the wrong type (the file is anyone's to edit) becomes text or
    null rather than failing the whole report."""
    row: dict[str, Any] = {name: _text(alarm.get(name)) for name in ALARMS_SCHEMA}
    row["firstSeen"] = _time(alarm.get("firstSeen"))
    row["lastSeen"] = _time(alarm.get("lastSeen"))
    count = alarm.get("count")
    row["count"] = count if isinstance(count, int) and not isinstance(count, bool) else None
    ids = alarm.get("eventIds")
    row["eventIds"] = " ".join(str(i) for i in ids) if isinstance(ids, list) else _text(ids)
    return row


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
