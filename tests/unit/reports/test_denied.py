"""Denied calls are the AccessDenied errors, each event counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keytrail.pipeline.frame import frame_from_records
from keytrail.reports.denied import DeniedTally, denied_calls
from tests.unit.reports.records import key_arn, record, user_arn

T0 = datetime(2026, 11, 2, 9, tzinfo=UTC)


def test_denied_calls_count_access_denied_only() -> None:
    key = key_arn("k1")
    frame = frame_from_records([
        record("Decrypt", T0, key, user_arn("mallory"), error="AccessDenied"),
        record("Decrypt", T0 + timedelta(minutes=5), key, user_arn("mallory"), error="AccessDeniedException"),
        record("Decrypt", T0, key, user_arn("alice"), error="InvalidCiphertextException"),
        record("Decrypt", T0, key, user_arn("alice")),
    ])
    rows = denied_calls(frame).sort("errorCode").to_dicts()
    assert [(r["principalArn"], r["errorCode"], r["count"]) for r in rows] == [
        (user_arn("mallory"), "AccessDenied", 1), (user_arn("mallory"), "AccessDeniedException", 1)]


def test_tally_counts_a_redelivered_event_once_and_keeps_first_and_last_time() -> None:
    key = key_arn("k1")
    first = record("Decrypt", T0, key, user_arn("mallory"), error="AccessDenied")
    later = record("Decrypt", T0 + timedelta(hours=2), key, user_arn("mallory"), error="AccessDenied")
    tally = DeniedTally()
    tally.add(frame_from_records([first, first]))
    tally.add(frame_from_records([later, first]))
    [row] = tally.frame().to_dicts()
    assert row["count"] == 2
    assert (row["firstDenied"], row["lastDenied"]) == (T0, T0 + timedelta(hours=2))


def test_tally_keeps_only_the_period() -> None:
    key = key_arn("k1")
    tally = DeniedTally(since=T0, until=T0 + timedelta(hours=1))
    tally.add(frame_from_records([
        record("Encrypt", T0 - timedelta(seconds=1), key, error="AccessDenied"),
        record("Encrypt", T0, key, error="AccessDenied"),
        record("Encrypt", T0 + timedelta(hours=1), key, error="AccessDenied"),
    ]))
    assert tally.frame().get_column("count").to_list() == [1]


def test_empty_tally_has_the_denied_columns() -> None:
    assert DeniedTally().frame().columns == ["keyArn", "principalArn", "accountId", "eventName", "errorCode",
                                             "count", "firstDenied", "lastDenied"]
