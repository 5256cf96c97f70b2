"""Usage, last-used and cost against the plain-Python reference, whole and in merged batches."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from keytrail.pipeline.cost import billed_segments, cost_report, lifecycle_events
from keytrail.pipeline.frame import frame_from_records
from keytrail.pipeline.lastused import last_used, last_used_per_key, merge_last_used
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from keytrail.pipeline.usage import merge_usage, roll_up, usage_minutes
from tests.unit.pipeline import reference
from tests.unit.reports.records import key_arn, record

SETTINGS = SyntheticSettings(
    keys=60, principals=25, accounts=3, seconds_per_event=20.0, lifecycle_share=0.01, same_second_share=0.3
)
UNTIL = datetime(2026, 10, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def events() -> list[dict[str, Any]]:
    return list(generate_events(6000, SETTINGS, seed=11))


def _frame(events: list[dict[str, Any]], start: int = 0) -> pl.DataFrame:
    """The frame of `events` read from position `start` of the log."""
    offsets = range(start, start + len(events))
    return frame_from_records(events, offsets).unique("eventID", keep="first", maintain_order=True)


def _usage_dict(usage: pl.DataFrame) -> dict[tuple[Any, ...], tuple[int, int]]:
    rolled = roll_up(usage, ["minute", "keyArn", "principalArn", "accountId", "eventName"])
    return {row[:5]: (row[5], row[6]) for row in rolled.iter_rows()}


def test_generated_stream_has_what_the_reference_must_cover(events: list[dict[str, Any]]) -> None:
    names = {e["eventName"] for e in events}
    assert {"RotateKey", "ScheduleKeyDeletion", "DeleteKey", "CancelKeyDeletion", "ReEncrypt"} <= names
    assert any(e.get("errorCode") == "AccessDenied" for e in events)
    assert len({e["eventID"] for e in events}) < len(events)  # redelivered duplicates present
    assert any(e["userIdentity"].get("type") == "AssumedRole" for e in events)
    assert _final_uses_tied_within_a_second(events) > 20


def _final_uses_tied_within_a_second(events: list[dict[str, Any]]) -> int:
    """Key x principal pairs used more than once in the second of their latest use: the tie-break decides."""
    seconds: dict[tuple[str, str], Counter[datetime]] = {}
    for e in reference.unique(events):
        if not e.get("errorCode") and e["eventName"] in reference.CRYPTO:
            pair = (e["resources"][0]["ARN"], reference.principal(e) or "")
            seconds.setdefault(pair, Counter())[reference.when(e)] += 1
    return sum(1 for counts in seconds.values() if counts[max(counts)] > 1)


def test_usage_matches_reference(events: list[dict[str, Any]]) -> None:
    assert _usage_dict(usage_minutes(_frame(events))) == reference.usage(events)


def test_usage_merged_from_batches_matches_reference(events: list[dict[str, Any]]) -> None:
    seen: set[str] = set()
    parts = []
    for start in range(0, len(events), 700):  # drop repeats across batches the way the runner does
        batch = [e for e in events[start : start + 700] if e["eventID"] not in seen]
        seen.update(e["eventID"] for e in batch)
        parts.append(usage_minutes(_frame(batch)))
    assert _usage_dict(merge_usage(parts)) == reference.usage(events)


def test_roles_are_attributed_to_the_role_not_the_session(events: list[dict[str, Any]]) -> None:
    principals = set(usage_minutes(_frame(events)).get_column("principalArn").drop_nulls().to_list())
    assert any(":role/" in p for p in principals)
    assert not any("assumed-role" in p for p in principals)


def test_last_used_matches_reference(events: list[dict[str, Any]]) -> None:
    parts = [last_used(_frame(events[i : i + 900], i)) for i in range(0, len(events), 900)]
    got = {
        (r["keyArn"], r["principalArn"]): (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"])
        for r in merge_last_used(parts).iter_rows(named=True)
    }
    assert got == reference.last_used(events)


def test_last_used_per_key_names_the_latest_principal(events: list[dict[str, Any]]) -> None:
    expected = reference.last_used_per_key(events)
    per_key = last_used_per_key(last_used(_frame(events)))
    got = {
        r["keyArn"]: (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"], r["lastUsedPrincipalArn"])
        for r in per_key.iter_rows(named=True)
    }
    assert got == expected


def test_failed_and_management_calls_are_not_use() -> None:
    frame = frame_from_records(list(generate_events(400, SETTINGS, seed=3)))
    used = last_used(frame)
    ids = set(used.get_column("eventId").to_list())
    not_use = frame.filter(
        pl.col("errorCode").is_not_null() | pl.col("eventName").is_in(["DescribeKey", "CreateKey"])
    )
    assert ids.isdisjoint(set(not_use.get_column("eventID").to_list()))


@pytest.mark.parametrize("free_tier", [0, 300])
def test_cost_matches_reference(events: list[dict[str, Any]], free_tier: int) -> None:
    prices = PriceTable(free_tier_requests=free_tier)
    frame = _frame(events)
    report = cost_report(usage_minutes(frame), lifecycle_events(frame), prices, None, UNTIL)
    got = {
        (r["keyArn"], r["accountId"]): {k: r[k] for k in ("keyMonths", "keyCost", "requests", "requestCost")}
        for r in report.iter_rows(named=True)
    }
    assert got == reference.cost(events, prices, UNTIL)
    assert all(r["totalCost"] == r["keyCost"] + r["requestCost"] for r in report.iter_rows(named=True))


# Bounds inside the clock hour of a lifecycle event of the stream, before it: keys made from 00:00
# to 00:20, a rotation at 01:13:20, a deletion cancelled at 00:11:20 the next day.
INSIDE_AN_HOUR = [datetime(2026, 10, 1, 0, 10, tzinfo=UTC), datetime(2026, 10, 1, 1, 10, tzinfo=UTC),
                  datetime(2026, 10, 2, 0, 10, tzinfo=UTC)]


def _cost(frame: pl.DataFrame, since: datetime | None, until: datetime) -> dict[tuple[str, str], list[Any]]:
    report = cost_report(usage_minutes(frame), lifecycle_events(frame), PriceTable(), since, until)
    return {(r["keyArn"], r["accountId"]): [r["keyMonths"], r["keyCost"], r["requests"], r["requestCost"]]
            for r in report.iter_rows(named=True)}


@pytest.mark.parametrize("until", INSIDE_AN_HOUR)
def test_cost_up_to_a_bound_inside_an_hour_matches_reference(events: list[dict[str, Any]], until: datetime) -> None:
    # The hour `until` falls in starts before it, so is billed whole: by the events later in it too.
    fields = ("keyMonths", "keyCost", "requests", "requestCost")
    expected = {row: [values[f] for f in fields] for row, values in reference.cost(events, PriceTable(), until).items()}
    assert _cost(_frame(events), None, until) == expected


@pytest.mark.parametrize("middle", INSIDE_AN_HOUR)
def test_two_windows_split_inside_an_hour_add_up_to_the_whole(events: list[dict[str, Any]], middle: datetime) -> None:
    # Split before a key's CreateKey (a RotateKey, a CancelKeyDeletion) in the same hour, that hour
    # was billed by neither window.
    frame = _frame(events)
    halves = [_cost(frame, None, middle), _cost(frame, middle, UNTIL)]
    added: dict[tuple[str, str], list[Any]] = {}
    for half in halves:
        for row, values in half.items():
            added[row] = [a + b for a, b in zip(added.get(row, [0, 0, 0, 0]), values, strict=True)]
    whole = _cost(frame, None, UNTIL)
    assert {row: values for row, values in added.items() if any(values)} == whole


def _t(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, tzinfo=UTC)


def test_two_rotations_are_billed_and_the_third_is_free() -> None:
    events = [(_t(0), "CreateKey"), (_t(1), "RotateKey"), (_t(2), "RotateKey"), (_t(3), "RotateKey")]
    segments = billed_segments(events, billed_rotations=2)
    assert [(s.end_hour - s.start_hour, s.rotations) for s in segments[:2]] == [(1, 0), (1, 1)]
    assert len(segments) == 3 and segments[2].rotations == 2  # the third rotation opens no new rate
    assert segments[2].end_hour > 10**9  # still billable: open-ended


def test_a_cancelled_waiting_period_is_billed_after_all_and_a_completed_one_is_not() -> None:
    # AWS KMS pricing: a key pending deletion is not billed; cancelling bills it as if the
    # deletion had never been scheduled. The 02:30 hour is billed before the scheduling, the
    # 05:10 hour by the key enabled again: 03:00-05:00 are the restored hours, charged at 05:00.
    # Scheduled at 07:00:00, the key was billable in that second: the 07:00 hour is billed too.
    events = [
        (_t(0), "CreateKey"),
        (_t(2, 30), "ScheduleKeyDeletion"),
        (_t(5, 10), "CancelKeyDeletion"),
        (_t(7), "ScheduleKeyDeletion"),
        (_t(9), "DeleteKey"),
    ]
    segments = billed_segments(events, 2)
    assert [(s.start_hour % 24, s.end_hour % 24) for s in segments] == [(0, 3), (3, 5), (5, 8)]
    assert [s.charged_hour for s in segments] == [None, segments[2].start_hour, None]


def test_a_deletion_scheduled_again_in_the_second_it_was_cancelled_stops_the_billing() -> None:
    # CloudTrail times have whole seconds: schedule, cancel and schedule again in one second tie, and
    # in lifecycle order (schedule before cancel) the key, pending deletion, was billed for ever.
    # AWS cancels only a pending deletion and schedules only one not pending: that fixes the order.
    events = [
        (_t(0), "CreateKey"),
        (_t(2, 30), "ScheduleKeyDeletion"),
        (_t(2, 30), "CancelKeyDeletion"),
        (_t(2, 30), "ScheduleKeyDeletion"),
    ]
    assert [(s.start_hour % 24, s.end_hour % 24) for s in billed_segments(events, 2)] == [(0, 2), (2, 3)]
    # Pending since an earlier second, cancelled and scheduled again in one: pending still.
    events = [(_t(0), "CreateKey"), (_t(1, 30), "ScheduleKeyDeletion"), (_t(5, 30), "CancelKeyDeletion"),
              (_t(5, 30), "ScheduleKeyDeletion")]
    segments = billed_segments(events, 2)
    assert [(s.start_hour % 24, s.end_hour % 24) for s in segments] == [(0, 2), (2, 5), (5, 6)]
    assert segments[1].charged_hour == segments[2].start_hour  # the cancelled waiting period


def test_a_rotation_in_the_second_its_key_s_deletion_was_cancelled_came_after_the_cancel() -> None:
    # Cancel, enable and rotate in one second (a script): AWS rotates no key pending deletion, so
    # the rotation came after the cancel, and the waiting period the cancel restores is billed at
    # the rate before it. In lifecycle order (rotation before cancel) it was billed a rotation higher.
    events = [(_t(0), "CreateKey"), (_t(1, 30), "ScheduleKeyDeletion"), (_t(5, 30), "CancelKeyDeletion"),
              (_t(5, 30), "RotateKey")]
    segments = billed_segments(events, 2)
    assert [(s.start_hour % 24, s.rotations) for s in segments] == [(0, 0), (2, 0), (5, 1)]  # the last open
    assert (segments[0].end_hour % 24, segments[1].end_hour % 24) == (2, 5)
    assert segments[1].charged_hour == segments[2].start_hour  # the cancelled waiting period, at $1
    # Not pending, a rotation tied with the scheduling still came before it (nothing rotates pending).
    events = [(_t(0), "CreateKey"), (_t(1, 30), "RotateKey"), (_t(1, 30), "ScheduleKeyDeletion")]
    assert [(s.start_hour % 24, s.end_hour % 24, s.rotations) for s in billed_segments(events, 2)] == [
        (0, 1, 0), (1, 2, 1)]


def test_records_of_odd_shapes_read_as_nulls_and_those_without_time_or_name_are_left_out() -> None:
    [good] = list(generate_events(1, SETTINGS, seed=5))
    odd = [
        {**good, "eventID": "resources-int", "resources": 5, "userIdentity": "alice", "readOnly": "false"},
        {**good, "eventID": "identity-odd", "userIdentity": {"arn": 5, "sessionContext": "x", "accountId": []}},
        {**good, "eventID": "create-odd", "eventName": "CreateKey", "responseElements": {"keyMetadata": "x"},
         "requestParameters": ["keySpec"]},
        {**good, "eventID": "no-time", "eventTime": "yesterday"},
        {**good, "eventID": "no-name", "eventName": 7},
    ]
    frame = frame_from_records(odd, [10, 11, 12, 13, 14])
    rows = {r["eventID"]: r for r in frame.iter_rows(named=True)}
    assert list(rows) == ["resources-int", "identity-odd", "create-odd"]
    assert rows["resources-int"]["keyArn"] is None and rows["resources-int"]["principalArn"] is None
    assert rows["resources-int"]["readOnly"] is False
    assert rows["identity-odd"]["principalArn"] is None
    assert rows["identity-odd"]["accountId"] == good["recipientAccountId"]
    assert rows["create-odd"]["keySpec"] == "SYMMETRIC_DEFAULT" and rows["create-odd"]["logOffset"] == 12


def _keys_leaving_at_the_tops_of_hours() -> list[dict[str, Any]]:
    """Lifecycle events in the first second of a clock hour (as a dev clock standing still logs them)."""
    used, instant, rotated, cancelled, before_logs = (key_arn(name) for name in (
        "used", "instant", "rotated", "cancelled", "before-logs"))
    return [
        record("CreateKey", _t(0, 20), used), record("Encrypt", _t(1), used),
        record("ScheduleKeyDeletion", _t(1), used),
        record("CreateKey", _t(2), instant), record("ScheduleKeyDeletion", _t(2), instant),
        record("CreateKey", _t(0), rotated), record("RotateKey", _t(2), rotated), record("DeleteKey", _t(4), rotated),
        record("CreateKey", _t(0), cancelled), record("ScheduleKeyDeletion", _t(3), cancelled),
        record("CancelKeyDeletion", _t(5), cancelled),
        record("ScheduleKeyDeletion", _t(3), before_logs), record("CancelKeyDeletion", _t(6), before_logs),
    ]


@pytest.mark.parametrize("until", [_t(1), _t(1, 30), _t(2), _t(3), _t(5), _t(5, 10), _t(8)])
def test_cost_of_keys_leaving_at_the_tops_of_hours_matches_reference(until: datetime) -> None:
    events = _keys_leaving_at_the_tops_of_hours()
    fields = ("keyMonths", "keyCost", "requests", "requestCost")
    expected = {row: [values[f] for f in fields] for row, values in reference.cost(events, PriceTable(), until).items()}
    assert _cost(_frame(events), None, until) == expected
