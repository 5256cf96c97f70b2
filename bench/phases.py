"""The benchmark's phases; each returns plain data for the results file."""

from __future__ import annotations

import json
import random
import resource
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.alarm_latency import alarm_latency
from bench.fixtures import OPERATIONS
from bench.measure import Durations, measure
from bench.population import add_keys
from bench.procs import (
    SERVING_SYSTEM,
    SERVING_USER,
    busy_share,
    cpu_by_part,
    cpu_per_request,
    tree_peak_rss_bytes,
    tree_rss_bytes,
)
from bench.target_names import (
    AUDIT_OFF,
    CEILING,
    EMBEDDED,
    KEYTRAIL,
    MOTO,
    NODE,
    SATURATED,
    SATURATING_CONNECTIONS,
)
from bench.targets import ROOT, Target, _python_env, start_ceiling, start_keytrail, start_moto

__all__ = ["group_commits", "http_table", "open_loop", "pipeline_scripts", "profile", "scale"]


def _plan(targets: dict[str, Target]) -> list[tuple[Target, str]]:
    """One round: each operation on keytrail, then on moto; after Encrypt, the ceiling, audit off, the
    scale-out node, the default serve, and the four keytrail servers again saturated."""
    plan = []
    for operation in OPERATIONS:
        plan.append((targets[KEYTRAIL], operation))
        if operation in targets[MOTO].operations:
            plan.append((targets[MOTO], operation))
        if operation == "Encrypt":
            plan += [(targets[CEILING], operation), (targets[AUDIT_OFF], operation), (targets[NODE], operation),
                     (targets[EMBEDDED], operation)]
            plan += [(targets[name], SATURATED) for name in (KEYTRAIL, AUDIT_OFF, NODE, EMBEDDED)]
    return plan


def _start_all(work: Path, kafka: str | None, mqtt: str | None) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    try:
        targets[KEYTRAIL] = start_keytrail(work, KEYTRAIL, kafka=kafka, mqtt=mqtt)
        targets[AUDIT_OFF] = start_keytrail(work, "keytrail-audit-off", kafka=kafka, audit=False)
        targets[AUDIT_OFF].name = AUDIT_OFF
        targets[NODE] = start_keytrail(work, "keytrail-node", kafka=kafka, extra=["--no-detector"])
        targets[NODE].name = NODE
        targets[EMBEDDED] = start_keytrail(work, "keytrail-embedded")
        targets[EMBEDDED].name = EMBEDDED
        targets[MOTO] = start_moto(work)
        targets[CEILING] = start_ceiling(work)
    except BaseException:
        _stop_all(targets)
        raise
    return targets


def _stop_all(targets: dict[str, Target]) -> None:
    for target in targets.values():
        target.process.stop()


def _children_cpu_seconds() -> float:
    """CPU seconds of this process's children that ended (the open-loop generator, once it returned)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _audit_bytes(work: Path) -> dict[str, int]:
    """Bytes under <data-dir>/audit of each keytrail: shows whether audit ran, and whether off is off."""
    return {KEYTRAIL: _dir_bytes(work / f"{KEYTRAIL}-data" / "audit"),
            AUDIT_OFF: _dir_bytes(work / "keytrail-audit-off-data" / "audit")}


# Rounds the HTTP table runs whatever its deadline: a median needs three.
MIN_ROUNDS = 3
# Open-loop rounds at 80 %, each target in turn: one run's p99 rests on its slowest 1 % alone, and
# two runs of one server minutes apart differed fivefold (benchmark-history.md, forty-second session).
OPEN_LOOP_ROUNDS = 3


def http_table(work: Path, kafka: str | None, mqtt: str | None, durations: Durations,
               rounds: int, deadline: float = float("inf")) -> dict[str, Any]:
    """Interleaved rounds over every (target, operation), open-loop latency at 80 %, alarm latency.
    Past `MIN_ROUNDS`, a round starts only if it would end by `deadline` (as long as the last one
    took): on a slow machine five rounds leave the later phases no time."""
    targets = _start_all(work, kafka, mqtt)
    try:
        runs, rounds_run = [], 0
        while rounds_run < rounds:
            began = time.monotonic()
            for target, operation in _plan(targets):
                row = _measure_cell(target, operation, work, durations)
                row["round"] = rounds_run
                runs.append(row)
                _echo(row)
            rounds_run += 1
            if rounds_run >= MIN_ROUNDS and 2 * time.monotonic() - began > deadline:
                break
        encrypt = sorted(r["rps"] for r in runs if r["target"] == KEYTRAIL and r["operation"] == "Encrypt"
                         and "rps" in r)
        commits = {name: group_commits(targets[name].endpoint) for name in (KEYTRAIL, NODE, EMBEDDED)}
        at80 = open_loop(targets[KEYTRAIL], work, durations, encrypt[len(encrypt) // 2] if encrypt else None,
                         references=(targets[AUDIT_OFF], targets[CEILING]))
        alarms = _alarms(targets[KEYTRAIL], work, mqtt)
        return {"runs": runs, "rounds": rounds_run, "audit_bytes": _audit_bytes(work), "open_loop": at80,
                "alarm_latency": alarms, "group_commits": commits}
    finally:
        _stop_all(targets)


def _measure_cell(target: Target, operation: str, work: Path, durations: Durations) -> dict[str, Any]:
    """`measure`, or for `SATURATED` an Encrypt run with `SATURATING_CONNECTIONS`."""
    if operation != SATURATED:
        return measure(target, operation, work, durations)
    row = measure(target, "Encrypt", work, replace(durations, connections=SATURATING_CONNECTIONS))
    return {**row, "operation": SATURATED, "connections": SATURATING_CONNECTIONS}


def group_commits(endpoint: str) -> dict[str, float]:
    """The audit spool's group commits so far, from the server's /metrics: fsyncs, records, and the
    fsync time histogram (`le` bound in seconds -> cumulative count); empty without those metrics."""
    try:
        with urllib.request.urlopen(f"{endpoint}/metrics", timeout=10) as response:
            body = response.read().decode()
    except OSError:
        return {}
    found: dict[str, float] = {}
    for line in body.splitlines():
        if line.startswith(("keytrail_audit_fsync_seconds", "keytrail_audit_committed_records_total")):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def _echo(row: dict[str, Any]) -> None:
    if "rps" in row:
        line = (f"  {row['target']:<22} {row['operation']:<17} {row['rps']:>9.0f} req/s  p50 {row['p50_ms']:.2f} "
                f"p99 {row['p99_ms']:.2f} ms  {row.get('cpu_us_per_request') or 0:.0f} µs CPU/req")
    else:
        line = f"  {row['target']:<22} {row['operation']:<17} {row.get('error') or row.get('skipped')}"
    print(line, flush=True)


def _alarms(target: Target, work: Path, mqtt: str | None) -> dict[str, Any]:
    if mqtt is None:
        return {"status": "not measured: this build has no detector"}
    host, _, port = mqtt.removeprefix("mqtt://").partition(":")
    try:
        result = alarm_latency(target, work, (host, int(port or 1883)))
    except Exception as exc:  # a figure is missing, the rest of the run still counts
        return {"status": f"not measured: {type(exc).__name__}: {exc}"}
    status = "ran" if result["alarms"] else "no alarm arrived: is the detector wired into serve with --mqtt?"
    print(f"  alarm latency: {result}", flush=True)
    return {"status": status, **result}


def open_loop(target: Target, work: Path, durations: Durations, table_median: float | None,
              references: Sequence[Target] = ()) -> dict[str, Any]:
    """Latency at 80 % of the maximum rate: the lower of the table's median Encrypt req/s and one
    wrk run right before (the machine's other tenants move it from minute to minute, and one run
    alone can land high); bench/openloop.py runs in its own process, like wrk. Each of `references`
    (audit off, the ceiling) gets the same rate: what this machine's tail is without the audit
    trail, and without any KMS work at all. OPEN_LOOP_ROUNDS interleaved rounds, as the table's:
    each target's figures are those of its round of median p99, with every round's p99 beside them."""
    maximum = measure(target, "Encrypt", work, durations)
    if "rps" not in maximum:
        return {"error": maximum.get("error", "no maximum")}
    rate = 0.8 * min(maximum["rps"], table_median or maximum["rps"])
    seconds = max(4.0, durations.seconds + 1)
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in (target, *references)}
    for _ in range(OPEN_LOOP_ROUNDS):
        for each in (target, *references):
            run = _open_loop_run(each, work, rate, seconds)
            if each is target and "error" in run:
                return run
            runs[each.name].append(run)
    result = _median_round(runs[target.name])
    result["max_rps"] = rate / 0.8
    result["same_rate"] = {other.name: _median_round(runs[other.name]) for other in references}
    return result


def _median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median p99 among `runs`, with every run's p99 (`rounds_p99_ms`, in run order);
    the first error when no run has figures."""
    measured = [run for run in runs if "p99_ms" in run]
    if not measured:
        return runs[0]
    middle = sorted(measured, key=lambda run: run["p99_ms"])[(len(measured) - 1) // 2]
    return {**middle, "rounds_p99_ms": [run["p99_ms"] for run in measured]}


def _open_loop_run(target: Target, work: Path, rate: float, seconds: float) -> dict[str, Any]:
    """One open-loop run at `rate`: latencies, and what the server's serving thread and the audit
    spool (when it has one) did meanwhile."""
    requests_file = target.sign("Encrypt", work / "req-openloop.txt")
    args = [sys.executable, "-m", "bench.openloop", "--port", str(target.port), "--requests", str(requests_file),
            "--rate", f"{rate:.0f}", "--seconds", str(seconds), "--connections", "64"]
    parts_before, generator_before = cpu_by_part(target.process.pid), _children_cpu_seconds()
    commits_before = group_commits(target.endpoint)
    done = subprocess.run(args, capture_output=True, text=True, env=_python_env(), cwd=ROOT, timeout=seconds + 90,
                          check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-800:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    # What the server's one serving thread had to give at this rate (above 0.9 of a core, requests
    # queue behind each other and behind whatever else the scheduler runs on that core).
    completed = max(1, result["completed"])
    parts = cpu_per_request(parts_before, cpu_by_part(target.process.pid), completed)
    result["serving_cpu_us"] = parts.get(SERVING_USER, 0.0) + parts.get(SERVING_SYSTEM, 0.0)
    result["serving_busy"] = busy_share(parts, result["achieved_rps"])
    result["generator_cpu_us"] = (_children_cpu_seconds() - generator_before) / completed * 1e6
    # The fsyncs of this run alone: whether a slow disk, rather than a busy core, set its tail.
    commits_after = group_commits(target.endpoint)
    result["group_commits"] = {name: value - commits_before.get(name, 0.0) for name, value in commits_after.items()}
    print(f"  open loop {target.name} {rate:.0f} req/s: p50 {result['p50_ms']:.2f} p99 {result['p99_ms']:.2f} ms",
          flush=True)
    return result


def profile(work: Path, kafka: str | None) -> dict[str, Any]:
    out = work / "profile.json"
    args = [sys.executable, "-m", "bench.profile_encrypt", "--calls", "4000", "--out", str(out)]
    args += ["--kafka", kafka] if kafka else []
    done = subprocess.run(args, capture_output=True, text=True, env=_python_env(), cwd=ROOT, timeout=180,
                          check=False)
    if done.returncode != 0:
        return {"error": done.stderr[-1500:]}
    result: dict[str, Any] = json.loads(out.read_text())
    print(f"  profile: Encrypt in-process {result['us_per_call']:.0f} µs/call", flush=True)
    return result


def _scale_run(work: Path, kafka: str | None, data_dir: Path, arns: list[str], workers: int,
               durations: Durations) -> dict[str, Any]:
    name = f"scale-{len(arns)}-w{workers}"
    started = time.monotonic()
    target = start_keytrail(work, name, kafka=kafka, data_dir=data_dir, workers=workers, load=False)
    try:
        startup = time.monotonic() - started
        idle_rss = tree_rss_bytes(target.pids()) / 2**20
        start_peak = tree_peak_rss_bytes(target.pids()) / 2**20
        target.key_ids = random.Random(7).sample(arns, min(1000, len(arns)))
        row = measure(target, "Encrypt", work, durations)
        row.update(keys=len(arns), workers=workers, startup_s=round(startup, 2), rss_idle_mb=idle_rss,
                   rss_start_peak_mb=start_peak)
        _echo({**row, "operation": f"{len(arns)} keys, {workers}w"})
        return row
    finally:
        target.process.stop()


@dataclass
class _ScaleRates:
    """Seconds per key of filling, and a run's seconds (the server's start, wrk's warm-up and
    measured run, the catch-up, the stop) as a fixed part, the run with the fewest keys, plus
    seconds per key, as the counts measured so far showed them: the next, larger count is run only
    if it fits. (Charging a start's fixed part per key overestimated the start at 100,000 keys
    threefold and skipped its row on a slow VM; leaving out all but wrk's seconds, the run at
    100,000 keys was underestimated by a third.)"""

    run_fixed: float  # a first guess until a run is measured
    fill: float = 0.001  # a slow VM's, until 1,000 keys are filled
    run_per_key: float = 0.0002

    @classmethod
    def guessed(cls, durations: Durations) -> _ScaleRates:
        return cls(run_fixed=durations.warmup + durations.seconds + 7.0)  # a start of 5 s, a stop of 2

    def estimate(self, count: int, have: int, runs: int) -> float:
        return (count - have) * self.fill + runs * (self.run_fixed + count * self.run_per_key)

    def learn(self, added: int, fill_seconds: float, count: int, run_seconds: float) -> None:
        if added >= 1000:  # smaller fills are mostly the store's opening
            self.fill = fill_seconds / added
        if count < 1000:
            self.run_fixed = run_seconds
        else:
            self.run_per_key = max(run_seconds - self.run_fixed, 0.0) / count


def scale(work: Path, kafka: str | None, durations: Durations, counts: list[int], deadline: float) -> list[Any]:
    """Encrypt throughput and RSS as keys grow; 2 workers at the smallest count, and at the largest
    when there is time for both runs."""
    data_dir, arns, rows = work / "scale-data", list[str](), list[dict[str, Any]]()
    rates = _ScaleRates.guessed(durations)
    for count in sorted(counts):
        runs = 2 if count == min(counts) else 1  # the largest count's second run is decided below
        if time.monotonic() + rates.estimate(count, len(arns), runs) > deadline:
            rows.append({"keys": count, "skipped": "skipped: it would not fit in the time budget"})
            continue
        began = time.monotonic()
        added = count - len(arns)
        arns += add_keys(data_dir, added)
        fill = time.monotonic() - began
        two_workers = count == min(counts) or (
            count == max(counts) and time.monotonic() + rates.estimate(count, count, 2) <= deadline)
        for workers in (1, 2) if two_workers else (1,):
            run_began = time.monotonic()
            try:
                row = _scale_run(work, kafka, data_dir, arns, workers, durations)
            except Exception as exc:  # one missing row; the rest of the run still counts
                row = {"keys": count, "workers": workers, "error": f"{type(exc).__name__}: {str(exc)[-300:]}"}
            rows.append({**row, "fill_s": round(fill, 1)})
            if workers == 1 and "startup_s" in row:
                rates.learn(added, fill, count, time.monotonic() - run_began)
    return rows


# The pipeline and detector helpers' own benchmarks, with the arguments that fit the time budget.
HELPER_SCRIPTS: dict[str, list[str]] = {
    "pipeline_throughput.py": [],
    "pipeline_sources.py": ["--events", "50000"],  # with the run's broker: `--kafka` is added
    "detect_throughput.py": [],
    "detect_latency.py": ["--seconds", "10"],
}
# Writing a million generated events takes a minute or more on a slow machine before the consumer
# is timed (a later run reuses them): with less time left, a smaller log measures the same rate.
_PIPELINE_EVENTS = ((240.0, 1_000_000), (0.0, 300_000))  # (seconds left at least, events)


def pipeline_scripts(bench: Path, deadline: float, kafka: str | None = None) -> dict[str, Any]:
    """Run the pipeline and detector helpers' benchmarks when this build has them (reading from
    the Kafka topic too when the run has a broker)."""
    found: dict[str, Any] = {}
    for name, extra in HELPER_SCRIPTS.items():
        path = bench / name
        if not path.exists():
            found[name] = {"status": f"not measured: bench/{name} is not in this build"}
            continue
        budget = max(90.0, deadline - time.monotonic())
        if name == "pipeline_throughput.py":
            extra = [*extra, "--events", str(next(n for left, n in _PIPELINE_EVENTS if budget >= left))]
        if name == "pipeline_sources.py" and kafka:
            extra = [*extra, "--kafka", kafka]
        try:
            done = subprocess.run([sys.executable, str(path), *extra], capture_output=True, text=True,
                                  env=_python_env(), cwd=ROOT, timeout=budget, check=False)
        except subprocess.TimeoutExpired:
            found[name] = {"status": f"not measured: did not finish within {budget:.0f} s"}
            continue
        found[name] = {"status": "ran" if done.returncode == 0 else f"failed ({done.returncode})",
                       "output": "\n".join(done.stdout.strip().splitlines()[-25:]),
                       "stderr": "\n".join(done.stderr.strip().splitlines()[-5:]) if done.returncode else ""}
        print(f"  {name}: {found[name]['status']}", flush=True)
    return found
