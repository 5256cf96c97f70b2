"""A node's clock that stepped back: lifecycle events of its own log billed in log order, and said."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.cloudtrail_files import import_cloudtrail
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
from tests.unit.pipeline.test_cli_metrics import lines, run
from tests.unit.reports.records import key_arn, record

CREATED = datetime(2026, 10, 1, 10, 0, tzinfo=UTC)
STEPPED = key_arn("stepped")  # its deletion scheduled on a clock that stepped back 5 hours
# Created, scheduled for deletion 5 hours later (at 15:00:00), on a sane clock: billed 6 hours, its
# scheduling's hour too (docs/metrics.md: billable within that second).
STEADY = key_arn("steady")
WINDOW = ["--since", "2026-10-01", "--until", "2026-10-21"]  # 20 days


def _history() -> list[dict[str, Any]]:
    """The records in the order the node logged them."""
    return [record("CreateKey", CREATED, STEPPED, event_id="create-stepped"),
            record("CreateKey", CREATED, STEADY, event_id="create-steady"),
            record("ScheduleKeyDeletion", CREATED - timedelta(hours=5), STEPPED, event_id="schedule-stepped"),
            record("ScheduleKeyDeletion", CREATED + timedelta(hours=5), STEADY, event_id="schedule-steady")]


async def _log_live(data_dir: Path, records: list[dict[str, Any]]) -> None:
    """Log `records` as the node's own calls, in this order."""
    async with AuditTrail.open(AuditSettings(data_dir=data_dir)) as trail:
        for event in records:
            await trail.append_event(event)


def _consume(data_dir: Path) -> None:
    asyncio.run(MetricsConsumer(ConsumerSettings(data_dir, follow=False, export_seconds=None)).run())


def _key_months(data_dir: Path) -> dict[str, Decimal]:
    code, out, _ = run("cost", "--data-dir", str(data_dir), *WINDOW, "--format", "json")
    assert code == 0
    return {str(row["keyArn"]): Decimal(str(row["keyMonths"])) for row in lines(out)}


def _months(hours: int) -> Decimal:
    return (Decimal(hours) / 744).quantize(Decimal("1e-10"))  # October's hours


def test_a_deletion_stamped_before_its_key_s_creation_is_billed_after_it_and_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    asyncio.run(_log_live(tmp_path, _history()))
    with caplog.at_level(logging.WARNING):
        _consume(tmp_path)
    # By time alone the schedule came first, and the key was billed as never scheduled (20 days,
    # 0.63 key-months). In log order it was scheduled after its creation: its first hour.
    months = _key_months(tmp_path)
    assert months == {STEPPED: _months(1), STEADY: _months(6)}
    said = [r.getMessage() for r in caplog.records if "clock step" in r.getMessage()]
    assert said == [f"clock step: {STEPPED}: ScheduleKeyDeletion (eventID schedule-stepped) is dated "
                    "2026-10-01T05:00:00Z, 5.0 h before the CreateKey of 2026-10-01T10:00:00Z logged ahead of "
                    "it: the node's clock stepped back (or the record was logged late); its cost takes it just after "
                    "that one, in log order, and may be off by about the step"]
    code, _, err = run("cost", "--data-dir", str(tmp_path), *WINDOW)
    assert code == 0 and err == f"note: {said[0]}\n"


def test_a_replicate_key_logged_after_the_replica_s_create_key_is_no_clock_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica's CreateKey (KMS's, in the replica's Region) is logged before the ReplicateKey,
    which is dated as its call began: a call crossing a second boundary was said to be a clock step."""
    primary, replica = key_arn("primary"), key_arn("replica")
    replicate = record("ReplicateKey", CREATED, primary, event_id="replicate")
    replicate["responseElements"] = {"replicaKeyMetadata": {"arn": replica, "keySpec": "SYMMETRIC_DEFAULT"}}
    history = [record("CreateKey", CREATED - timedelta(hours=1), primary, event_id="primary-create"),
               record("CreateKey", CREATED + timedelta(seconds=1), replica, event_id="replica-create"), replicate]
    asyncio.run(_log_live(tmp_path, history))
    with caplog.at_level(logging.WARNING):
        _consume(tmp_path)
    assert [r.getMessage() for r in caplog.records if "clock step" in r.getMessage()] == []


def test_a_step_is_said_once_per_key_and_later_events_of_the_key_bill_in_log_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Scheduled and cancelled on the stepped clock, then scheduled again once it was set right.
    later = [record("CancelKeyDeletion", CREATED - timedelta(hours=4), STEPPED),
             record("ScheduleKeyDeletion", CREATED + timedelta(hours=30), STEPPED)]
    asyncio.run(_log_live(tmp_path, [*_history(), *later]))
    with caplog.at_level(logging.WARNING):
        _consume(tmp_path)
    assert sum("clock step" in r.getMessage() for r in caplog.records) == 1
    # Billable from its creation to the second schedule (its hour included): each event after the one
    # logged before it.
    assert _key_months(tmp_path)[STEPPED] == _months(31)


def test_a_step_read_in_a_later_run_is_measured_against_the_events_counted_before(tmp_path: Path) -> None:
    records = _history()
    asyncio.run(_log_live(tmp_path, records[:2]))
    _consume(tmp_path)
    asyncio.run(_log_live(tmp_path, records[2:]))
    _consume(tmp_path)
    assert _key_months(tmp_path)[STEPPED] == _months(1)


def test_imported_cloudtrail_history_keeps_its_own_times(tmp_path: Path) -> None:
    # Files sorted by name hold no causal order (a record delivered late sits in a later file):
    # an import bills by time as before, and says nothing.
    for index, event in enumerate(_history()):
        with gzip.open(tmp_path / f"111122223333_CloudTrail_us-east-1_{index}.json.gz", "wt") as handle:
            json.dump({"Records": [event]}, handle)
    data_dir = tmp_path / "node"
    asyncio.run(import_cloudtrail(data_dir, sorted(tmp_path.glob("*.json.gz"))))
    _consume(data_dir)
    months = _key_months(data_dir)
    assert months == {STEPPED: _months(20 * 24 - 10), STEADY: _months(6)}
    code, _, err = run("cost", "--data-dir", str(data_dir), *WINDOW)
    assert code == 0 and "clock step" not in err


def test_the_report_bills_the_step_in_log_order_and_says_it(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from keytrail.cli.report import register

    asyncio.run(_log_live(tmp_path, _history()))
    app = typer.Typer()
    register(app)
    out = tmp_path / "cost.json"
    result = CliRunner().invoke(app, ["--data-dir", str(tmp_path), "--out", str(out), "--table", "cost", *WINDOW])
    assert result.exit_code == 0, result.stderr
    said = [line for line in result.stderr.splitlines() if "clock step" in line]
    assert len(said) == 1 and said[0].startswith(f"note: clock step: {STEPPED}: ScheduleKeyDeletion (eventID ")
    rows = {row["keyArn"]: Decimal(str(row["keyMonths"])) for row in lines(out.read_text())}
    assert rows == {STEPPED: _months(1), STEADY: _months(6)}


def test_a_lifecycle_event_counted_before_and_read_again_is_no_step(tmp_path: Path) -> None:
    # A log read again from its start (restored from a backup) beyond the eventIDs remembered: its
    # ScheduleKeyDeletion, older than the cancellation counted since, is in the lifecycle already.
    from keytrail.pipeline.query import state_dir
    from keytrail.pipeline.runner import Batch, Runner
    from keytrail.pipeline.sources import RecordsSource

    records = _history()
    said: list[str] = []
    runner = Runner(state_dir(tmp_path), RecordsSource([]), dedup_capacity=1,
                    on_clock_step=lambda step: said.append(step.line()))
    cancelled = record("CancelKeyDeletion", CREATED + timedelta(hours=6), STEADY)
    others = [record("Encrypt", CREATED, STEADY, event_id=f"use-{n}") for n in range(4)]  # past the eventIDs kept
    for offset, event in enumerate([*records, cancelled, *others, records[3]]):
        runner.process(Batch("log", [offset], records=[event], causal=[range(offset, offset + 1)]))
        asyncio.run(runner.checkpoint())
    runner.close()
    assert [line.split(" (")[0] for line in said] == [f"clock step: {STEPPED}: ScheduleKeyDeletion"]
