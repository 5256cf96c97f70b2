"""Offline (`keytrail detect --cloudtrail`) and in-process (serve's runner) give identical alarms."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keytrail.cli.detect import register
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks.jsonl import read_alarms
from tests.unit.detect.records import T0, denied, event, key_arn, user
from tests.unit.detect.scenario import mixed_scenario

pytestmark = pytest.mark.integration


def offline(records: list[dict], tmp_path: Path) -> list[dict]:
    log = tmp_path / "cloudtrail.json"
    log.write_text(json.dumps({"Records": records}))
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["detect", "--cloudtrail", str(log), "--format", "json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines()]


async def in_process(records: list[dict], data_dir: Path) -> list[dict]:
    runner = DetectorRunner.open(data_dir)
    for start in range(0, len(records), 97):  # arbitrary batches, ticking as serve does
        await runner.feed(records[start : start + 97])
        await runner.tick()
    await runner.close()
    return [alarm.to_json() for alarm in read_alarms(data_dir / "alarms.jsonl").values()]


async def test_offline_and_in_process_alarms_are_identical(tmp_path: Path) -> None:
    records = mixed_scenario()
    expected = offline(records, tmp_path)
    live = await in_process(records, tmp_path / "data")
    by_id = lambda alarms: sorted(alarms, key=lambda a: a["alarmId"])  # noqa: E731
    assert by_id(live) == by_id(expected)
    assert {a["rule"] for a in expected} == {
        "unauthorized-decrypt",
        "unused-key",
        "permissive-key",
        "key-deletion-in-use",
        "usage-spike",
        "rotation-disabled",
        "new-principal-on-key",
        "key-reconnaissance",
    }


async def test_events_of_one_second_are_judged_in_the_order_logged_on_both_paths(tmp_path: Path) -> None:
    """CloudTrail times have whole seconds: a burst of denials in one second keeps the log's (the
    file's) order offline, as live, so the alarm is anchored on the same first event."""
    thief = user("thief")
    records = [
        event("Decrypt", T0, key_arn(1), user("app"), event_id="evt-z-first"),
        *(denied("Decrypt", T0 + timedelta(seconds=1), key_arn(1), thief) for _ in range(3)),
    ]
    for record, event_id in zip(records[1:], ("evt-c", "evt-a", "evt-b"), strict=True):
        record["eventID"] = event_id
    expected = offline(records, tmp_path)
    live = await in_process(records, tmp_path / "data")
    assert live == expected
    assert [a["eventIds"] for a in live] == [["evt-c", "evt-a", "evt-b"]]
