"""The shipper process's serving end: what it hears back, and a shipper with no broker to talk to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keytrail.audit.shipper import ShippedOffset
from keytrail.audit.shipping import ShipperProcess, held_line
from keytrail.audit.trail import AuditSettings, AuditTrail
from tests.support.audit_records import encrypt_call


def _shipper(tmp_path: Path, durable_end: int = 0) -> ShipperProcess:
    return ShipperProcess("unused:9092", tmp_path / "log", ShippedOffset(tmp_path / "shipped-offset"),
                          topic="t", partitions=1, durable_end=lambda: durable_end)


def test_each_acknowledged_batch_moves_the_offset_and_counts_its_bytes(tmp_path: Path) -> None:
    shipper = _shipper(tmp_path)
    shipper._heard(b"10 1400\n")
    shipper._heard(b"25 2100\n")
    assert (shipper.shipped.value, shipper.shipped_bytes) == (25, 3500)


def test_a_batch_a_restarted_shipper_resends_is_not_counted_twice(tmp_path: Path) -> None:
    shipper = _shipper(tmp_path)
    shipper._heard(b"25 3500\n")
    shipper._heard(b"10 1400\n")  # its predecessor reported up to 25 but died before writing the offset file
    assert (shipper.shipped.value, shipper.shipped_bytes) == (25, 3500)


def test_output_that_is_not_a_report_is_logged_and_changes_nothing(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    shipper = _shipper(tmp_path)
    shipper._heard(b"Traceback (most recent call last):\n")
    assert (shipper.shipped.value, shipper.shipped_bytes) == (0, 0)
    assert "unexpected output" in caplog.text


def test_a_shipper_held_at_a_record_it_cannot_read_is_held_for_metrics_until_it_reads_on_or_exits(
    tmp_path: Path
) -> None:
    # On a quiet node the spool never reaches the shipping alerts: keytrail_event_log_reader_held says it.
    shipper = _shipper(tmp_path)
    shipper._heard(held_line(1200))
    assert shipper.held_at == 1200 and shipper.shipped.value == 0
    shipper._heard(held_line(None))
    assert shipper.held_at is None
    shipper._heard(held_line(1200))
    assert shipper.child.spec.on_exit is not None
    shipper.child.spec.on_exit()  # the next shipper watches anew, and would not say that it reads on
    assert shipper.held_at is None


def test_a_new_shipper_is_told_the_durable_end_as_it_starts(tmp_path: Path) -> None:
    spec = _shipper(tmp_path, durable_end=42).child.spec
    assert callable(spec.settings) and spec.settings() == b"42\n"


async def test_with_no_broker_the_shipper_stops_with_the_trail_and_nothing_counts_as_shipped(tmp_path: Path) -> None:
    trail = AuditTrail.open(AuditSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1"))
    await trail.start()
    for i in range(3):
        await trail.record(encrypt_call(i))
    pid = trail.shipper_pid
    assert pid is not None and pid != os.getpid()
    await trail.close()
    assert trail.shipper_pid is None
    with pytest.raises(ProcessLookupError):  # reaped: no orphan left behind
        os.kill(pid, 0)
    assert trail.spool_depth == 3 and ShippedOffset(tmp_path / "audit" / "shipped-offset").value == 0
