"""Report tables from a known stream: usage, unused keys, denied calls, the month's projection, HTML."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from keytrail.audit.schema import encode
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.segment_source import SegmentLogSource
from keytrail.pipeline.sources import RecordsSource
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from keytrail.reports.collect import ReportData, ReportOptions, collect_event_log, collect_sync
from keytrail.reports.figures import choose_window, month_bounds
from keytrail.reports.html import money, render_html
from keytrail.reports.output import ReportFormat, write_report
from keytrail.transport.segment_log import SegmentLog
from tests.unit.reports.records import ACCOUNT, by_alias, key_arn, record, user_arn

NOV = datetime(2026, 11, 1, tzinfo=UTC)
AS_OF = datetime(2026, 11, 16, tzinfo=UTC)  # half of November gone
BUSY, IDLE, OLD = key_arn("busy"), key_arn("idle"), key_arn("old")


def _stream() -> list[dict[str, Any]]:
    events = [record("CreateKey", NOV, BUSY), record("CreateKey", NOV, IDLE),
              record("CreateKey", NOV - timedelta(days=31), OLD),
              record("Encrypt", NOV - timedelta(days=30), OLD)]
    events += [record("Encrypt", NOV + timedelta(hours=h), BUSY) for h in range(100)]
    events += [record("Decrypt", NOV + timedelta(days=11, minutes=m), BUSY, user_arn("mallory"),
                      error="AccessDenied") for m in range(3)]
    return events + events[-5:]  # redelivered duplicates count once


@pytest.fixture(scope="module")
def data() -> Any:
    alarms = Path(__file__).with_name("no-such-alarms.jsonl")
    return collect_sync(RecordsSource(_stream()), ReportOptions(until=AS_OF, alarms=alarms))


def test_usage_counts_each_event_once(data: Any) -> None:
    usage = {(r["keyArn"], r["eventName"], r["principalArn"]): (r["count"], r["errorCount"])
             for r in data.usage.to_dicts()}
    assert usage[(BUSY, "Encrypt", user_arn("alice"))] == (100, 0)
    assert usage[(BUSY, "Decrypt", user_arn("mallory"))] == (3, 3)
    assert data.events == 3 + 1 + 100 + 3
    assert data.usage.columns == ["keyArn", "eventName", "principalArn", "accountId", "count", "errorCount",
                                  "aliases"]  # the §4 columns, then the keys' aliases


def test_keys_long_unused_are_marked_and_a_new_key_not_yet(data: Any) -> None:
    # IDLE was made on Nov 1 and never used: 15 days old as of Nov 16, it is not unused for 30 days
    # yet (as the unused-key rule counts: a key made an hour ago is no key to delete).
    unused = dict(data.last_used.select("keyArn", "unused").iter_rows())
    assert unused == {BUSY: False, IDLE: False, OLD: True}


@pytest.mark.parametrize(("days", "idle_unused"), [(15, True), (16, False)])
def test_a_never_used_key_is_unused_once_it_has_existed_the_unused_days(days: int, idle_unused: bool) -> None:
    options = ReportOptions(until=AS_OF, unused_days=days, alarms=Path(__file__).with_name("none"))
    unused = dict(collect_sync(RecordsSource(_stream()), options).last_used.select("keyArn", "unused").iter_rows())
    assert unused[IDLE] is idle_unused and unused[BUSY] is False


@pytest.mark.parametrize(("days", "unused"), [(15, True), (16, False)])
def test_a_key_last_used_exactly_the_unused_days_ago_is_unused_as_one_made_then(days: int, unused: bool) -> None:
    # The unused-key rule raises both once idle the whole limit (now - since >= limit); the report
    # marked the key made at that instant and left the one last used then, 15 days idle alike.
    made, used = key_arn("made"), key_arn("used")
    events = [record("CreateKey", NOV - timedelta(days=1), used), record("Encrypt", NOV, used),
              record("CreateKey", NOV, made)]
    options = ReportOptions(until=NOV + timedelta(days=15), unused_days=days, alarms=Path(__file__).with_name("x"))
    marked = dict(collect_sync(RecordsSource(events), options).last_used.select("keyArn", "unused").iter_rows())
    assert marked == {made: unused, used: unused}


def test_a_never_used_key_made_before_the_input_counts_from_the_input_s_start() -> None:
    # No CreateKey in the input: the key has existed at least since its first event (Nov 1).
    events = [record("DescribeKey", NOV, IDLE), record("Encrypt", NOV + timedelta(days=20), BUSY)]
    options = ReportOptions(until=AS_OF + timedelta(days=9), unused_days=25, alarms=Path(__file__).with_name("x"))
    unused = dict(collect_sync(RecordsSource(events), options).last_used.select("keyArn", "unused").iter_rows())
    assert unused == {IDLE: False, BUSY: False}  # as of Nov 25: 24 days seen, not yet
    options = ReportOptions(until=AS_OF + timedelta(days=10), unused_days=25, alarms=Path(__file__).with_name("x"))
    unused = dict(collect_sync(RecordsSource(events), options).last_used.select("keyArn", "unused").iter_rows())
    assert unused == {IDLE: True, BUSY: False}


def test_a_key_used_only_as_a_reencrypt_destination_is_in_last_used_and_not_unused() -> None:
    # The key ciphertexts were moved to (made before the input) was left out of the table.
    reencrypt = record("ReEncrypt", NOV + timedelta(days=1), BUSY, event_id="moved")
    reencrypt["resources"] += [{"ARN": IDLE, "accountId": ACCOUNT, "type": "AWS::KMS::Key"}]
    options = ReportOptions(until=AS_OF, unused_days=20, alarms=Path(__file__).with_name("none"))
    rows = collect_sync(RecordsSource([reencrypt]), options).last_used.select("keyArn", "eventId", "unused").rows()
    assert sorted(rows) == [(BUSY, "moved", False), (IDLE, "moved", False)]  # used 15 days before the as-of time


def test_last_used_as_of_until_is_the_last_use_before_it_of_several_in_one_minute() -> None:
    # Every key was used again after --until: the scratch state kept only those later uses and
    # took the last before --until from minute-level usage, naming that minute's start, no
    # eventId, and of its uses the operation last in the alphabet or any of its principals.
    until = NOV + timedelta(minutes=1)
    events = [record("Decrypt", NOV + timedelta(seconds=50), BUSY, event_id="busy-last"),
              record("Encrypt", NOV + timedelta(seconds=10), BUSY),
              record("Encrypt", NOV + timedelta(seconds=20), IDLE, user_arn("zoe")),
              record("Encrypt", NOV + timedelta(seconds=20), IDLE, user_arn("bob"), event_id="idle-last"),
              record("Encrypt", until, BUSY), record("Encrypt", until, IDLE, user_arn("zoe"))]
    options = ReportOptions(until=until, alarms=Path(__file__).with_name("none"))
    rows = collect_sync(RecordsSource(events), options).last_used.select(
        "keyArn", "lastUsedTime", "lastUsedOperation", "lastUsedPrincipalArn", "eventId").rows()
    assert sorted(rows) == [
        (BUSY, NOV + timedelta(seconds=50), "Decrypt", user_arn("alice"), "busy-last"),
        (IDLE, NOV + timedelta(seconds=20), "Encrypt", user_arn("bob"), "idle-last"),  # same second: the later record
    ]


def test_a_key_made_without_key_material_is_idle_from_its_first_import_as_the_unused_key_rule_counts() -> None:
    # It could not be used before its material came: the report counted it idle from its CreateKey,
    # the rule from its import, so a key imported 25 days ago and made 75 was unused here alone.
    recent, early, waiting, later = key_arn("recent"), key_arn("early"), key_arn("waiting"), key_arn("later")
    made = AS_OF - timedelta(days=75)
    events = [record("CreateKey", made, key) for key in (recent, early, waiting, later)]
    events += [record("ImportKeyMaterial", AS_OF - timedelta(days=25), recent),
               record("ImportKeyMaterial", AS_OF - timedelta(days=40), early),
               record("ImportKeyMaterial", AS_OF - timedelta(days=1), early),  # reimported: its first counts
               record("ImportKeyMaterial", AS_OF + timedelta(days=1), later),  # after the as-of time
               record("ImportKeyMaterial", AS_OF - timedelta(days=35), waiting, error="InvalidImportTokenException")]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    unused = dict(data.last_used.select("keyArn", "unused").iter_rows())
    # Still waiting for material as of then, it costs $1 a month and cannot be used: unused from its
    # CreateKey, as a disabled key is (the rule skips both).
    assert unused == {recent: False, early: True, waiting: True, later: True}


def test_a_key_made_in_the_as_of_minute_just_after_it_is_not_unused() -> None:
    # Minute-level usage lists it among the keys seen by then; counted idle from the input's start
    # rather than from its CreateKey, a key made seconds after the as-of time was one to delete.
    until = AS_OF + timedelta(seconds=30)
    events = [record("CreateKey", AS_OF - timedelta(days=60), BUSY), record("Encrypt", AS_OF, BUSY),
              record("CreateKey", until + timedelta(seconds=15), IDLE)]
    data = collect_sync(RecordsSource(events), ReportOptions(until=until, alarms=Path(__file__).with_name("none")))
    assert dict(data.last_used.select("keyArn", "unused").iter_rows()) == {BUSY: False, IDLE: False}


def test_keys_deleted_or_pending_deletion_are_not_marked_unused() -> None:
    """Unused keys are highlighted as keys to delete: a key already deleted or scheduled for
    deletion costs nothing more (the cost table stops billing it) and was flagged all the same,
    as the demo's report showed its deleted key beside the one idle key."""
    gone, pending, cancelled = key_arn("gone"), key_arn("pending"), key_arn("cancelled")
    events = [record("CreateKey", NOV - timedelta(days=60), key) for key in (gone, pending, cancelled, IDLE)]
    events += [record("ScheduleKeyDeletion", NOV - timedelta(days=40), key) for key in (gone, pending, cancelled)]
    events += [record("DeleteKey", NOV - timedelta(days=33), gone),
               record("CancelKeyDeletion", NOV - timedelta(days=35), cancelled)]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    unused = dict(data.last_used.select("keyArn", "unused").iter_rows())
    assert unused == {gone: False, pending: False, cancelled: True, IDLE: True}


def test_a_key_whose_deletion_was_scheduled_again_in_the_second_it_was_cancelled_is_not_marked_unused() -> None:
    """Scheduled, cancelled and scheduled again in one second, a key is pending deletion, as the cost
    table bills it (AWS cancels only a pending deletion and schedules only one not pending); taken in
    lifecycle order the cancel came last, and the key was highlighted as one to delete."""
    again, ever = key_arn("scheduled-again"), key_arn("pending-since-earlier")
    events = [record("CreateKey", NOV - timedelta(days=60), key) for key in (again, ever, IDLE)]
    events += [record("ScheduleKeyDeletion", NOV - timedelta(days=45), ever)]
    when = NOV - timedelta(days=40)
    events += [record(name, when, key) for key in (again, ever) for name in
               (("ScheduleKeyDeletion", "CancelKeyDeletion", "ScheduleKeyDeletion") if key == again
                else ("CancelKeyDeletion", "ScheduleKeyDeletion"))]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    assert dict(data.last_used.select("keyArn", "unused").iter_rows()) == {again: False, ever: False, IDLE: True}
    assert data.projection.get_column("projectedKeyCost").sum() == 1  # November bills IDLE alone, as the table says


def test_aws_managed_keys_are_not_marked_unused() -> None:
    """An AWS managed key costs nothing to keep and no one can delete it: as the unused-key rule
    skips it, the report does not highlight it as a key to delete."""
    managed = key_arn("aws-managed")
    made = record("CreateKey", NOV - timedelta(days=60), managed)
    made["responseElements"]["keyMetadata"]["KeyManager"] = "AWS"
    events = [made, record("CreateKey", NOV - timedelta(days=60), IDLE)]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    assert dict(data.last_used.select("keyArn", "unused").iter_rows()) == {managed: False, IDLE: True}

def test_a_key_named_by_an_aws_managed_alias_is_not_marked_unused() -> None:
    """alias/aws/… names AWS managed keys alone: one made before the input, used by that alias,
    then idle, was listed as a key to delete."""
    managed = key_arn("aws-ssm")
    events = [by_alias("Encrypt", NOV - timedelta(days=60), "alias/aws/ssm", managed),
              record("Encrypt", NOV - timedelta(days=60), IDLE)]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    assert dict(data.last_used.select("keyArn", "unused").iter_rows()) == {managed: False, IDLE: True}


def test_a_key_only_failed_calls_named_is_not_marked_unused() -> None:
    """A denied call may name any ARN, another account's key too (a denied cross-account attempt
    is logged in the caller's account alone): the report listed it as a key to delete, where the
    unused-key rule leaves keys never seen to exist out."""
    foreign = key_arn("theirs", account="999988887777")
    events = [record("Decrypt", NOV - timedelta(days=60), foreign, error="AccessDenied"),
              record("Encrypt", NOV - timedelta(days=60), IDLE), record("Encrypt", NOV, BUSY)]
    data = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("none")))
    assert dict(data.last_used.select("keyArn", "unused").iter_rows()) == {foreign: False, IDLE: True, BUSY: False}


def _unused_alarm(alarm_id: str, key: str, idle_since: datetime, raised: datetime) -> dict[str, Any]:
    return {"alarmId": alarm_id, "rule": "unused-key", "severity": "LOW", "keyArn": key, "principalArn": None,
            "accountId": ACCOUNT, "region": "us-east-1", "firstSeen": f"{raised:%Y-%m-%dT%H:%M:%SZ}",
            "lastSeen": f"{raised:%Y-%m-%dT%H:%M:%SZ}", "count": 1, "summary": f"{key} unused", "eventIds": [],
            "recommendation": "disable it", "details": {"idleSince": f"{idle_since:%Y-%m-%dT%H:%M:%SZ}"}}


def test_a_period_s_alarms_hold_the_unused_key_alarms_raised_before_it_and_still_in_force(tmp_path: Path) -> None:
    # An unused-key alarm is raised once per idle spell: its lastSeen is the day the key crossed
    # the limit. One raised in October on a key still idle in November was left out of a
    # November report, whose last_used table showed that key unused.
    idle, used, gone = key_arn("idle"), key_arn("used-again"), key_arn("deleted")
    made, last = NOV - timedelta(days=60), NOV - timedelta(days=50)
    events = [record("CreateKey", made, key) for key in (idle, used, gone)]
    events += [record("Encrypt", last, key) for key in (idle, used, gone)]
    events += [record("Decrypt", NOV - timedelta(days=5), used),
               record("ScheduleKeyDeletion", NOV - timedelta(days=9), gone)]
    raised = last + timedelta(days=30)
    alarms = tmp_path / "alarms.jsonl"
    alarms.write_text("".join(json.dumps(_unused_alarm(f"unused-{n}", key, last, raised)) + "\n"
                              for n, key in enumerate((idle, used, gone))))
    data = collect_sync(RecordsSource(events), ReportOptions(since=NOV, until=AS_OF, alarms=alarms))
    assert data.alarms.get_column("keyArn").to_list() == [idle]
    assert data.last_used.filter(pl.col("unused")).get_column("keyArn").to_list() == [idle]


def test_denied_calls_name_the_principal(data: Any) -> None:
    [row] = data.denied.to_dicts()
    assert (row["principalArn"], row["keyArn"], row["eventName"], row["count"]) == (user_arn("mallory"), BUSY,
                                                                                  "Decrypt", 3)


def test_projection_bills_keys_to_month_end_and_doubles_requests_at_mid_month(data: Any) -> None:
    [row] = data.projection.to_dicts()
    assert row["accountId"] == ACCOUNT and row["month"] == "2026-11"
    assert row["projectedKeyCost"] == 3  # three keys kept all of November: three key-months
    so_far = data.cost  # the period has no since: its request cost is all in November but OLD's two events
    november_requests = so_far.get_column("requests").sum() - 2
    assert row["projectedRequestCost"] == Decimal(november_requests) * Decimal("0.03") / 10_000 * 2
    assert row["projectedCost"] == row["projectedKeyCost"] + row["projectedRequestCost"]


def _projection(events: list[dict[str, Any]], until: datetime) -> dict[str, Any]:
    options = ReportOptions(until=until, alarms=Path(__file__).with_name("none"))
    [row] = collect_sync(RecordsSource(events), options).projection.to_dicts()
    return row


def test_a_report_up_to_a_month_end_projects_that_month_not_the_next() -> None:
    # --until is exclusive: as of Nov 1 00:00 the month in question is October, now whole.
    october = datetime(2026, 10, 1, tzinfo=UTC)
    events = [record("CreateKey", october, BUSY)]
    events += [record("Encrypt", october + timedelta(days=d), BUSY) for d in range(31)]
    row = _projection(events, NOV)
    assert row["month"] == "2026-10"
    assert row["projectedKeyCost"] == 1  # one key kept all of October
    assert row["projectedRequestCost"] == Decimal("0.000096")  # 32 requests (CreateKey too) x $0.03/10k
    assert row["monthToDateCost"] == row["projectedCost"] == Decimal("1.000096")


def test_a_replica_is_billed_once_though_its_creation_has_two_records() -> None:
    # A ReplicateKey logs a ReplicateKey in the primary's Region naming the replica in its
    # responseElements, and a CreateKey in the replica's (docs/multi-region-keys.md): AWS bills the
    # replica as one key of its own, from its creation, not two key-months for one key.
    primary = key_arn("mrk-1234")
    replica = primary.replace("us-east-1", "us-west-2")
    replicated = NOV - timedelta(days=20, hours=12)  # Oct 11 12:00: 492 of October's 744 hours left
    replicate = record("ReplicateKey", replicated, primary)
    replicate["responseElements"] = {"replicaKeyMetadata": {"arn": replica, "keySpec": "SYMMETRIC_DEFAULT"}}
    created = record("CreateKey", replicated + timedelta(seconds=1), replica)
    created["awsRegion"], created["requestID"] = "us-west-2", replicate["requestID"]
    created["userIdentity"]["invokedBy"] = "kms.amazonaws.com"
    events = [record("CreateKey", NOV - timedelta(days=31), primary), replicate, created]
    data = collect_sync(RecordsSource(events), ReportOptions(until=NOV, alarms=Path(__file__).with_name("none")))
    months = dict(data.cost.select("keyArn", "keyMonths").iter_rows())
    assert months == {primary: Decimal(1), replica: Decimal("0.6612903226")}  # 492 / 744
    assert data.projection["projectedKeyCost"].to_list() == [Decimal("1.6612903226")]


def test_the_projection_does_not_foresee_lifecycle_events_after_the_as_of_time() -> None:
    # Keys "as they stand" at Nov 16: the deletion scheduled on Nov 21 is not known yet, so the
    # key is billed to the month's end (720 of November's 720 hours), not to Nov 21.
    events = [record("CreateKey", NOV, BUSY), record("ScheduleKeyDeletion", NOV + timedelta(days=20), BUSY)]
    assert _projection(events, AS_OF)["projectedKeyCost"] == 1


def test_a_key_made_later_in_the_as_of_hour_is_projected_as_the_cost_so_far_bills_it() -> None:
    # As of 00:30, a key made at 00:35: the hour 00:00 starts before the as-of time and is billed
    # whole (docs/metrics.md), so the month so far holds it; the projection must hold the key too.
    as_of = AS_OF + timedelta(minutes=30)
    row = _projection([record("CreateKey", AS_OF + timedelta(minutes=35), BUSY)], as_of)
    assert row["monthToDateCost"] == Decimal("0.0013888889")  # 1 of November's 720 hours
    assert row["projectedKeyCost"] == Decimal("0.5")  # Nov 16 00:00 to Dec 1: 360 of 720 hours


def test_window_and_month_helpers() -> None:
    assert choose_window(NOV, NOV + timedelta(hours=6)) == "minute"
    assert choose_window(NOV, NOV + timedelta(days=14)) == "hour"
    assert choose_window(NOV, NOV + timedelta(days=15)) == "day"
    assert month_bounds(datetime(2026, 12, 31, 23, tzinfo=UTC)) == (datetime(2026, 12, 1, tzinfo=UTC),
                                                                   datetime(2027, 1, 1, tzinfo=UTC))
    assert month_bounds(datetime(9999, 12, 31, tzinfo=UTC)) == (datetime(9999, 12, 1, tzinfo=UTC),
                                                               datetime.max.replace(tzinfo=UTC))


def test_the_projection_takes_the_free_tier_off_the_month_s_projected_requests() -> None:
    # Half of November gone, 150 Encrypts with a free tier of 100: the month's pace is 300, so
    # 200 are billed at $0.03 per 10,000 = $0.0006. Scaling the cost so far ($0.00015 for the 50
    # past the free tier) gave $0.0003; with no request past it yet, $0.
    events = [record("Encrypt", NOV + timedelta(hours=h), BUSY) for h in range(150)]
    options = ReportOptions(until=AS_OF, prices=PriceTable(free_tier_requests=100),
                            alarms=Path(__file__).with_name("none"))
    [row] = collect_sync(RecordsSource(events), options).projection.to_dicts()
    assert row["projectedRequestCost"] == Decimal("0.0006")
    assert row["monthToDateCost"] == Decimal("0.00015")  # 50 billed so far, no key seen created


def test_a_report_as_of_the_last_representable_month_projects_it() -> None:
    # `keytrail report --until 9999-12-31T23:59:59` stopped with "date value out of range".
    row = _projection([record("CreateKey", NOV, BUSY)], datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))
    assert row["month"] == "9999-12" and row["projectedKeyCost"] == 1


def test_a_report_as_of_the_calendar_s_first_days_marks_unused_keys() -> None:
    # `keytrail report` over a record dated 0001-01-01 stopped with "date value out of range":
    # the unused-key limit, `--unused-days` before the as-of time, lies before year 1.
    first = datetime(1, 1, 1, tzinfo=UTC)
    options = ReportOptions(until=first + timedelta(days=1), alarms=Path(__file__).with_name("none"))
    made = {**record("CreateKey", first, BUSY), "eventTime": "0001-01-01T00:00:00Z"}  # strftime writes "1-01-01"
    data = collect_sync(RecordsSource([made]), options)
    assert data.last_used["unused"].to_list() == [False]  # made a day ago: no key to delete yet


def test_html_is_self_contained_and_highlights_unused_keys(data: Any) -> None:
    page = render_html(data)
    assert not re.search(r"<script|<link|<img|@import|url\(", page)
    assert set(re.findall(r"https?://[^\"' ]+", page)) == {"http://www.w3.org/2000/svg"}
    unused_rows = re.findall(r'<tr class="unused">(.*?)</tr>', page)
    assert len(unused_rows) == 1 and "key/old" in unused_rows[0]
    assert "user/mallory" in page and page.count("<svg") >= 3


def _keyless(name: str, when: datetime) -> dict[str, Any]:
    """A call that names no key (ListKeys, GenerateRandom): no keyId, no resources."""
    event = record(name, when, BUSY)
    event["requestParameters"], event["recipientAccountId"] = None, ACCOUNT
    del event["resources"]
    return event


def test_html_names_the_rows_of_calls_without_a_key_rather_than_leave_the_key_empty() -> None:
    # A FinOps reader found a cost row with an empty key, and nothing saying what it was.
    events = [record("CreateKey", NOV, BUSY), record("Encrypt", NOV, BUSY), _keyless("ListKeys", NOV)]
    page = render_html(collect_sync(RecordsSource(events), ReportOptions(until=AS_OF)))
    for table in ("cost", "usage"):
        body = page.split(f'id="{table}"')[1].split("<tbody>")[1].split("</tbody>")[0]
        keys = {re.findall(r"<td>(.*?)</td>", row)[0] for row in re.findall(r"<tr>(.*?)</tr>", body)}
        assert keys == {"(no key)", f"<code>{BUSY}</code>"}, table
    assert "(no key): the account's calls that name no key (ListKeys" in page


def test_html_says_nothing_of_keyless_calls_where_there_are_none(data: Any) -> None:
    assert "(no key)" not in render_html(data)


def test_html_projection_columns_say_what_each_figure_covers(data: Any) -> None:
    headers = re.findall(r"<th>(.*?)</th>", render_html(data).split('id="projection"')[1].split("</tr>")[0])
    assert headers == ["Account", "Month", "Month so far", "Key storage, whole month",
                       "Requests, whole month (projected)", "Projected month total"]


def test_write_report_html_and_parquet(tmp_path: Path, data: Any) -> None:
    html = write_report(data, tmp_path / "r.html", ReportFormat.html)
    assert html.read_text().startswith("<!DOCTYPE html>")
    table = pl.read_parquet(write_report(data, tmp_path / "r.parquet", ReportFormat.parquet, "cost"))
    assert set(table.get_column("table")) == {"cost"}
    assert table.get_column("totalCost").sum() == data.cost.get_column("totalCost").sum()


def test_an_empty_input_gives_an_empty_report_in_every_format(tmp_path: Path) -> None:
    empty = collect_sync(RecordsSource([]), ReportOptions())
    assert (empty.events, empty.as_of) == (0, None)
    assert all(table.height == 0 for table in empty.tables().values())
    assert "No KMS requests in this period." in render_html(empty)
    for form in ReportFormat:
        assert write_report(empty, tmp_path / f"empty.{form.value}", form).is_file()


@pytest.mark.parametrize(("amount", "shown"), [
    (Decimal("0.000018"), "$0.000018"),  # six requests at $0.03 per 10,000: not free
    (Decimal("0.0000000001"), "$0.0000000001"),
    (Decimal("0.0003"), "$0.0003"),
    (Decimal("0"), "$0.0000"),
    (Decimal("0.98"), "$0.9800"),
    (Decimal("1234.5"), "$1,234.50"),
])
def test_html_money_never_shows_a_cost_as_zero(amount: Decimal, shown: str) -> None:
    assert money(amount) == shown


def test_json_lines_hold_every_column_of_their_table_even_when_empty(data: Any, tmp_path: Path) -> None:
    # A last_used table whose eventIds were all null lost that column when read back with polars.
    path = write_report(data, tmp_path / "r.json", ReportFormat.json)
    idle = next(row for row in map(json.loads, path.read_text().splitlines())
                if row["table"] == "last_used" and row["keyArn"] == IDLE)
    assert set(idle) == {"table", "keyArn", "lastUsedTime", "lastUsedOperation", "lastUsedPrincipalArn", "eventId",
                         "unused", "aliases"}
    assert idle["lastUsedTime"] is None and idle["unused"] is False and idle["aliases"] is None
    read = pl.read_ndjson(path, infer_schema_length=None).filter(pl.col("table") == "last_used")
    assert read.filter(pl.col("keyArn") == IDLE)["eventId"].item() is None


def test_html_says_when_keys_in_the_cost_table_were_never_seen_created(data: Any) -> None:
    assert data.keys_not_created == 0 and "not created in the events" not in render_html(data)
    events = [record("Encrypt", NOV + timedelta(hours=1), BUSY)]  # no CreateKey in the input
    uncreated = collect_sync(RecordsSource(events), ReportOptions(until=AS_OF, alarms=Path(__file__).with_name("x")))
    assert uncreated.keys_not_created == 1
    assert "1 key in these figures was not created in the events" in render_html(uncreated)


def _card(page: str, figure: str) -> str:
    found = re.search(rf'data-figure="{figure}"><b>([^<]*)</b>', page)
    assert found, f"no {figure} card"
    return found.group(1)


def test_html_events_card_counts_the_events_of_the_period_not_of_the_input() -> None:
    # All of the input is before the period: its 107 events are none of the period's.
    alarms = Path(__file__).with_name("no-such-alarms.jsonl")
    later = collect_sync(RecordsSource(_stream()), ReportOptions(since=AS_OF, until=AS_OF + timedelta(days=1),
                                                                 alarms=alarms))
    page = render_html(later)
    assert (_card(page, "events"), _card(page, "requests")) == ("0", "0")


def test_html_events_card_counts_every_event_of_the_period(data: Any) -> None:
    assert _card(render_html(data), "events") == f"{data.events:,}"


def test_html_projection_card_names_the_month_it_projects() -> None:
    # A report as of Dec 1 00:00 projects November (then whole); its card said "projected this
    # month", read in December (or later) as December's.
    alarms = Path(__file__).with_name("no-such-alarms.jsonl")
    page = render_html(collect_sync(RecordsSource(_stream()), ReportOptions(until=datetime(2026, 12, 1, tzinfo=UTC),
                                                                            alarms=alarms)))
    assert _card(page, "projected 2026-11") == "$3.00"  # its three keys kept the whole month
    assert 'data-figure="projected this month"' not in page


def test_html_charts_say_what_they_draw_kms_own_events_and_calls_naming_no_key() -> None:
    # The charts draw the usage rows, KMS's own RotateKey among them: titled "Requests per hour",
    # they showed 3 requests beside a requests figure of 2 (and "AWS Internal" as a caller), and
    # called the calls naming no key "(none)" where the cost chart and the tables say "(no key)".
    rotation = record("RotateKey", NOV + timedelta(hours=2), BUSY)
    rotation.update(eventType="AwsServiceEvent", userIdentity={"accountId": ACCOUNT, "invokedBy": "AWS Internal"})
    random = record("GenerateRandom", NOV + timedelta(hours=1), BUSY)
    random["resources"] = []
    events = [record("Encrypt", NOV, BUSY), random, rotation]
    options = ReportOptions(until=NOV + timedelta(hours=3), alarms=Path(__file__).with_name("no-such-alarms.jsonl"))
    page = render_html(collect_sync(RecordsSource(events), options))
    assert (_card(page, "events"), _card(page, "requests")) == ("3", "2")
    titles = set(re.findall(r"(\w+) per minute by (key|principal)", page))
    assert titles == {("Events", "key"), ("Events", "principal")}
    charts = page.split("<h2>Cost</h2>")[0]
    assert ">(no key)</text>" in charts and ">(none)</text>" not in charts


def test_html_principals_card_counts_the_callers_not_kms_itself() -> None:
    # KMS's own RotateKey is by "AWS Internal", in the usage rows but no one's request: the card
    # said 2 principals beside 2 requests that one user made.
    rotation = record("RotateKey", NOV + timedelta(hours=2), BUSY)
    rotation.update(eventType="AwsServiceEvent", userIdentity={"accountId": ACCOUNT, "invokedBy": "AWS Internal"})
    events = [record("CreateKey", NOV, BUSY), record("Encrypt", NOV + timedelta(hours=1), BUSY), rotation]
    options = ReportOptions(until=NOV + timedelta(hours=3), alarms=Path(__file__).with_name("no-such-alarms.jsonl"))
    page = render_html(collect_sync(RecordsSource(events), options))
    assert (_card(page, "principals"), _card(page, "requests")) == ("1", "2")


def test_html_principals_card_leaves_out_the_service_that_made_an_aws_managed_key() -> None:
    # S3 makes the account's aws/s3 key on first use: that CreateKey, by s3.amazonaws.com, is no
    # request (AWS bills nothing for making an AWS managed key), and the requests figure leaves it
    # out; the principals figure counted its caller all the same: 2 principals beside 1 request.
    managed = key_arn("aws-s3")
    made = record("CreateKey", NOV, managed)
    made["responseElements"]["keyMetadata"]["KeyManager"] = "AWS"
    made["userIdentity"] = {"type": "AWSService", "invokedBy": "s3.amazonaws.com"}
    events = [made, record("Decrypt", NOV + timedelta(seconds=10), managed)]
    options = ReportOptions(until=NOV + timedelta(hours=1), alarms=Path(__file__).with_name("no-such-alarms.jsonl"))
    data = collect_sync(RecordsSource(events), options)
    assert set(data.usage.get_column("principalArn").cast(pl.String)) == {"s3.amazonaws.com", user_arn("alice")}
    page = render_html(data)
    assert (_card(page, "principals"), _card(page, "requests")) == ("1", "1")


def _synthetic(count: int) -> list[dict[str, Any]]:
    """A busy stream: denied calls, late events, duplicates and lifecycle events among the calls."""
    settings = SyntheticSettings(keys=40, principals=15, accounts=3, start=NOV, seconds_per_event=30,
                                 denied_share=0.1, lifecycle_share=0.01)
    return list(generate_events(count, settings, seed=11))


def _same_tables(one: ReportData, other: ReportData) -> None:
    assert (one.events, one.first_event, one.last_event, one.window) == (
        other.events, other.first_event, other.last_event, other.window)
    for name, table in one.tables().items():
        assert table.equals(other.tables()[name]), name


def test_a_report_is_the_same_whatever_the_batch_size() -> None:
    # Each batch's denied calls are tallied apart and summed at the end: batch boundaries must
    # not change a count, a first or last time, or a column's type.
    events = _synthetic(1_500)
    options = ReportOptions(until=NOV + timedelta(days=1), alarms=Path(__file__).with_name("none"))
    whole = collect_sync(RecordsSource(events), options)
    assert whole.denied.height > 10 and whole.events > 1_000
    _same_tables(whole, collect_sync(RecordsSource(events, max_records=13), options))


def test_an_event_log_report_consumed_in_a_child_process_has_the_same_tables(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append([encode(event) for event in _synthetic(1_500)])
    log.sync()
    log.close()
    options = ReportOptions(since=NOV + timedelta(hours=2), until=NOV + timedelta(hours=10),
                            alarms=Path(__file__).with_name("none"))
    in_process = collect_sync(SegmentLogSource(tmp_path), options)
    assert in_process.denied.height > 10
    _same_tables(collect_event_log(tmp_path, options, progress=False), in_process)


def slow_consume(*args: object) -> None:
    """In the report's child: a consume that takes a minute (an event log of years)."""
    import time

    time.sleep(60)


def test_a_report_stopped_by_sigterm_while_its_child_consumes_exits_at_once(tmp_path: Path) -> None:
    """SIGTERM reaches the report, not its child: the report waited for the child to read the whole
    event log (minutes over a year of events) before it exited 143."""
    import subprocess
    import sys

    log = SegmentLog(tmp_path / "node" / "audit" / "log", writable=True)
    log.append([encode(event) for event in _synthetic(10)])
    log.sync()
    log.close()
    stopped_while_consuming = f"""
import os, signal, sys, threading
from keytrail.reports import collect
from tests.unit.reports.test_collect import slow_consume
collect._consume_event_log = slow_consume
threading.Timer(3, os.kill, (os.getpid(), signal.SIGTERM)).start()  # `kill <pid>` of the report
from keytrail.cli import main
sys.argv = ["keytrail", "report", "--data-dir", {str(tmp_path / "node")!r}, "--out", {str(tmp_path / "r.csv")!r}]
main()
"""
    # The child consumes for 60 s: a report that waited for it would not be done by the timeout.
    result = subprocess.run([sys.executable, "-c", stopped_while_consuming], capture_output=True, text=True,
                            timeout=40)
    assert result.returncode == 143, result.stderr
    assert result.stderr == "keytrail report: stopped (SIGTERM): no report written\n"
    assert not (tmp_path / "r.csv").exists()
