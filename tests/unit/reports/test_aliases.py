"""Each key's aliases beside its ARN in every report table, learned from the audit records."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from keytrail.audit.schema import encode
from keytrail.pipeline.runner import Batch
from keytrail.pipeline.segment_source import SegmentLogSource
from keytrail.pipeline.sources import RecordsSource
from keytrail.reports.alias_evidence import alias_change, decode
from keytrail.reports.aliases import holdings, key_aliases
from keytrail.reports.collect import ReportData, ReportOptions, collect_event_log, collect_sync
from keytrail.reports.html import key_label, render_html
from keytrail.reports.output import ReportFormat, write_report
from keytrail.transport.segment_log import SegmentLog
from tests.unit.reports.records import alias_arn, alias_record, by_alias, key_arn, record, user_arn

NOV = datetime(2026, 11, 1, tzinfo=UTC)
SINCE, UNTIL = NOV + timedelta(days=10), NOV + timedelta(days=20)
OLD, NEW, GONE, MADE_BEFORE, DELETED, OTHER = (key_arn(n) for n in ("old", "new", "gone", "before", "deleted", "other"))
NO_ALARMS = Path(__file__).with_name("no-alarms-here.jsonl")


def _history() -> list[dict[str, Any]]:
    day = timedelta(days=1)
    return [
        *(record("CreateKey", NOV, key) for key in (OLD, NEW, GONE, DELETED)),
        alias_record("CreateAlias", NOV + day, "alias/orders", [OLD], OLD),
        alias_record("CreateAlias", NOV + day, "alias/gone", [GONE], GONE),
        alias_record("DeleteAlias", NOV + 2 * day, "alias/gone", [GONE]),  # before the period
        alias_record("CreateAlias", NOV + 2 * day, "alias/refused", [NEW], NEW, error="AccessDenied"),
        by_alias("Encrypt", NOV + 11 * day, "alias/orders", OLD),
        alias_record("UpdateAlias", NOV + 12 * day, "alias/orders", [OLD, NEW], NEW),  # in the period
        by_alias("Encrypt", NOV + 13 * day, "alias/orders", NEW),
        # Made before the records begin: only the calls that name it by alias tell it.
        by_alias("Decrypt", NOV + 14 * day, alias_arn("alias/billing"), MADE_BEFORE),
        alias_record("CreateAlias", NOV + 3 * day, "alias/deleted", [DELETED], DELETED),
        record("DeleteKey", NOV + 9 * day, DELETED),  # AWS deletes the key's aliases with it
        alias_record("CreateAlias", NOV + 25 * day, "alias/later", [OTHER], OTHER),  # after the period
        record("Encrypt", NOV + 15 * day, OTHER),
    ]


def _aliases(frame: pl.DataFrame) -> dict[str, str | None]:
    return dict(frame.select(pl.col("keyArn").cast(pl.String), pl.col("aliases").cast(pl.String)).unique().iter_rows())


@pytest.fixture(scope="module")
def data() -> ReportData:
    return collect_sync(RecordsSource(_history()), ReportOptions(since=SINCE, until=UNTIL, alarms=NO_ALARMS))


def test_each_key_shows_every_alias_that_named_it_in_the_period(data: ReportData) -> None:
    assert data.aliases == {OLD: "alias/orders", NEW: "alias/orders", MADE_BEFORE: "alias/billing"}
    named = _aliases(data.last_used)
    # alias/gone left its key, and DELETED was deleted, before the period; alias/later came after it;
    # the refused CreateAlias named nothing.
    assert named == {OLD: "alias/orders", NEW: "alias/orders", MADE_BEFORE: "alias/billing", GONE: None,
                     DELETED: None, OTHER: None}


def test_every_table_that_names_keys_has_their_aliases_after_its_own_columns(data: ReportData) -> None:
    for table in ("usage", "usage_over_time", "cost", "last_used"):
        frame = data.tables()[table]
        assert frame.columns[-1] == "aliases", table
        assert _aliases(frame)[NEW] == "alias/orders", table
    assert data.denied.columns[-1] == data.alarms.columns[-1] == "aliases"
    assert "aliases" not in data.projection.columns  # per account: it names no key


def test_the_whole_history_without_a_period_names_every_alias_a_key_ever_had() -> None:
    data = collect_sync(RecordsSource(_history()), ReportOptions(alarms=NO_ALARMS))
    assert data.aliases == {OLD: "alias/orders", NEW: "alias/orders", MADE_BEFORE: "alias/billing",
                            GONE: "alias/gone", DELETED: "alias/deleted", OTHER: "alias/later"}


def test_a_key_with_several_aliases_lists_them_sorted_and_joined_by_spaces() -> None:
    events = [alias_record("CreateAlias", NOV, name, [OLD], OLD) for name in ("alias/z-last", "alias/a/first")]
    assert collect_sync(RecordsSource(events), ReportOptions(alarms=NO_ALARMS)).aliases == {
        OLD: "alias/a/first alias/z-last"}


def test_an_event_log_report_learns_the_same_aliases_as_one_of_the_records(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append([encode(event) for event in _history()])
    log.sync()
    log.close()
    options = ReportOptions(since=SINCE, until=UNTIL, alarms=NO_ALARMS)
    assert collect_sync(SegmentLogSource(tmp_path), options).aliases == collect_event_log(tmp_path, options).aliases \
        == {OLD: "alias/orders", NEW: "alias/orders", MADE_BEFORE: "alias/billing"}


@pytest.mark.parametrize("avro", [False, True])
def test_decode_gives_the_pipeline_s_own_frame(avro: bool) -> None:
    events = _history()
    batch = (Batch("p", range(len(events)), values=[encode(e) for e in events]) if avro
             else Batch("p", range(len(events)), records=events))
    frame, evidence = decode(batch)
    assert frame.equals(batch.frame_from(0))
    assert set(evidence["kind"]) == {"CreateAlias", "UpdateAlias", "DeleteAlias", "DeleteKey", "use"}


def test_a_busy_alias_keeps_only_its_first_and_last_use_per_key() -> None:
    events = [by_alias("Encrypt", NOV + timedelta(minutes=m), "alias/orders", OLD) for m in range(500)]
    _, evidence = decode(Batch("p", range(len(events)), records=events))
    assert evidence.sort("eventTime")["eventTime"].to_list() == [NOV, NOV + timedelta(minutes=499)]


def test_update_alias_goes_to_the_key_its_target_key_id_names_whatever_the_order_listed() -> None:
    assert alias_change("UpdateAlias", [NEW, OLD], "old") == (OLD, NEW)
    assert alias_change("UpdateAlias", [OLD, NEW], None) == (NEW, OLD)  # else the last listed
    assert alias_change("CreateAlias", [OLD], "old") == (OLD, None)
    assert alias_change("DeleteAlias", [OLD], None) == (None, OLD)


def test_an_alias_moved_away_from_a_key_used_before_the_records_counts_from_their_start() -> None:
    # The UpdateAlias record names the key the alias leaves: it held it since before the records.
    events = [alias_record("UpdateAlias", NOV + timedelta(days=5), "alias/orders", [OLD, NEW], NEW)]
    found = holdings(decode(Batch("p", range(1), records=events))[1])
    assert sorted((h.key_arn, h.start, h.end) for h in found) == [
        (NEW, NOV + timedelta(days=5), None), (OLD, None, NOV + timedelta(days=5))]
    assert key_aliases(found, NOV + timedelta(days=6), None) == {NEW: "alias/orders"}
    assert key_aliases(found, None, NOV + timedelta(days=5)) == {OLD: "alias/orders"}


def test_same_named_aliases_of_two_accounts_are_two_aliases() -> None:
    theirs = key_arn("theirs", "444455556666")
    events = [by_alias("Encrypt", NOV, "alias/orders", OLD), by_alias("Encrypt", NOV, "alias/orders", theirs)]
    found = holdings(decode(Batch("p", range(2), records=events))[1])
    assert sorted((h.key_arn, h.end) for h in found) == [(OLD, None), (theirs, None)]


def test_tabular_reports_put_aliases_last_and_keep_every_other_column_in_place(data: ReportData,
                                                                              tmp_path: Path) -> None:
    csv_path = write_report(data, tmp_path / "r.csv", ReportFormat.csv)
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[-1] == "aliases" and header[:7] == ["table", "keyArn", "eventName", "principalArn", "accountId",
                                                      "count", "errorCount"]
    cost = pl.read_csv(csv_path, infer_schema_length=None).filter(pl.col("table") == "cost")
    assert dict(cost.select("keyArn", "aliases").iter_rows())[NEW] == "alias/orders"
    lines = write_report(data, tmp_path / "r.json", ReportFormat.json).read_text().splitlines()
    new = next(row for row in map(json.loads, lines) if row["table"] == "last_used" and row["keyArn"] == NEW)
    assert new["aliases"] == "alias/orders"
    parquet = pl.read_parquet(write_report(data, tmp_path / "r.parquet", ReportFormat.parquet))
    assert parquet.columns[-1] == "aliases"
    assert parquet.filter(pl.col("table") == "usage_over_time", pl.col("keyArn") == OLD)["aliases"].unique().to_list() \
        == ["alias/orders"]


def test_the_html_page_shows_aliases_beside_key_arns_and_names_chart_lines_by_alias(data: ReportData) -> None:
    page = render_html(data)
    assert f'<code>{NEW}</code><div class="aliases">alias/orders</div>' in page
    assert "alias/billing · key/before" in page  # the chart's line of the key named by alias
    assert page.count('<div class="aliases">') >= 5  # usage, cost and last-used rows of the three keys


def test_a_chart_names_a_key_by_its_first_alias_then_its_short_arn() -> None:
    long = "alias/" + "x" * 40
    assert key_label(OLD, {}) == "key/old"
    assert key_label(OLD, {OLD: "alias/a alias/b alias/c"}) == "alias/a +2 · key/old"
    assert key_label(OLD, {OLD: long}) == long[:23] + "… · key/old"  # a bar's label has 220 pixels


def test_a_report_of_keys_never_named_by_alias_has_an_empty_aliases_column() -> None:
    data = collect_sync(RecordsSource([record("Encrypt", NOV, OLD, user_arn("bob"))]),
                        ReportOptions(alarms=NO_ALARMS))
    assert data.aliases == {} and data.usage["aliases"].null_count() == data.usage.height == 1
