"""A report's as-of time without --until is where `keytrail cost` ends key storage: one event dated
years ahead (a skewed clock, a bad imported record) no longer moves it, nor the report's cost, month
projection and unused-key marks, to that date; a data dir's dev clock that went ahead is its now."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from keytrail.clock import DEV_CLOCK_FILE, utc_now
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.sources import RecordsSource
from keytrail.reports.collect import ReportData, ReportOptions, collect_sync
from keytrail.reports.figures import cost_projection
from tests.unit.reports.records import key_arn, record

KEY, QUIET = key_arn("used"), key_arn("quiet")
DAY = timedelta(days=1)


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _true_events(end: datetime) -> list[dict[str, Any]]:
    """Two keys made 40 days before `end`, one used daily up to an hour before it."""
    made = end - 40 * DAY
    return [record("CreateKey", made, KEY), record("CreateKey", made, QUIET),
            *(record("Encrypt", made + n * DAY, KEY) for n in range(1, 40)),
            record("Encrypt", end - timedelta(hours=1), KEY)]


def _report(records: list[dict[str, Any]], **options: Any) -> ReportData:
    return collect_sync(RecordsSource(records), ReportOptions(**options))


def _total(frame: Any, column: str) -> Decimal:
    return sum(frame[column], Decimal())


def test_one_event_dated_2099_leaves_the_report_as_of_the_true_end(tmp_path: Path) -> None:
    now = _hour(utc_now())
    true = _true_events(now)
    skewed = record("Decrypt", datetime(2099, 1, 1, tzinfo=UTC), KEY)
    truth, report = _report(true), _report([*true, skewed])
    # Usage is kept by the minute: the end is the minute after the last event before now (the
    # storage hours billed are those up to the event itself).
    assert truth.as_of == now - timedelta(hours=1) + timedelta(seconds=1)
    assert report.as_of == now - timedelta(hours=1) + timedelta(minutes=1)
    assert report.open_end is not None and report.open_end.late == 1
    # Storage billed as without the bad event; its one request counted, as `keytrail cost` does.
    assert _total(report.cost, "keyCost") == _total(truth.cost, "keyCost")
    assert _total(report.cost, "requests") == _total(truth.cost, "requests") + 1
    assert report.projection["month"].to_list() == truth.projection["month"].to_list()
    assert report.projection["projectedKeyCost"].to_list() == truth.projection["projectedKeyCost"].to_list()
    # The quiet key has been unused for 40 days by now; as of 2099, the used key would have been too.
    unused = dict(zip(report.last_used["keyArn"], report.last_used["unused"], strict=True))
    assert unused == {KEY: False, QUIET: True}
    # Its last use is before the as-of time, as with --until at it: the 2099 Decrypt showed there.
    assert report.last_used["lastUsedTime"].to_list() == truth.last_used["lastUsedTime"].to_list()
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource([*true, skewed])).run())
    assert report.cost.drop("aliases").sort("keyArn").equals(MetricsStore(tmp_path).cost(PriceTable()).sort("keyArn"))


def test_an_event_dated_ahead_later_in_the_as_of_hour_is_not_in_the_projection(tmp_path: Path) -> None:
    # The as-of hour is billed whole, from its events: not from one dated after now (a clock 20
    # minutes fast), in the month so far or in the projection.
    now = datetime(2026, 10, 5, 10, 30, tzinfo=UTC)
    true = [record("CreateKey", now - timedelta(minutes=20), KEY)]
    figures = []
    for name, events in (("true", true), ("skewed", [*true, record("CreateKey", now + timedelta(minutes=20), QUIET)])):
        asyncio.run(Runner(state_dir(tmp_path / name), RecordsSource(events)).run())
        store = MetricsStore(tmp_path / name)
        end = store.open_end(now)
        figures.append(cost_projection(store, PriceTable(), end.storage, end).select(
            "accountId", "monthToDateCost", "projectedKeyCost"))
    assert figures[1]["projectedKeyCost"].to_list() == [Decimal("0.8575268817")]  # Oct 5 10:00 on: 638 / 744
    assert figures[1]["monthToDateCost"].to_list() == [Decimal("0.0013470860")]  # an hour, and CreateKey's
    assert figures[0].equals(figures[1])


def test_a_data_dir_s_dev_clock_ahead_is_the_report_s_now(tmp_path: Path) -> None:
    """The demo's report: its node moved its clock 91 days ahead on purpose, and its events up to
    then are not dated ahead of the data dir's now; CloudTrail files (no data dir) read the wall
    clock, where the same events are."""
    (tmp_path / DEV_CLOCK_FILE).write_text(json.dumps({"aheadSeconds": 91 * 86400}))
    end = _hour(utc_now()) + 91 * DAY
    events = _true_events(end)
    node = _report(events, data_dir=tmp_path)
    assert node.as_of == end - timedelta(hours=1) + timedelta(seconds=1)
    assert node.open_end is not None and node.open_end.late == 0
    files = _report(events)
    assert files.open_end is not None and files.open_end.late > 0
    assert files.as_of is not None and node.as_of is not None and files.as_of < node.as_of


def test_until_is_the_as_of_time_whatever_is_dated_ahead() -> None:
    until = _hour(utc_now()) - 5 * DAY
    report = _report([*_true_events(until), record("Decrypt", datetime(2099, 1, 1, tzinfo=UTC), KEY)], until=until)
    assert report.as_of == until and report.open_end is None


def test_keytrail_report_says_in_one_line_that_events_are_dated_after_now(tmp_path: Path) -> None:
    from keytrail.cli.report import register

    trail = tmp_path / "trail.json"
    skewed = record("Decrypt", datetime(2099, 1, 1, tzinfo=UTC), KEY)
    trail.write_text(json.dumps({"Records": [*_true_events(_hour(utc_now())), skewed]}))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["--cloudtrail", str(trail), "--out", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "1 event is dated after now" in notes[0] and "2099-01-01T00:00:00Z" in notes[0]


def test_the_html_report_says_it_too() -> None:
    from keytrail.reports.html import render_html

    skewed = record("Decrypt", datetime(2099, 1, 1, tzinfo=UTC), KEY)
    page = render_html(_report([*_true_events(_hour(utc_now())), skewed]))
    assert "1 event is dated after now" in page and "2099-01-01T00:00:00Z" in page
    assert "dated after now" not in render_html(_report(_true_events(_hour(utc_now()))))


def _chart_points(page: str) -> int:
    return sum(len(points.split()) for points in re.findall(r'<polyline [^>]*points="([^"]*)"', page))


def test_the_html_charts_end_at_the_as_of_time_however_far_ahead_an_event_is_dated() -> None:
    """An hour of logs is charted per minute; one record dated ahead zero-filled every chart line
    per minute up to it: a week ahead, 10,000 points a line (a 240 KB page for an hour of calls),
    2099, 38 million, and the report ran out of memory. Its call is in the tables, not drawn."""
    from keytrail.reports.html import render_html

    now = _hour(utc_now())
    hour = [record("CreateKey", now - timedelta(hours=2), KEY),
            *(record("Encrypt", now - timedelta(minutes=m), KEY) for m in range(5, 60, 5))]
    ahead = record("Decrypt", now + 7 * DAY, KEY)
    report = _report([*hour, ahead])
    assert report.window == "minute" and report.usage["count"].sum() == len(hour) + 1
    page = render_html(report)
    assert _chart_points(page) <= 2 * (2 * 60 + 1)  # a line per key and one per principal, at most 2 h of minutes
    assert "1 call dated after the as-of time" in page
    assert _chart_points(page) == _chart_points(render_html(_report(hour)))
