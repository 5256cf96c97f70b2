"""Offline (`keytrail detect --cloudtrail`) and in-process (serve's runner) give identical alarms."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keytrail.cli.detect import register
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks.jsonl import read_alarms
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
    }
