"""One measured cell: sign, probe, warm up, measure with wrk, read the server's CPU and memory."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.presign import read_requests
from bench.procs import cpu_by_part, cpu_per_request, tree_cpu_seconds, tree_rss_bytes
from bench.targets import Target, exchange
from bench.wrk import run_wrk

__all__ = ["Durations", "measure", "median_cell"]


@dataclass(frozen=True, slots=True)
class Durations:
    warmup: float = 2.0
    seconds: float = 5.0
    connections: int = 16


def _probe(target: Target, operation: str, requests_file: Path) -> str | None:
    """None when the first request gets the expected answer, else what went wrong."""
    status, body = exchange(target.port, read_requests(requests_file)[0])
    if status != target.expected_status(operation):
        return f"probe answered {status}: {body[:200].decode(errors='replace')}"
    if operation == "Decrypt (denied)" and b"AccessDenied" not in body:
        return f"denied Decrypt answered {status} without AccessDenied: {body[:200].decode(errors='replace')}"
    return None


def measure(target: Target, operation: str, work: Path, durations: Durations,
            key_limit: int = 1000) -> dict[str, Any]:
    """Measure `operation` on `target` once; a dict row for the results file."""
    row: dict[str, Any] = {"target": target.name, "operation": operation}
    requests_file = target.sign(operation, work / f"req-{target.name}.txt", key_limit)
    problem = _probe(target, operation, requests_file)
    if problem:
        return {**row, "error": problem}
    pids = target.pids()
    run_wrk(target.endpoint + "/", requests_file, durations.warmup, durations.connections)
    wait_idle(pids)  # the warm-up's deferred work (shipping, consumers, detector) stays out of this run
    cpu_before, parts_before = tree_cpu_seconds(pids), cpu_by_part(target.process.pid)
    result = run_wrk(target.endpoint + "/", requests_file, durations.seconds, durations.connections)
    cpu_load = tree_cpu_seconds(pids) - cpu_before
    catch_up = wait_idle(pids)
    cpu = tree_cpu_seconds(pids) - cpu_before
    parts = cpu_by_part(target.process.pid)
    row.update(result.as_dict())
    row["cpu_us_per_request"] = cpu / result.requests * 1e6 if result.requests else None
    if result.requests:
        row["cpu_parts_us"] = cpu_per_request(parts_before, parts, result.requests)
    row["cpu_cores"] = cpu_load / result.seconds if result.seconds else None
    row["catch_up_s"] = round(catch_up, 2)
    row["rss_mb"] = tree_rss_bytes(pids) / 2**20
    expected_errors = result.requests if operation == "Decrypt (denied)" else 0
    if result.socket_errors or abs(result.status_errors - expected_errors) > 16:
        row["warning"] = f"{result.status_errors} status errors, {result.socket_errors} socket errors"
    return row



def wait_idle(pids: Sequence[int], limit: float = 15.0, step: float = 0.25, busy: float = 0.05) -> float:
    """Wait until the server uses less than `busy` of a core (its background work on earlier
    requests is done), at most `limit` seconds; the seconds waited."""
    started = time.monotonic()
    last = tree_cpu_seconds(pids)
    while time.monotonic() - started < limit:
        time.sleep(step)
        now = tree_cpu_seconds(pids)
        if now - last < busy * step:
            break
        last = now
    return max(0.0, time.monotonic() - started - step)


def median_cell(rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The median run of several (by requests/s), with the per-run figures attached."""
    good = sorted((r for r in rows if "rps" in r), key=lambda r: r["rps"])
    if not good:
        return None
    cell = dict(good[(len(good) - 1) // 2]) if len(good) % 2 else dict(good[len(good) // 2])
    cell["rps"] = statistics.median(r["rps"] for r in good)
    cell["runs_rps"] = [round(r["rps"], 1) for r in rows if "rps" in r]
    return cell
