"""alarms.jsonl is read as the latest state of each alarm."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from keytrail.reports.alarms import alarms_frame, read_alarm_lines


def _alarm(alarm_id: str, rule: str, severity: str, first: str, last: str, count: int = 1) -> dict[str, object]:
    return {"alarmId": alarm_id, "rule": rule, "severity": severity, "keyArn": "arn:aws:kms:us-east-1:1:key/k",
            "principalArn": "arn:aws:iam::1:user/u", "accountId": "1", "region": "us-east-1",
            "firstSeen": first, "lastSeen": last, "count": count, "summary": f"{rule} on k",
            "eventIds": ["e1", "e2"], "recommendation": "look"}


def test_a_later_line_for_the_same_alarm_replaces_the_earlier(tmp_path: Path) -> None:
    path = tmp_path / "alarms.jsonl"
    lines = [_alarm("a1", "unauthorized-decrypt", "MEDIUM", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"),
             _alarm("a2", "unused-key", "LOW", "2026-11-02T00:00:00Z", "2026-11-02T00:00:00Z"),
             _alarm("a1", "unauthorized-decrypt", "HIGH", "2026-11-01T00:00:00Z", "2026-11-01T01:00:00Z", 7)]
    path.write_text("\n".join(json.dumps(a) for a in lines) + "\nnot json\n\n")
    alarms, _ = read_alarm_lines(path)
    assert sorted((a["alarmId"], a["severity"], a["count"]) for a in alarms) == [("a1", "HIGH", 7),
                                                                                 ("a2", "LOW", 1)]


def test_alarms_sort_most_severe_first_and_filter_by_period() -> None:
    alarms = [_alarm("a1", "unused-key", "LOW", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"),
              _alarm("a2", "permissive-key", "CRITICAL", "2026-11-03T00:00:00Z", "2026-11-03T00:00:00Z"),
              _alarm("a3", "usage-spike", "MEDIUM", "2026-11-05T00:00:00Z", "2026-11-06T00:00:00Z")]
    frame = alarms_frame(alarms)
    assert frame.get_column("alarmId").to_list() == ["a2", "a3", "a1"]
    assert frame.get_column("eventIds")[0] == "e1 e2"
    within = alarms_frame(alarms, since=datetime(2026, 11, 2, tzinfo=UTC), until=datetime(2026, 11, 5, 12, tzinfo=UTC))
    assert sorted(within.get_column("alarmId").to_list()) == ["a2", "a3"]


def test_keytrail_report_says_when_its_alarms_could_not_be_read_whole(tmp_path: Path) -> None:
    """A report whose alarms file was a folder, or held only damaged lines, said "No alarms": a
    quiet period to whoever reads it."""
    from html import escape

    import typer
    from typer.testing import CliRunner

    from keytrail.cli.report import register
    from tests.unit.reports.records import key_arn, record

    trail = tmp_path / "trail.json"
    trail.write_text(json.dumps({"Records": [record("CreateKey", datetime(2026, 11, 1, tzinfo=UTC), key_arn("k"))]}))
    alarms = tmp_path / "alarms.jsonl"
    good = _alarm("a1", "unused-key", "LOW", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z")
    alarms.write_text(json.dumps(good) + "\n{\"alarmId\": \"a2\", \"rule\n\n[1, 2]\n")
    app = typer.Typer()
    register(app)
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["--cloudtrail", str(trail), "--alarms", str(alarms), "--out", str(out)])
    assert result.exit_code == 0, result.output
    note = f"2 lines of {alarms} are no alarm (damaged, or not keytrail's): left out of the report"
    assert f"note: {note}" in result.stderr.splitlines()
    page = out.read_text()
    assert f"Note: {escape(note)}." in page and "unused-key on k" in page

    folder = tmp_path / "data" / "alarms.jsonl"  # the default alarms file of a data dir, a folder
    folder.mkdir(parents=True)
    from keytrail.reports.collect import ReportOptions, _alarms

    frame, why = _alarms(ReportOptions(alarms=folder), None)
    assert (frame.height, why) == (0, f"{folder} is not a file: the report shows no alarm")


def test_a_report_without_until_lists_the_alarms_up_to_its_as_of_time_as_with_until_at_it(tmp_path: Path) -> None:
    """An unused-key alarm a detector's tick raised a day after the last event was listed only
    without --until, after the period the report names."""
    from keytrail.pipeline.sources import RecordsSource
    from keytrail.reports.collect import ReportOptions, collect_sync
    from tests.unit.reports.records import key_arn, record

    events = [record("CreateKey", datetime(2026, 11, 1, tzinfo=UTC), key_arn("k"))]
    alarms = tmp_path / "alarms.jsonl"
    lines = [_alarm("a1", "permissive-key", "HIGH", "2026-11-01T00:00:00Z", "2026-11-01T00:00:00Z"),
             _alarm("a2", "unused-key", "LOW", "2026-11-02T00:00:00Z", "2026-11-02T00:00:00Z")]
    alarms.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = collect_sync(RecordsSource(events), ReportOptions(alarms=alarms))
    assert report.alarms.get_column("alarmId").to_list() == ["a1"]
    bounded = collect_sync(RecordsSource(events), ReportOptions(alarms=alarms, until=report.as_of))
    assert bounded.alarms.equals(report.alarms)
