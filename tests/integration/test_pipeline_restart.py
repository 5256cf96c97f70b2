"""`keytrail consume` killed with SIGKILL mid-stream, then restarted: totals still exact."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.audit import schema
from keytrail.pipeline.consumer import event_log_dir
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.state import PartitionState
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from keytrail.transport import segment_log
from tests.unit.pipeline import reference

pytestmark = pytest.mark.integration

UNTIL = datetime(2026, 10, 8, tzinfo=UTC)
TOTAL = 40_000
SETTINGS = SyntheticSettings(keys=80, seconds_per_event=10.0, same_second_share=0.2)  # ties: log order wins


def _consume(data_dir: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "keytrail.cli.metrics",
        "consume",
        "--data-dir",
        str(data_dir),
        "--no-follow",
        "--batch-size",
        "500",
        "--checkpoint-records",
        "2000",
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _covered(data_dir: Path) -> int:
    path = state_dir(data_dir) / "segment-log.sqlite"
    if not path.exists():
        return 0
    state = PartitionState(path)
    try:
        return state.next_offset
    finally:
        state.close()


def test_kill_9_mid_stream_then_restart_is_exact(tmp_path: Path) -> None:
    events = list(generate_events(TOTAL, SETTINGS, seed=9))
    log = segment_log.SegmentLog(event_log_dir(tmp_path), writable=True)
    log.append([schema.encode(e) for e in events])
    log.sync()
    log.close()

    first = _consume(tmp_path)
    deadline = time.monotonic() + 120
    while _covered(tmp_path) < 3000 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = _covered(tmp_path)
    assert 0 < killed_at < TOTAL, "the consumer should have been killed mid-stream"

    second = _consume(tmp_path)
    assert second.wait(timeout=300) == 0, second.stderr.read().decode() if second.stderr else ""
    assert _covered(tmp_path) == TOTAL

    store = MetricsStore(tmp_path)
    usage = store.usage(["minute", "keyArn", "principalArn", "accountId", "eventName"])
    assert {r[:5]: (r[5], r[6]) for r in usage.iter_rows()} == reference.usage(events)
    last = {
        (r["keyArn"], r["principalArn"]): (r["lastUsedTime"], r["eventId"], r["lastUsedOperation"])
        for r in store.last_used().iter_rows(named=True)
    }
    assert last == reference.last_used(events)
    got = {
        (r["keyArn"], r["accountId"]): {k: r[k] for k in ("keyMonths", "keyCost", "requests", "requestCost")}
        for r in store.cost(PriceTable(), until=UNTIL).iter_rows(named=True)
    }
    assert got == reference.cost(events, PriceTable(), UNTIL)
    assert list((tmp_path / "metrics" / "usage").glob("day=*/usage.parquet"))
