"""Offline (`keytrail detect --cloudtrail`) and in-process (serve's runner) give identical alarms."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keytrail.audit.schema import encode
from keytrail.cli.detect import register
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks.jsonl import read_alarms
from tests.unit.detect.records import T0, create_key, denied, event, federated, key_arn, role, steady_traffic, user
from tests.unit.detect.scenario import mixed_scenario

pytestmark = pytest.mark.integration


def offline(records: list[dict], tmp_path: Path) -> list[dict]:
    log = tmp_path / "cloudtrail.json"
    log.write_text(json.dumps({"Records": records}))
    return offline_files(log)


def offline_files(path: Path) -> list[dict]:
    """The alarms of `keytrail detect --cloudtrail path --format json`."""
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["detect", "--cloudtrail", str(path), "--format", "json"])
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


def _no_arn_callers() -> list[dict]:
    """A SAML user new on an established key, and a web identity user surging on it (each as
    CloudTrail logs them: no ARN, account or access key)."""
    key, surging = key_arn(1), federated("WebIdentityUser", "bo")
    records = [create_key(T0, key), *(event("Decrypt", T0 + timedelta(days=d), key, role("app")) for d in range(9))]
    start = T0 + timedelta(days=8)
    records += steady_traffic(key, surging, start, minutes=120, per_minute=5)
    records += [event("Decrypt", start + timedelta(minutes=120, seconds=i / 10), key, surging) for i in range(150)]
    return [*records, event("GenerateDataKey", start + timedelta(hours=3), key, federated("SAMLUser", "ann"))]


async def test_callers_with_no_arn_raise_usage_spike_and_new_principal_alike_offline_live_and_after_a_restart(
        tmp_path: Path) -> None:
    """usage-spike and new-principal-on-key passed over callers with no ARN: from CloudTrail files
    (gzipped, as AWS delivers them) and from the event log's Avro values (serve's detector child's
    reader) alike, they raised nothing. A restart reads the log again: the same alarms, not new ones."""
    records = _no_arn_callers()
    logs = tmp_path / "AWSLogs" / "111122223333" / "CloudTrail" / "us-east-1"
    logs.mkdir(parents=True)
    with gzip.open(logs / "111122223333_CloudTrail_us-east-1_20260113T1200Z_aBcD.json.gz", "wt") as handle:
        json.dump({"Records": records}, handle)
    expected = [a for a in offline_files(tmp_path / "AWSLogs") if a["rule"] in ("usage-spike", "new-principal-on-key")]
    bo, ann = (f"a caller with no ARN (account 111122223333, principalId {who}" for who in (
        "accounts.google.com:bo", "https://idp.example.com/saml:ann"))
    assert sorted((a["rule"], a["principalArn"], a["summary"].split(")")[0]) for a in expected) == [
        ("new-principal-on-key", None, bo), ("new-principal-on-key", None, ann), ("usage-spike", None, bo)]
    values = [encode(record) for record in records]
    for _ in ("start", "restart"):
        runner = DetectorRunner.open(tmp_path / "data")
        await runner.feed_values(values)
        await runner.tick()
        await runner.close()
        live = read_alarms(tmp_path / "data" / "alarms.jsonl").values()
        kept = {a.alarm_id: a.to_json() for a in live if a.rule in ("usage-spike", "new-principal-on-key")}
        assert kept == {a["alarmId"]: a for a in expected}
