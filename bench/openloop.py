"""Open-loop load at a fixed request rate, for latency at a given fraction of the maximum rate.

wrk is closed-loop: a slow answer delays the next request, which hides queueing (coordinated
omission), and Debian has no wrk2. This generator sends request i at `start + i / rate` whether or
not earlier answers have come back, over a pool of keep-alive connections, and measures each
latency from the request's *scheduled* time, so time spent queued for a free connection counts.

    python -m bench.openloop --port P --requests FILE --rate 2000 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.presign import read_requests

__all__ = ["OpenLoopResult", "percentile", "run_open_loop"]


@dataclass(frozen=True, slots=True)
class OpenLoopResult:
    target_rps: float
    achieved_rps: float
    sent: int
    completed: int
    p50_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    statuses: dict[str, int]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


class _Generator:
    """Dispatches scheduled requests to idle connections and records each outcome."""

    def __init__(self, requests: Sequence[bytes], total: int) -> None:
        self.requests, self.total = requests, total
        self.idle: collections.deque[_Connection] = collections.deque()
        self.waiting: collections.deque[float] = collections.deque()  # scheduled, no free connection yet
        self.latencies: list[float] = []
        self.statuses: collections.Counter[str] = collections.Counter()
        self.alive = 0
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.dispatched = 0

    def schedule(self, when: float) -> None:
        self.waiting.append(when)
        self._dispatch()

    def _dispatch(self) -> None:
        while self.waiting and self.idle:
            raw = self.requests[self.dispatched % len(self.requests)]
            self.dispatched += 1
            self.idle.popleft().send(raw, self.waiting.popleft())

    def record(self, conn: _Connection, latency: float, status: str) -> None:
        self.latencies.append(latency)
        self.statuses[status] += 1
        if status == "closed":
            self.alive -= 1
        else:
            self.idle.append(conn)
            self._dispatch()
        if (len(self.latencies) >= self.total or self.alive == 0) and not self.finished.done():
            self.finished.set_result(None)


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one request at a time."""

    def __init__(self, generator: _Generator) -> None:
        self.generator = generator
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.scheduled: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, raw: bytes, scheduled: float) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.buffer.clear()
        self.transport.write(raw)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.scheduled is None:
            return
        head = bytes(self.buffer[:end]).lower()
        marker = head.find(b"content-length:")
        length = int(head[marker + 15:].split(b"\r\n", 1)[0]) if marker >= 0 else 0
        if len(self.buffer) >= end + 4 + length:
            scheduled, self.scheduled = self.scheduled, None
            self.generator.record(self, time.perf_counter() - scheduled, head.split(b" ", 2)[1].decode())

    def connection_lost(self, exc: Exception | None) -> None:
        scheduled, self.scheduled = self.scheduled, None
        self.generator.record(self, time.perf_counter() - (scheduled or time.perf_counter()), "closed")


async def run_open_loop(port: int, requests: Sequence[bytes], rate: float, seconds: float,
                        connections: int = 64) -> OpenLoopResult:
    """Send `rate` requests per second for `seconds`; latencies from each scheduled send time."""
    loop = asyncio.get_running_loop()
    generator = _Generator(requests, int(rate * seconds))
    for _ in range(connections):
        _, conn = await loop.create_connection(lambda: _Connection(generator), "127.0.0.1", port)
        generator.idle.append(conn)
    generator.alive = connections
    start = time.perf_counter() + 0.01
    for index in range(generator.total):
        when = start + index / rate
        delay = when - time.perf_counter()
        if delay > 0.0005:  # sleep in small steps; requests already due go out together
            await asyncio.sleep(delay)
        generator.schedule(when)
    await asyncio.wait_for(generator.finished, timeout=60)
    elapsed = time.perf_counter() - start
    for conn in generator.idle:
        if conn.transport:
            conn.transport.close()
    ordered = sorted(generator.latencies)
    return OpenLoopResult(
        target_rps=rate, achieved_rps=len(ordered) / elapsed, sent=generator.dispatched, completed=len(ordered),
        p50_ms=percentile(ordered, 0.5) * 1e3, p99_ms=percentile(ordered, 0.99) * 1e3,
        p999_ms=percentile(ordered, 0.999) * 1e3, max_ms=ordered[-1] * 1e3 if ordered else float("nan"),
        statuses=dict(generator.statuses),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", type=Path, required=True, help="file written by bench/presign.py")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    coroutine = run_open_loop(args.port, read_requests(args.requests), args.rate, args.seconds, args.connections)
    try:
        import uvloop  # the loop the servers use: keeps the generator's own overhead small
    except ImportError:
        result = asyncio.run(coroutine)
    else:
        result = uvloop.run(coroutine)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
