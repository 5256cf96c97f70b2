"""transport.cloudtrail_records: the one decision of what a readable KMS record of a CloudTrail log
file is, which every reader of those files takes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.transport import cloudtrail_logs
from keytrail.transport.cloudtrail_records import (
    normalized_record,
    original_event_id,
    record_problem,
    storable_together,
    utc_event_time,
)

_RECORD: dict[str, Any] = {
    "eventVersion": "1.11", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt",
    "eventTime": "2026-01-05T12:00:00Z", "eventID": "e-0", "awsRegion": "us-east-1", "readOnly": True,
    "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::111122223333:user/eve"},
    "requestParameters": {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
}


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def _with(**fields: Any) -> dict[str, Any]:
    record = {**_RECORD, **fields}
    return {name: value for name, value in record.items() if value is not ...}


def test_a_record_as_cloudtrail_writes_it_is_readable_and_not_copied() -> None:
    assert record_problem(_RECORD) is None
    assert normalized_record(_RECORD) is _RECORD


def test_numbers_and_string_booleans_are_coerced_as_cloudtrail_types_them() -> None:
    fixed = normalized_record(_with(eventID=42, recipientAccountId=111122223333, readOnly="FALSE",
                                    managementEvent="true"))
    assert (fixed["eventID"], fixed["recipientAccountId"]) == ("42", "111122223333")
    assert (fixed["readOnly"], fixed["managementEvent"]) == (False, True)
    assert record_problem(fixed) is None


@pytest.mark.parametrize("name", ["eventVersion", "eventID", "eventSource", "eventName", "awsRegion", "eventType",
                                  "eventCategory", "sourceIPAddress", "userAgent", "errorCode", "errorMessage",
                                  "requestID", "recipientAccountId"])
def test_every_string_field_is_looked_at(name: str) -> None:
    record = _with(**{name: 7})
    fixed = normalized_record(record)
    assert fixed is not record and fixed[name] == "7" and record[name] == 7  # a copy: the record as it came


@pytest.mark.parametrize("name", ["readOnly", "managementEvent"])
def test_every_boolean_field_is_looked_at(name: str) -> None:
    assert normalized_record(_with(**{name: "True"}))[name] is True
    assert normalized_record(_with(**{name: False}))[name] is False


@pytest.mark.parametrize(("record", "problem"), [
    (_with(eventTime=...), "missing eventTime"),
    (_with(eventName=""), "missing eventName"),
    (_with(eventID=None, eventName=...), "missing eventID, eventName"),
    (_with(eventTime="yesterday"), "eventTime 'yesterday' is not an ISO 8601 time"),
    (_with(eventTime=1767614400), "eventTime '1767614400' is not an ISO 8601 time"),
    (_with(eventTime="0001-01-01T00:00:00+05:30"), "eventTime '0001-01-01T00:00:00+05:30' is out of range in UTC"),
    (_with(userIdentity="eve"), "userIdentity is not an object"),
    (_with(userIdentity=["eve"]), "userIdentity is not an object"),
    (_with(requestParameters={"n": 2**64}), "cannot be stored: Integer exceeds 64-bit range"),
    (_with(requestParameters={"n": -(2**63) - 1}), "cannot be stored: Integer exceeds 64-bit range"),
    (_with(userAgent="cli\udc80"), "cannot be stored: str is not valid UTF-8: surrogates not allowed"),
    (_with(requestParameters={"\ud800": 1}), "cannot be stored: str is not valid UTF-8: surrogates not allowed"),
    (_with(additionalEventData=_nested(300)), "cannot be stored: Recursion limit reached"),  # json reads 1,000
])
def test_what_no_reader_keeps_is_named(record: dict[str, Any], problem: str) -> None:
    assert record_problem(normalized_record(record)) == problem


@pytest.mark.parametrize("record", [
    _with(userIdentity=None),  # AWS service events may carry none
    _with(userIdentity=...),
    _with(requestParameters={"n": 2**64 - 1, "m": -(2**63)}),  # 64 bits: the event log stores them
    _with(eventTime="2026-01-05T12:00:00"),  # no offset: UTC
])
def test_what_the_event_log_stores_is_readable(record: dict[str, Any]) -> None:
    assert record_problem(normalized_record(record)) is None


def test_event_time_is_utc() -> None:
    assert utc_event_time("2026-01-05T13:00:00+01:00") == datetime(2026, 1, 5, 12, tzinfo=UTC)
    assert utc_event_time("2026-01-05T12:00:00") == datetime(2026, 1, 5, 12, tzinfo=UTC)


def test_a_corrected_copy_names_the_call_it_repeats() -> None:
    corrected = _with(eventID="e-1", addendum={"reason": "UPDATED_DATA", "originalEventID": "e-0"})
    assert original_event_id(corrected) == "e-0"
    assert original_event_id(_with(addendum={"reason": "DELIVERY_DELAY"})) is None  # late, not a copy
    assert original_event_id(_with(addendum={"reason": "UPDATED_DATA", "originalEventID": 7})) is None
    assert original_event_id(_RECORD) is None


def _file_text(records: list[str]) -> str:
    return '{"Records": [' + ", ".join(records) + "]}"


_KMS = '"eventSource": "kms.amazonaws.com", "eventName": "Decrypt", "eventTime": "2026-01-05T12:00:00Z"'
#: Records as a log file holds them (JSON text: the escapes and numbers as they come), normal ones
#: and every edge of the storability test, KMS and another service's.
_EDGE_RECORDS = [
    *(f'{{"eventID": "n-{i}", {_KMS}, "requestParameters": {{"n": {2**64 - 1}, "m": {-(2**63)}}}}}' for i in range(5)),
    f'{{"eventID": "big", {_KMS}, "requestParameters": {{"n": {2**64}}}}}',
    f'{{"eventID": "small", {_KMS}, "requestParameters": {{"n": {-(2**63) - 1}}}}}',
    f'{{"eventID": "lone", {_KMS}, "userAgent": "cli\\udc80"}}',
    f'{{"eventID": "lone-key", {_KMS}, "requestParameters": {{"\\ud800": 1}}}}',
    f'{{"eventID": "pair", {_KMS}, "userAgent": "cli \\ud83d\\ude00"}}',
    f'{{"eventID": "deep", {_KMS}, "additionalEventData": {"[" * 300 + "]" * 300}}}',
    # the deepest a record can be stored alone: one level too deep once inside a list
    f'{{"eventID": "deepest", {_KMS}, "additionalEventData": {"[" * 252 + "]" * 252}}}',
    f'{{"eventID": {2**70}, {_KMS}}}',  # too wide as it came, stored as the text it is coerced to
    f'{{"eventID": "e", "eventSource": "kms.amazonaws.com", "eventName": {2**70}, "eventTime": "2026-01-05T12:00:00"}}',
    f'{{"eventID": "s3", "eventSource": "s3.amazonaws.com", "n": {2**64}}}',  # another service's: skipped
    '{"eventID": "no-time", "eventSource": "kms.amazonaws.com", "eventName": "Decrypt", "x": "\\udc80"}',
    *(f'{{"eventID": "m-{i}", {_KMS}}}' for i in range(6)),
]


def _read(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], list[str], int]:
    report = cloudtrail_logs.ReadReport()
    kept = list(cloudtrail_logs.iter_located_records([path], report=report))
    return kept, report.problems, report.skipped


def test_records_checked_together_are_decided_as_each_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """readable_records tests the storability of a file's records a chunk at a time (one
    orjson.dumps), each record alone only in a chunk that fails: the same records kept, the same
    problems in the same words as when every record is tested alone."""
    path = tmp_path / "edges.json"
    path.write_text(_file_text(_EDGE_RECORDS))
    monkeypatch.setattr(cloudtrail_logs, "_CHECKED_TOGETHER", 5)  # chunks of 5: some clean, some not
    decided: list[bool] = []

    def spied(records: list[Any]) -> bool:
        decided.append(storable_together(records))
        return decided[-1]

    monkeypatch.setattr(cloudtrail_logs, "storable_together", spied)
    together = _read(path)
    monkeypatch.setattr(cloudtrail_logs, "storable_together", lambda records: False)
    alone = _read(path)

    assert together == alone
    assert decided == [True, False, False, False, True]  # the fast path taken where it may be
    kept, problems, skipped = together
    assert [record["eventID"] for _, record in kept] == [
        *(f"n-{i}" for i in range(5)), "pair", "deepest", str(2**70), "e", *(f"m-{i}" for i in range(6))]
    assert problems == [
        f"{path}: record 5 (eventID big): cannot be stored: Integer exceeds 64-bit range",
        f"{path}: record 6 (eventID small): cannot be stored: Integer exceeds 64-bit range",
        f"{path}: record 7 (eventID lone): cannot be stored: str is not valid UTF-8: surrogates not allowed",
        f"{path}: record 8 (eventID lone-key): cannot be stored: str is not valid UTF-8: surrogates not allowed",
        f"{path}: record 10 (eventID deep): cannot be stored: Recursion limit reached",
        f"{path}: record 15 (eventID no-time): missing eventTime",
    ]
    assert skipped == 1


def test_a_list_is_storable_together_only_when_each_record_is() -> None:
    assert storable_together([_RECORD, _with(requestParameters={"n": 2**64 - 1})])
    assert not storable_together([_RECORD, _with(requestParameters={"n": 2**64})])
    assert not storable_together([_RECORD, _with(userAgent="cli\udc80")])
    deepest = _with(additionalEventData=_nested(252))
    assert record_problem(deepest) is None and not storable_together([deepest])  # tested alone, then
    assert storable_together([])
