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
from bench.wrk import LoadResult, run_wrk, wrk_seconds

__all__ = ["Durations", "machine_stopped", "measure", "median_cell"]

# How much longer than asked a wrk run may take (its start and its threads' join) before it is
# taken for a run the machine stopped; and how many times such a run is made again at most.
STOPPED_MACHINE_SLACK_S = 1.0
RUNS_AFTER_A_STOP = 2


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
    stopped: list[float] = []
    while True:
        cpu_before, parts_before = tree_cpu_seconds(pids), cpu_by_part(target.process.pid)
        result = run_wrk(target.endpoint + "/", requests_file, durations.seconds, durations.connections)
        cpu_load = tree_cpu_seconds(pids) - cpu_before
        catch_up = wait_idle(pids)
        if not machine_stopped(result, durations.seconds) or len(stopped) == RUNS_AFTER_A_STOP:
            break
        stopped.append(round(result.seconds, 2))
    if stopped:  # said with the table: a row measured again is no row measured once
        row["machine_stopped_runs_s"] = stopped
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



def machine_stopped(result: LoadResult, seconds: float) -> bool:
    """Whether wrk's run took well past the seconds asked. wrk stops on time whatever the server
    does (a server stopped for 3 s of a 4 s run: 4.01 s, its stalled requests uncounted), and so
    it does when it is stopped itself (SIGSTOP for 3 s of 4: 4.10 s). But it times its run and
    each request with the wall clock (gettimeofday): a run that took longer was timed across a
    step of that clock, or a pause of the whole VM that ended past its end. Seen on a 2-vCPU VM:
    runs of 4 s timed 7.7 and 13.4 s, each with the requests of 4 s at the usual rate, a max
    latency as long as the excess, and the server's CPU per call unchanged. Such a run measures
    the clock, not the server, and is made again."""
    return result.seconds > wrk_seconds(seconds) + STOPPED_MACHINE_SLACK_S


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
