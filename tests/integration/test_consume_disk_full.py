"""The standalone `keytrail consume --kafka` (a real tansu broker) whose data dir fills up: it stops
in one line naming the file it could not write, and the next run, with room, counts every event once."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from keytrail.audit.schema import encode
from tests.support.http import http_get
from tests.support.mounts import filled, small_filesystem
from tests.support.services import free_port, kafka_broker
from tests.support.waits import eventually_blocking
from tests.unit.detect.records import T0, event, key_arn, user

pytestmark = pytest.mark.integration


async def _send(bootstrap: str, records: list[dict[str, object]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for record in records:
            await producer.send_and_wait("keytrail.audit.v1", encode(record), key=b"key")
    finally:
        await producer.stop()


def _consume(bootstrap: str, data_dir: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "keytrail", "consume", "--kafka", bootstrap, "--data-dir", str(data_dir), *options]


def _counted_live(port: int, count: int) -> bool:
    """Whether the consumer's /metrics counts `count` successful Encrypt calls."""
    try:
        body = http_get(f"http://127.0.0.1:{port}/metrics")[2]
    except OSError:  # not listening yet
        return False
    return f'keytrail_kms_requests_total{{operation="Encrypt",outcome="success"}} {count}' in body


def _counted(data_dir: Path) -> int:
    usage = subprocess.run([sys.executable, "-m", "keytrail", "usage", "--data-dir", str(data_dir), "--format", "json"],
                           capture_output=True, text=True, check=True, timeout=60)
    return sum(json.loads(line)["count"] for line in usage.stdout.splitlines())


def test_consume_on_a_full_disk_names_the_file_it_could_not_write_and_the_next_run_counts_all(
        tmp_path: Path) -> None:
    # It stopped with "keytrail consume: No space left on device", naming no file: the write that
    # failed (the checkpoint's, naming its file) was replaced by the failure of the table export
    # run after it, whose write of the cost table named none.
    with kafka_broker() as bootstrap, small_filesystem(tmp_path / "disk", "3m") as disk:
        data, port = disk / "data", free_port()
        asyncio.run(_send(bootstrap, [event("Encrypt", T0 + timedelta(seconds=i), key_arn(1), user("eve"))
                                      for i in range(50)]))
        running = subprocess.Popen(_consume(bootstrap, data, "--metrics-port", str(port)), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        try:
            eventually_blocking(lambda: _counted_live(port, 50), what="the first 50 events counted", timeout=60)
            filler = filled(disk)
            asyncio.run(_send(bootstrap, [event("Encrypt", T0 + timedelta(days=1, seconds=i), key_arn(2),
                                                user("eve")) for i in range(300)]))
            _, stderr = running.communicate(timeout=120)  # it stops by itself at its next checkpoint
        finally:
            running.kill()
            running.wait()
        filler.unlink()
        again = subprocess.run(_consume(bootstrap, data, "--exit-when-idle", "3"), capture_output=True, text=True,
                               timeout=180)
        assert again.returncode == 0, again.stderr
        assert _counted(data) == 350  # each event once: none lost with the failed run, none counted twice
    assert running.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    said = stderr.splitlines()[-1]
    assert said.startswith("keytrail consume: ") and "No space left on device" in said, said
    assert f"{data}/metrics/" in said, said  # which file, so which disk
