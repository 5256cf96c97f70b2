"""Time from a denied call's event reaching the in-process detector to its alarm on MQTT,
under 1,000 calls/s of background load.

    PYTHONPATH=src:. python bench/detect_latency.py [--seconds 30] [--rate 1000] [--mqtt mqtt://127.0.0.1:1883]

The runner is the one `keytrail serve` embeds; events are fed as the serve process would after
its spool (every 10 ms). The KMS call, spool and shipper in front of it are not part of this
figure (the lead's end-to-end benchmark adds them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
from tests.unit.detect.records import denied, event, key_arn, role, user

from keytrail.detect.hooks import HooksConfig
from keytrail.detect.runner import DetectorRunner


async def subscribe(host: str, port: int, received: dict[str, float], ready: asyncio.Event) -> None:
    async with aiomqtt.Client(host, port) as client:
        await client.subscribe("keytrail/alarms/unauthorized-decrypt", qos=1)
        ready.set()
        async for message in client.messages:
            alarm = json.loads(message.payload)  # type: ignore[arg-type]
            received.setdefault(alarm["eventIds"][0], time.perf_counter())


async def load(runner: DetectorRunner, seconds: float, rate: int, sent: dict[str, float]) -> None:
    apps = [role(f"app{i}") for i in range(50)]
    per_tick, n = max(1, rate // 100), 0  # fed every 10 ms
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < seconds:
        now = datetime.now(UTC)
        batch: list[dict[str, Any]] = [
            event("Decrypt", now, key_arn(n % 500), apps[n % 50]) for n in range(n, n + per_tick)
        ]
        n += per_tick
        if n % 100 < per_tick:  # one denied call every 100 background calls, from a new principal
            attempt = denied("Decrypt", now, key_arn(1), user(f"attacker{n}"))
            batch.append(attempt)
            sent[attempt["eventID"]] = time.perf_counter()
        await runner.feed(batch)
        await asyncio.sleep(max(0.0, start + (n / rate) - loop.time()))


async def main(seconds: float, rate: int, url: str) -> None:
    host, port = url.removeprefix("mqtt://").split(":")
    received: dict[str, float] = {}
    sent: dict[str, float] = {}
    ready = asyncio.Event()
    listener = asyncio.create_task(subscribe(host, int(port), received, ready))
    await ready.wait()
    with tempfile.TemporaryDirectory() as tmp:
        runner = DetectorRunner.open(Path(tmp), hooks=HooksConfig(mqtt=url))
        await load(runner, seconds, rate, sent)
        await runner.close()
    await asyncio.sleep(1)
    listener.cancel()
    latencies = sorted((received[i] - sent[i]) * 1000 for i in sent if i in received)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"{rate} calls/s for {seconds:.0f} s: {len(sent)} denied calls, {len(latencies)} alarms on MQTT; "
        f"latency p50 {statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--mqtt", default="mqtt://127.0.0.1:1883")
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.rate, args.mqtt))
