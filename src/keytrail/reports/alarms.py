"""Alarms for the report: `<data-dir>/alarms.jsonl` (CONTRACTS.md §5 fields), latest state per alarm."""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

__all__ = ["ALARMS_SCHEMA", "SEVERITY_ORDER", "KeysAtStart", "alarms_frame", "read_alarm_lines"]

SEVERITY_ORDER = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}
ALARMS_SCHEMA: dict[str, pl.DataType] = {
    "alarmId": pl.String(), "rule": pl.String(), "severity": pl.String(), "keyArn": pl.String(),
    "principalArn": pl.String(), "accountId": pl.String(), "region": pl.String(),
    "firstSeen": pl.Datetime("us", "UTC"), "lastSeen": pl.Datetime("us", "UTC"), "count": pl.Int64(),
    "summary": pl.String(), "recommendation": pl.String(), "eventIds": pl.String(),
}


@dataclass(frozen=True)
class KeysAtStart:
    """What the events say of the keys when the period starts: each key's last use before it (a
    key absent: none seen), and the keys deleted or pending deletion by then."""

    last_used: Mapping[str, datetime] = field(default_factory=dict)
    gone: Collection[str] = frozenset()


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
            except (ValueError, RecursionError):  # JSONDecodeError, UnicodeDecodeError; nested past json's reach
                unreadable += bool(line.strip())
                continue
            if isinstance(alarm, dict) and alarm.get("alarmId"):
                latest[str(alarm["alarmId"])] = alarm
            else:
                unreadable += 1
    return list(latest.values()), unreadable


def alarms_frame(alarms: Iterable[dict[str, Any]], since: datetime | None = None,
                 until: datetime | None = None, keys: KeysAtStart | None = None) -> pl.DataFrame:
    """Alarms active in [since, until), most severe first; eventIds joined by spaces. `keys`: what
    tells an `unused-key` alarm raised before `since` still in force then (`_in_force`); without
    it, such an alarm is active only from its firstSeen to its lastSeen, as the others are."""
    alarms = list(alarms)
    rows = [_row(alarm) for alarm in alarms]
    frame = pl.DataFrame(rows, schema=ALARMS_SCHEMA) if rows else pl.DataFrame(schema=ALARMS_SCHEMA)
    if since is not None:
        held = pl.Series([keys is not None and _in_force(alarm, since, keys) for alarm in alarms], dtype=pl.Boolean)
        frame = frame.filter(pl.col("lastSeen").is_null() | (pl.col("lastSeen") >= since) | held)
    if until is not None:
        frame = frame.filter(pl.col("firstSeen").is_null() | (pl.col("firstSeen") < until))
    rank = pl.col("severity").replace_strict(SEVERITY_ORDER, default=len(SEVERITY_ORDER), return_dtype=pl.Int64)
    return frame.sort([rank, pl.col("lastSeen")], descending=[False, True], nulls_last=True)


def _in_force(alarm: dict[str, Any], since: datetime, keys: KeysAtStart) -> bool:
    """Whether an `unused-key` alarm still held at `since`: the rule raises it once per idle spell
    (its lastSeen stays the day the key crossed the limit), and the spell lasts until the key is
    used again, or is deleted. A use at or after `since` ends it within the period."""
    key = alarm.get("keyArn")
    if alarm.get("rule") != "unused-key" or not isinstance(key, str) or key in keys.gone:
        return False
    details = alarm.get("details")
    idle = _aware(details.get("idleSince")) if isinstance(details, dict) else None
    used = keys.last_used.get(key)
    if used is None or used >= since:
        return True
    if idle is not None:  # the spell began with the use at idleSince (or the key's making)
        return used <= idle
    raised = _aware(alarm.get("firstSeen"))
    return raised is not None and used < raised  # no use seen since it was raised


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


def _aware(value: Any) -> datetime | None:
    """A time with its offset (a hand-edited one without is no time to compare with the events')."""
    moment = _time(value)
    return moment if moment is not None and moment.tzinfo is not None else None
