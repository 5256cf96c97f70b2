"""bench/pipeline_sources.py end to end on a small log, with a real broker: every stage reads every
event from each source (no timing is asserted)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.services import kafka_broker

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def test_consumer_and_detector_read_every_event_from_the_log_and_from_kafka(tmp_path: Path) -> None:
    with kafka_broker() as bootstrap:
        done = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "pipeline_sources.py"), "--events", "3000",
             "--workdir", str(tmp_path / "events"), "--kafka", bootstrap],
            capture_output=True, text=True, timeout=300, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
        )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(done.stdout.strip().splitlines()[-1])["runs"]
    assert [(run["stage"], run["source"]) for run in runs] == [
        ("consumer", "embedded"), ("consumer", "kafka"), ("detector", "embedded"), ("detector", "kafka")]
    assert all(run["events"] == 3000 and run["cpu_s"] > 0 for run in runs)
