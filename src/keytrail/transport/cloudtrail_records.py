"""What a readable KMS record of a CloudTrail log file is: the one decision every reader of those
files takes (`audit import`, `consume --cloudtrail`, `report`, `detect --cloudtrail`), so that the
same files give the same counts and the same problems whichever path reads them.

A record is first coerced as a foreign record may need (`"true"` → true, numbers in CloudTrail's
string fields → their text), then it is readable when it names its eventID, eventTime (ISO 8601,
in range in UTC) and eventName, its userIdentity (if any) is an object, and the event log can
store it as it is (no integer wider than 64 bits, no lone surrogate, no nesting deeper than 254).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["normalized_record", "original_event_id", "record_problem", "storable_together", "utc_event_time"]

_BOOLEANS = ("readOnly", "managementEvent")
_STRINGS = ("eventVersion", "eventID", "eventSource", "eventName", "awsRegion", "eventType", "eventCategory",
            "sourceIPAddress", "userAgent", "errorCode", "errorMessage", "requestID", "recipientAccountId")
_REQUIRED = ("eventID", "eventTime", "eventName")


def normalized_record(record: dict[str, Any]) -> dict[str, Any]:
    """`record` with its typed scalar fields coerced as CloudTrail writes them (`"true"` → true,
    numbers → strings); the record itself when nothing needs it (the usual case: no copy)."""
    get = record.get  # this runs for every record of every file: one look at each field, in C (map)
    if _TEXT_OR_NONE.issuperset(map(type, map(get, _STRINGS))) and str not in map(type, map(get, _BOOLEANS)):
        return record
    fixed = dict(record)
    for name in _BOOLEANS:
        if isinstance(fixed.get(name), str):
            fixed[name] = fixed[name].lower() == "true"
    for name in _STRINGS:
        if fixed.get(name) is not None and not isinstance(fixed[name], str):
            fixed[name] = str(fixed[name])
    return fixed


_TEXT_OR_NONE = frozenset((str, type(None)))


def record_problem(record: dict[str, Any], *, storable: bool = False) -> str | None:
    """Why a (normalized) KMS record cannot be read, None when it can: every reader refuses the same
    records, with the same words. `storable`: the record is known to be storable
    (`storable_together` said so of records holding it), so its costliest test is not repeated."""
    if missing := [name for name in _REQUIRED if not record.get(name)]:
        return f"missing {', '.join(missing)}"
    try:
        utc_event_time(record["eventTime"])
    except ValueError as exc:
        return str(exc)
    if not isinstance(record.get("userIdentity"), dict | None):
        return "userIdentity is not an object"
    if storable:
        return None
    try:  # what the event log stores it with: the test of whether it can be stored as it came
        orjson.dumps(record)
    except orjson.JSONEncodeError as exc:
        return f"cannot be stored: {exc}"
    return None


def storable_together(records: Sequence[Any]) -> bool:
    """Whether the event log can store every one of `records` as it is, found by one orjson.dumps of
    them all instead of one per record (≈0.5 µs a record less, of the ≈3.7 µs readable_records took).
    It decides as record_problem's own test would: a record inside the list nests one level
    deeper than alone, and normalized_record only puts text or booleans in place of values, so
    each record of a storable list is storable, normalized or not. False only says that some
    record may not be: record_problem then tests each."""
    try:
        orjson.dumps(records)
    except orjson.JSONEncodeError:
        return False
    return True


def utc_event_time(value: Any) -> datetime:
    """A record's eventTime as an aware UTC datetime (no offset reads as UTC, CloudTrail's zone);
    ValueError naming what is wrong."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"eventTime {str(value)[:40]!r} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"eventTime {value[:40]!r} is not an ISO 8601 time") from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:  # 0001-01-01T00:00:00+05:30 is a time before year 1 in UTC
        raise ValueError(f"eventTime {value[:40]!r} is out of range in UTC") from None


def original_event_id(record: Mapping[str, Any]) -> str | None:
    """The eventID of the call a corrected copy repeats (addendum reason UPDATED_DATA: a record of
    its own, with a new eventID, naming the original), None for any other record. Every reader
    counts the two as one call (audit-anchors §1.1: "Consumers must allow a late or corrected
    duplicate of an event")."""
    addendum = record.get("addendum")
    if type(addendum) is dict and addendum.get("reason") == "UPDATED_DATA":
        original = addendum.get("originalEventID")
        if type(original) is str and original:
            return original
    return None
