"""Time from a denied Decrypt to its `unauthorized-decrypt` alarm on MQTT, under background load.

While bench/openloop.py sends Encrypt at a fixed rate (1,000 req/s, as in the detector issue), one
denied Decrypt per key is sent for `keys` fresh keys, each by an outsider of its own (each principal
× key pair is a new alarm; one principal's denials on many keys would fold into one alarm), and the
alarm for each key is awaited on `keytrail/alarms/#`. Latency = alarm received − call answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.fixtures import OUTSIDERS, operation_params
from bench.openloop import percentile
from bench.targets import ROOT, Target, _python_env, exchange, load_extra_keys

__all__ = ["alarm_latency"]

TOPIC = "keytrail/alarms/#"


async def _listen(host: str, port: int, arrivals: dict[str, float], ready: asyncio.Event) -> None:
    import aiomqtt

    async with aiomqtt.Client(host, port) as client:
        await client.subscribe(TOPIC, qos=1)
        ready.set()
        async for message in client.messages:
            with contextlib.suppress(ValueError, TypeError, AttributeError):
                alarm = json.loads(bytes(message.payload))
                if alarm.get("rule") == "unauthorized-decrypt" and alarm.get("keyArn") not in arrivals:
                    arrivals[alarm["keyArn"]] = time.perf_counter()


async def _deny(target: Target, keys: list[tuple[str, bytes]], sent: dict[str, float], spacing: float) -> None:
    for (arn, blob), outsider in zip(keys, OUTSIDERS, strict=False):
        raw = target.signer(outsider).raw(*operation_params("Decrypt (denied)", "", blob))
        status, _ = await asyncio.to_thread(exchange, target.port, raw)
        sent[arn] = time.perf_counter()
        if status != 400:
            raise RuntimeError(f"the denied Decrypt answered {status}")
        await asyncio.sleep(spacing)


async def _measure(target: Target, mqtt: tuple[str, int], keys: list[tuple[str, bytes]], wait: float,
                   arrivals: dict[str, float], sent: dict[str, float]) -> None:
    ready = asyncio.Event()
    listener = asyncio.create_task(_listen(*mqtt, arrivals, ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await _deny(target, keys, sent, 0.2)
        deadline = time.perf_counter() + wait
        while len(arrivals) < len(keys) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await listener


def alarm_latency(target: Target, work: Path, mqtt: tuple[str, int], keys: int = 20, rate: float = 1000.0,
                  wait: float = 10.0) -> dict[str, Any]:
    """Alarm latency figures (p50/p99/max in ms, over `keys` alarms) under `rate` req/s of Encrypt."""
    if keys > len(OUTSIDERS):
        raise ValueError(f"at most {len(OUTSIDERS)} keys: one outsider principal each (bench/fixtures.py)")
    pairs = load_extra_keys(target, keys)
    requests_file = target.sign("Encrypt", work / "req-background.txt")
    seconds = keys * 0.2 + wait + 2
    background = subprocess.Popen(
        [sys.executable, "-m", "bench.openloop", "--port", str(target.port), "--requests", str(requests_file),
         "--rate", str(rate), "--seconds", str(seconds)], env=_python_env(), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    arrivals: dict[str, float] = {}
    sent: dict[str, float] = {}
    try:
        time.sleep(1.0)  # the background load is running before the first denied call
        asyncio.run(_measure(target, mqtt, pairs, wait, arrivals, sent))
    finally:
        background.terminate()
        background.wait(10)
    latencies = sorted((arrivals[arn] - sent[arn]) * 1e3 for arn in sent if arn in arrivals)
    return {"background_rps": rate, "denied_calls": len(sent), "alarms": len(latencies),
            "p50_ms": percentile(latencies, 0.5), "p99_ms": percentile(latencies, 0.99),
            "max_ms": latencies[-1] if latencies else None}
