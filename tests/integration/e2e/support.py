"""Helpers shared by the end-to-end tests: the CLI, the audit log, Kafka topics, polling."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from botocore.exceptions import ClientError

from tests.support.services import free_port, wait_for_port

__all__ = [
    "audit_events", "cli", "cli_json", "consume", "consume_sync", "eventually", "metric", "private_mosquitto",
    "raw_files", "reply_id",
]

T = TypeVar("T")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `keytrail ARGS…` as a subprocess (PYTHONPATH is inherited, so the worktree's code runs)."""
    result = subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def cli_json(*args: str) -> list[dict[str, Any]]:
    """`keytrail ARGS… --format json`: one JSON object per line."""
    out = cli(*args, "--format", "json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def audit_events(data_dir: Path) -> list[dict[str, Any]]:
    """The stored audit events, oldest first, as `keytrail audit events --format json` prints them."""
    return cli_json("audit", "events", "--data-dir", str(data_dir))


def reply_id(reply: dict[str, Any] | ClientError) -> str:
    """The x-amzn-RequestId of a boto3 answer or of the error it raised."""
    response = reply.response if isinstance(reply, ClientError) else reply
    return str(response["ResponseMetadata"]["RequestId"])


def eventually(probe: Callable[[], T | None], timeout: float = 30.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail after `timeout` seconds.

    The consumers and the detector are eventually consistent: poll with a deadline, never a fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def metric(server: Any, name: str) -> float | None:
    """The value of an unlabelled sample in the server's GET /metrics (None if absent)."""
    status, body = server.get("/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def raw_files(root: Path) -> list[tuple[Path, bytes]]:
    """Every regular file under `root` with its bytes."""
    return [(path, path.read_bytes()) for path in sorted(root.rglob("*")) if path.is_file()]


async def consume(bootstrap: str, topic: str, done: Callable[[list[tuple[bytes | None, bytes]]], bool],
                  timeout: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """Read `topic` from the beginning (no group) until `done(messages)` holds."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, enable_auto_commit=False)
    await consumer.start()
    messages: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while not done(messages):
                batches = await consumer.getmany(timeout_ms=500)
                messages += [(m.key, m.value) for batch in batches.values() for m in batch]
    finally:
        await consumer.stop()
    return messages


def consume_sync(bootstrap: str, topic: str, done: Callable[[list[tuple[bytes | None, bytes]]], bool],
                 timeout: float = 60.0) -> list[tuple[bytes | None, bytes]]:
    """`consume` for synchronous tests."""
    return asyncio.run(consume(bootstrap, topic, done, timeout))


@contextlib.contextmanager
def private_mosquitto() -> Iterator[str]:
    """A real Mosquitto of the test's own on a free port (the shared one on 1883 carries other
    test runs' alarms); yields its mqtt:// URL."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    proc = subprocess.Popen([binary, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
