"""transport.cloudtrail_records: the one decision of what a readable KMS record of a CloudTrail log
file is, which every reader of those files takes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from keytrail.transport.cloudtrail_records import (
    normalized_record,
    original_event_id,
    record_problem,
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
