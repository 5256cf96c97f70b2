"""Render docs/benchmarks.md from one results file (bench/results/*.json)."""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.fixtures import OPERATIONS
from bench.measure import median_cell
from bench.procs import OTHER_THREADS, SERVING_SYSTEM, SERVING_USER, busy_share
from bench.report_text import LIMITS, METHOD
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

__all__ = ["ratios", "render", "splice"]


def _num(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "n/a"
    return f"{value:,.{digits}f}"


def _runs(http: dict[str, Any], target: str, operation: str) -> list[dict[str, Any]]:
    return [r for r in http.get("runs", []) if r["target"] == target and r["operation"] == operation]


def _per_round(http: dict[str, Any], target: str, operation: str) -> dict[int, float]:
    return {r["round"]: r["rps"] for r in _runs(http, target, operation) if "rps" in r}


def ratios(http: dict[str, Any], operation: str, other: str, other_operation: str | None = None,
           mine_target: str = KEYTRAIL) -> float | None:
    """Median over rounds of keytrail's (or `mine_target`'s) req/s divided by `other`'s in the same round."""
    mine = _per_round(http, mine_target, operation)
    theirs = _per_round(http, other, other_operation or operation)
    values = [mine[r] / theirs[r] for r in mine if theirs.get(r)]
    return statistics.median(values) if values else None


def cpu_ratio(http: dict[str, Any], operation: str, other: str, other_operation: str | None = None) -> float | None:
    """Median over rounds of `other`'s CPU per request divided by keytrail's: the same comparison as
    `ratios`, but by work per request, which other tenants of a shared machine disturb far less."""
    def cpu(target: str, op: str) -> dict[int, float]:
        return {r["round"]: r["cpu_us_per_request"] for r in _runs(http, target, op) if r.get("cpu_us_per_request")}
    mine, theirs = cpu(KEYTRAIL, operation), cpu(other, other_operation or operation)
    values = [theirs[r] / mine[r] for r in mine if r in theirs]
    return statistics.median(values) if values else None


def _row(cell: dict[str, Any] | None, label: str, ratio_moto: str, ratio_ceiling: str) -> str:
    if cell is None:
        return f"| {label} | not measured | | | | | | | | {ratio_moto} | {ratio_ceiling} |"
    runs = " / ".join(_num(v) for v in cell["runs_rps"])
    return (f"| {label} | **{_num(cell['rps'])}** | {_num(cell['p50_ms'], 2)} | {_num(cell['p99_ms'], 2)} | "
            f"{_num(cell['p999_ms'], 2)} | {_num(cell.get('cpu_us_per_request'))} | {_num(cell.get('cpu_cores'), 2)} | "
            f"{_num(cell.get('catch_up_s'), 1)} | "
            f"{runs} | {ratio_moto} | "
            f"{ratio_ceiling} |")


def _ratio_text(value: float | None, digits: int = 1, suffix: str = "×") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def http_table(http: dict[str, Any]) -> list[str]:
    lines = ["| Target · operation | req/s (median) | p50 ms | p99 ms | p99.9 ms | CPU µs/req | server cores | "
             "catch-up s | runs req/s | keytrail / moto | keytrail / ceiling |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for operation in OPERATIONS:
        to_moto = ratios(http, operation, MOTO)
        to_ceiling = ratios(http, operation, CEILING, "Encrypt")
        lines.append(_row(median_cell(_runs(http, KEYTRAIL, operation)), f"keytrail · {operation}",
                          _ratio_text(to_moto), _ratio_text(None if to_ceiling is None else to_ceiling * 100, 0, " %")))
    for operation in OPERATIONS[:3]:
        lines.append(_row(median_cell(_runs(http, MOTO, operation)), f"moto · {operation}", "", ""))
    lines.append(_row(median_cell(_runs(http, CEILING, "Encrypt")), "ceiling (bare ASGI) · any", "", ""))
    lines.append(_row(median_cell(_runs(http, AUDIT_OFF, "Encrypt")), "keytrail, audit off · Encrypt", "", ""))
    lines.append(_row(median_cell(_runs(http, NODE, "Encrypt")),
                      "keytrail, scale-out node (`--kafka --no-detector`) · Encrypt", "", ""))
    if _runs(http, EMBEDDED, "Encrypt"):
        lines.append(_row(median_cell(_runs(http, EMBEDDED, "Encrypt")),
                          "keytrail, default serve (embedded log, no Kafka) · Encrypt", "", ""))
    for target, label in ((KEYTRAIL, "keytrail"), (AUDIT_OFF, "keytrail, audit off")):
        if _runs(http, target, SATURATED):  # the other audited servers' saturated runs: in the audit row
            lines.append(_row(median_cell(_runs(http, target, SATURATED)),
                              f"{label} · Encrypt, saturated (wrk -c{SATURATING_CONNECTIONS})", "", ""))
    errors = [f"- {r['target']} · {r['operation']} (round {r['round'] + 1}): {problem}"
              for r in http.get("runs", []) if (problem := _problem(r))]
    return lines + (["", "Problems seen:", *errors] if errors else [])


def _problem(run: dict[str, Any]) -> str | None:
    """What went wrong in one run, if anything: its error or warning, and the wrk runs timed past
    their end that were made again (`measure.machine_stopped`)."""
    said = [run[name] for name in ("error", "warning") if run.get(name)]
    if stopped := run.get("machine_stopped_runs_s"):
        runs = ", ".join(f"{seconds:g} s" for seconds in stopped)
        said.append(f"measured again after wrk timed run(s) of {runs} (the wall clock stepped, or the machine "
                    "paused, during them)")
    return "; ".join(said) or None


def cpu_parts_table(http: dict[str, Any]) -> list[str]:
    """Where one Encrypt's CPU went, by part of each keytrail server (medians over rounds)."""
    targets = [(KEYTRAIL, "everything on"), (NODE, "scale-out node"), (EMBEDDED, "default serve"),
               (AUDIT_OFF, "audit off")]
    medians = {target: _median_parts(_runs(http, target, "Encrypt")) for target, _ in targets}
    names = sorted({name for parts in medians.values() for name in parts}, key=_part_order)
    if not names:
        return ["CPU by part not measured (an older results file)."]
    lines = ["| Part (CPU µs per Encrypt) | " + " | ".join(label for _, label in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    for name in [*names, "total"]:
        cells = [_part_cell(parts, name) for parts in (medians[target] for target, _ in targets)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    busy = [_busy_share(_runs(http, target, "Encrypt")) for target, _ in targets]
    lines.append("| serving thread busy (share of a core: its CPU per call × req/s) | "
                 + " | ".join("n/a" if share is None else f"{share:.2f}" for share in busy) + " |")
    return lines


def _serving_cpu_us(http: dict[str, Any], target: str) -> float | None:
    """The serving thread's median CPU µs per Encrypt (user and system) under wrk."""
    parts = _median_parts(_runs(http, target, "Encrypt"))
    return parts[SERVING_USER] + parts.get(SERVING_SYSTEM, 0.0) if SERVING_USER in parts else None


def _wrk_serving_cpu_us(http: dict[str, Any]) -> dict[str, float]:
    """Each target's serving-thread CPU µs per Encrypt under wrk, where measured."""
    targets = {run["target"] for run in http.get("runs", [])}
    return {target: cpu for target in targets if (cpu := _serving_cpu_us(http, target)) is not None}


def _busy_share(runs: Sequence[dict[str, Any]]) -> float | None:
    """The median share of a core the serving thread was busy: below 1, the loop waited (for the
    audit spool's fsync when the other servers of the table reach 1)."""
    shares = [busy_share(run["cpu_parts_us"], run["rps"]) for run in runs if run.get("cpu_parts_us") and run.get("rps")]
    return statistics.median(shares) if shares else None


def group_commit_line(commits: dict[str, dict[str, float]]) -> str:
    """The audited servers' group commits over the whole table (from their /metrics)."""
    servers = ((KEYTRAIL, "everything on"), (NODE, "scale-out node"), (EMBEDDED, "default serve"))
    parts = [f"{label}: {text}" for target, label in servers if (text := _commit_text(commits.get(target) or {}))]
    if not parts:
        return "Group commits not measured (this build's /metrics has no keytrail_audit_fsync_seconds)."
    return ("Audit group commits over the whole table (the servers' `keytrail_audit_fsync_seconds` and "
            "`keytrail_audit_committed_records_total`, warm-ups included): " + "; ".join(parts) + ".")


def _commit_text(found: dict[str, float]) -> str:
    fsyncs = found.get("keytrail_audit_fsync_seconds_count")
    if not fsyncs:
        return ""
    records = found.get("keytrail_audit_committed_records_total", 0.0)
    mean_ms = found.get("keytrail_audit_fsync_seconds_sum", 0.0) / fsyncs * 1e3
    half, most = _bucket_bound(found, fsyncs * 0.5), _bucket_bound(found, fsyncs * 0.99)
    return (f"{_num(fsyncs)} fsyncs, {records / fsyncs:.1f} records each, fsync mean {mean_ms:.2f} ms, "
            f"half {half}, 99 % {most}, the slowest {_bucket_bound(found, fsyncs)}")


def _bucket_bound(found: dict[str, float], rank: float) -> str:
    """The smallest histogram bound whose cumulative count reaches `rank`, as a phrase."""
    bounds = sorted((float(name.split('"')[1]), count) for name, count in found.items()
                    if name.startswith("keytrail_audit_fsync_seconds_bucket") and "+Inf" not in name)
    bound = next((b for b, count in bounds if count >= rank), None)
    return "over 1 s" if bound is None else f"at or under {bound * 1e3:g} ms"


def _part_cell(parts: dict[str, float], name: str) -> str:
    if not parts:
        return "n/a"  # the server was not measured
    if name == "total":
        return _num(sum(parts.values()), 1)
    return _num(parts[name], 1) if name in parts else "–"  # the server has no such part


def _median_parts(runs: Sequence[dict[str, Any]]) -> dict[str, float]:
    measured = [run["cpu_parts_us"] for run in runs if run.get("cpu_parts_us")]
    names = {name for parts in measured for name in parts}
    return {name: statistics.median(parts.get(name, 0.0) for parts in measured) for name in names}


def _part_order(name: str) -> tuple[int, str]:
    first = [SERVING_USER, SERVING_SYSTEM, OTHER_THREADS]  # the serving process, then its children by name
    return (first.index(name), "") if name in first else (len(first), name)


def _verdict(value: float | None, target: float, higher_is_better: bool = True, by_cpu: float | None = None) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value < target
    if met:
        return "**met**"
    missed_by = (target / value if higher_is_better else value / target) if value else float("inf")
    text = f"**missed** (×{missed_by:.2f} short)"
    if by_cpu is not None and by_cpu >= target:
        text = f"**missed by req/s** (×{missed_by:.2f} short)"
        text += "; met by CPU per request: the server did not get a full core in some runs (see server cores)"
    return text


def _audit_ratio(results: dict[str, Any]) -> tuple[float | None, str, bool]:
    """Audit on / off: with both servers saturated when the run has that pair, else under the
    table's connections; the text gives both, and how busy each serving thread was."""
    http = results.get("http", {})
    table_ratio, saturated = ratios(http, "Encrypt", AUDIT_OFF), ratios(http, SATURATED, AUDIT_OFF)
    ratio = saturated if saturated is not None else table_ratio
    audit = http.get("audit_bytes", {})
    if not results["features"].get("audit trail (durable spool)") or not audit.get(KEYTRAIL):
        return ratio, "the audit trail is not wired into `keytrail serve` in this build: both ran without it", False
    if audit.get(AUDIT_OFF):
        note = (f"`KEYTRAIL_AUDIT=off` is not honoured by this build (the audit-off server wrote "
                f"{audit[AUDIT_OFF]:,} bytes of audit data): the ratio compares two audited servers")
        return ratio, note, False
    others = [(NODE, "the scale-out API node (`--no-detector`)"),
              (EMBEDDED, "the default `serve` (embedded log, no Kafka)")]
    others_text = "".join(_other_ratio(http, target, label) for target, label in others)
    spool = f"audit on wrote {audit[KEYTRAIL]:,} bytes of spool; audit off wrote none"
    if saturated is None:
        return ratio, f"{spool}{others_text}", True
    connections = results["method"]["connections"]
    return ratio, (f"with both saturated by wrk -c{SATURATING_CONNECTIONS} (serving threads busy "
                   f"{_busy_text(http, KEYTRAIL, SATURATED)} and {_busy_text(http, AUDIT_OFF, SATURATED)}); "
                   f"{_ratio_text(None if table_ratio is None else table_ratio * 100, 0, ' %')} under the table's "
                   f"wrk -c{connections}, where each audited answer waits on its group commit and the audited "
                   f"thread idles (busy {_busy_text(http, KEYTRAIL, 'Encrypt')} against "
                   f"{_busy_text(http, AUDIT_OFF, 'Encrypt')}){others_text}; {spool}"), True


def _other_ratio(http: dict[str, Any], target: str, label: str) -> str:
    """The text for `target` in the audit row: its saturated ratio and its table ratio (or only the
    table's when the run has no saturated pair); empty when it was not measured."""
    table = ratios(http, "Encrypt", AUDIT_OFF, mine_target=target)
    saturated = ratios(http, SATURATED, AUDIT_OFF, mine_target=target)
    if table is None:
        return ""
    if saturated is None:
        return f"; {label}: {table * 100:.0f} %"
    return f"; {label}: {saturated * 100:.0f} % saturated, {table * 100:.0f} % under the table's connections"


def _busy_text(http: dict[str, Any], target: str, operation: str) -> str:
    share = _busy_share(_runs(http, target, operation))
    return "n/a" if share is None else f"{share:.2f}"


def targets_table(results: dict[str, Any]) -> list[str]:
    http = results.get("http", {})
    to_moto, to_ceiling = ratios(http, "Encrypt", MOTO), ratios(http, "Encrypt", CEILING)
    at80 = http.get("open_loop") or {}
    p99 = at80.get("p99_ms")
    audit_ratio, audit_note, audit_valid = _audit_ratio(results)
    audit_pct = None if audit_ratio is None else audit_ratio * 100
    cpu_moto, cpu_ceiling = cpu_ratio(http, "Encrypt", MOTO), cpu_ratio(http, "Encrypt", CEILING)
    ceiling_pct = None if to_ceiling is None else to_ceiling * 100
    cpu_ceiling_pct = None if cpu_ceiling is None else cpu_ceiling * 100
    sustained = at80.get("achieved_rps", 0) >= 0.95 * at80.get("target_rps", float("inf"))
    return [
        "| Target | Measured (req/s ratio · by CPU per request) | Verdict |", "|---|---|---|",
        f"| Encrypt, everything on ≥ 10× moto | {_ratio_text(to_moto)} · {_ratio_text(cpu_moto)} | "
        f"{_verdict(to_moto, 10, by_cpu=cpu_moto)} |",
        f"| Encrypt ≥ 25 % of the bare ASGI ceiling | {_ratio_text(ceiling_pct, 0, ' %')} · "
        f"{_ratio_text(cpu_ceiling_pct, 0, ' %')} | {_verdict(ceiling_pct, 25, by_cpu=cpu_ceiling_pct)} |",
        f"| p99 < 10 ms at 80 % of the maximum rate | {_num(p99, 2)} ms{_median_of(at80)} at "
        f"{_num(at80.get('achieved_rps'))} of "
        f"{_num(at80.get('target_rps'))} req/s (open loop{'' if sustained else ', rate not sustained'}) | "
        f"{_verdict(p99, 10, higher_is_better=False)} |",
        f"| Audit on ≥ 70 % of audit off (Encrypt) | {_ratio_text(audit_pct, 0, ' %')} ({audit_note}) | "
        f"{_verdict(audit_pct, 70) if audit_valid else 'not measured'} |",
        _consumer_row(results),
        _alarm_row(http.get("alarm_latency") or {}),
    ]


def _alarm_row(alarm: dict[str, Any]) -> str:
    label = "Alarm on MQTT p99 < 2 s after a denied call, at 1,000 req/s background load (detector issue)"
    if not alarm.get("alarms"):
        return f"| {label} | {alarm.get('status', 'not measured')} | not measured |"
    # A denied call whose alarm never came is a miss, however fast the others were.
    missing = alarm["denied_calls"] - alarm["alarms"]
    verdict = f"**missed** ({missing} alarm(s) never arrived)" if missing else _verdict(alarm["p99_ms"], 2000, False)
    return (f"| {label} | p50 {_num(alarm['p50_ms'])} ms, p99 {_num(alarm['p99_ms'])} ms, max {_num(alarm['max_ms'])} "
            f"ms ({alarm['alarms']} of {alarm['denied_calls']} alarms) | {verdict} |")


def consumer_figures(output: str) -> dict[str, Any] | None:
    """The JSON line of bench/pipeline_throughput.py's output (events, events_per_cpu_s, …), if it
    printed one."""
    for line in reversed(output.splitlines()):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            figures = json.loads(line)
            if figures.get("events_per_cpu_s") is not None:
                return dict(figures)
    return None


def _consumer_row(results: dict[str, Any]) -> str:
    entry = results.get("pipeline", {}).get("pipeline_throughput.py", {})
    figures = consumer_figures(entry.get("output", "")) if entry.get("status") == "ran" else None
    if figures is None:
        return f"| Consumers ≥ 100,000 events/s on one core | {entry.get('status', 'not measured')} | not measured |"
    rate = float(figures["events_per_cpu_s"])
    return (f"| Consumers ≥ 100,000 events/s on one core | {_num(rate)} events per CPU second over "
            f"{_num(figures.get('events', 0))} events (bench/pipeline_throughput.py) | {_verdict(rate, 100_000)} |")


def scale_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = ["| Keys | Workers | Encrypt req/s | p99 ms | CPU µs/req | RSS peak by the start MB | RSS idle MB "
             "| RSS under load MB | start s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "rps" not in row:
            lines.append(f"| {_num(row.get('keys'))} | {row.get('workers', '')} | "
                         f"{row.get('skipped') or row.get('error')} | | | | | | |")
            continue
        peak = row.get("rss_start_peak_mb")  # not in the results of runs before it was measured
        lines.append(f"| {_num(row['keys'])} | {row['workers']} | {_num(row['rps'])} | {_num(row['p99_ms'], 2)} | "
                     f"{_num(row.get('cpu_us_per_request'))} | {_num(peak) if peak is not None else ''} | "
                     f"{_num(row['rss_idle_mb'])} | {_num(row['rss_mb'])} | {_num(row['startup_s'], 1)} |")
    return lines


def profile_section(profile: dict[str, Any]) -> list[str]:
    if "stages" not in profile:
        return [f"Profile not taken: {profile.get('error', 'no data')}"]
    lines = [f"Encrypt from 16 concurrent callers straight into the node's ASGI app (no server, no network), "
             f"node built as `serve` builds it: **{profile['us_per_call']:.0f} µs of CPU per call** "
             f"({profile.get('wall_us_per_call', 0):.0f} µs wall) over {profile['calls']:,} calls; add the ceiling's "
             "CPU µs/req for the server stack. Each stage's share of the event-loop thread's busy time "
             "(pyinstrument, inclusive; waiting excluded), and that share of the CPU per call. Stages of the "
             "call are nested in *whole KMS call*; *background* rows are the node's own tasks:", "",
             "| Stage | share | ≈ µs per call |", "|---|---:|---:|"]
    for name, stage in sorted(profile["stages"].items(), key=lambda item: -item[1]["share"]):
        if stage["share"] < 0.005:
            continue
        lines.append(f"| {name} | {stage['share'] * 100:.0f} % | {stage['us']:.1f} |")
    tree = profile.get("tree", "").strip()
    return [*lines, "", "<details><summary>pyinstrument call tree</summary>", "", "```", tree, "```", "", "</details>"]


def pipeline_section(pipeline: dict[str, Any]) -> list[str]:
    lines = []
    for name, entry in pipeline.items():
        lines.append(f"**bench/{name}**: {entry['status']}")
        if entry.get("output"):
            lines += ["", "```", entry["output"], "```"]
        if entry.get("stderr"):
            lines += ["", "stderr:", "```", entry["stderr"], "```"]
        lines.append("")
    return lines


def machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    versions = ", ".join(f"{name} {version}" for name, version in machine["versions"].items())
    built = ", ".join(f"{name}: {'yes' if present else 'no'}" for name, present in results["features"].items())
    load = ", ".join(f"{v:.2f}" for v in machine["load_average"])
    load_end = ", ".join(f"{v:.2f}" for v in machine.get("load_average_end", ()))
    phases = ", ".join(f"{name} {seconds:g} s" for name, seconds in results.get("phase_seconds", {}).items())
    return [f"- Run {results['started']} on commit `{machine['commit']}`, {results.get('elapsed_s', '?')} s in all"
            f"{f' ({phases})' if phases else ''}.",
            f"- {machine['nproc']} CPUs ({machine['cpu']}), {machine['memory_gib']} GiB RAM, {machine['os']}, "
            f"Python {machine['python']}; load average (1, 5, 15 min) at start {load}, at the end {load_end or 'n/a'} "
            "(a shared machine: compare ratios).",
            f"- Versions: {versions}.",
            f"- Parts of keytrail in this build: {built}; Kafka shipping to tansu during the run: "
            f"{'yes' if results.get('kafka') else 'no'}."]


def open_loop_line(at80: dict[str, Any], wrk_serving_cpu_us: Mapping[str, float] | None = None) -> str:
    """The open-loop paragraph; `wrk_serving_cpu_us`: each target's serving-thread CPU µs per Encrypt under
    wrk (`KEYTRAIL` for the target measured), set beside what the same thread spent in the open loop."""
    under_wrk_of = wrk_serving_cpu_us or {}
    if "p99_ms" not in at80:
        return f"Open loop at 80 % not measured: {at80.get('error', 'no data')}"
    line = (f"Open loop at 80 % of keytrail's Encrypt maximum (the lower of the table's median and a wrk "
            f"run just before it: {_num(at80.get('max_rps'))} req/s){_rounds_text(at80)}: "
            f"{_num(at80['target_rps'])} req/s asked, {_num(at80['achieved_rps'])} achieved, "
            f"{at80['completed']:,} requests: p50 {_num(at80['p50_ms'], 2)} ms, p99 **{_num(at80['p99_ms'], 2)} ms**, "
            f"p99.9 {_num(at80['p999_ms'], 2)} ms, max {_num(at80['max_ms'], 2)} ms; statuses {at80['statuses']}.")
    if "serving_busy" not in at80:
        return line
    against = _under_wrk(under_wrk_of.get(KEYTRAIL))
    if against:
        against += " (the table below)"
    line += (f" Its serving thread was busy {at80['serving_busy']:.2f} of a core, at "
             f"{_num(at80['serving_cpu_us'], 1)} µs of CPU per request{against}: "
             "requests arriving one by one are each handled in a loop pass of their own, often just after the "
             "thread slept, and share fewer fsyncs than wrk's 16 at a time (the servers beside it, below, show "
             "what the first costs without the second). The generator (bench/openloop.py, mostly the kernel's "
             f"loopback TCP) took {_num(at80['generator_cpu_us'], 1)} µs per request of the same two cores.")
    if commits := _commit_text(at80.get("group_commits") or {}):
        line += f" The audit spool during this run: {commits}."
    same_rate = (at80.get("same_rate") or {}).items()
    if references := [_same_rate_text(name, run, under_wrk_of.get(name)) for name, run in same_rate]:
        line += (" The same rate against the servers beside it, for what this machine's tail is without the "
                 "audit trail and without any KMS work: " + "; ".join(references) + ".")
    return line


def _median_of(run: dict[str, Any]) -> str:
    p99s = run.get("rounds_p99_ms") or []
    return f" (median of {len(p99s)} rounds)" if len(p99s) > 1 else ""


def _rounds_text(run: dict[str, Any]) -> str:
    """Which of several rounds a run's figures are, when there were several."""
    p99s = run.get("rounds_p99_ms") or []
    if len(p99s) < 2:
        return ""
    return (f", the round of median p99 of {len(p99s)} interleaved rounds (p99 "
            + " / ".join(f"{_num(p99, 2)}" for p99 in p99s) + " ms)")


def _under_wrk(cpu_us: float | None) -> str:
    return f" against {_num(cpu_us, 1)} under wrk" if cpu_us else ""


def _same_rate_text(name: str, run: dict[str, Any], wrk_serving_cpu_us: float | None = None) -> str:
    if "p99_ms" not in run:
        return f"{name} not measured ({run.get('error', 'no data')})"
    rounds = run.get("rounds_p99_ms") or []
    each = f" (rounds {' / '.join(_num(p99, 2) for p99 in rounds)})" if len(rounds) > 1 else ""
    cpu = (f", {_num(run['serving_cpu_us'], 1)} µs of CPU per request{_under_wrk(wrk_serving_cpu_us)}"
           if "serving_cpu_us" in run else "")
    return (f"{name} p99 {_num(run['p99_ms'], 2)} ms{each}, max {_num(run['max_ms'], 2)} ms, serving thread busy "
            f"{run['serving_busy']:.2f}{cpu}")


def http_section(results: dict[str, Any]) -> list[str]:
    http, method = results.get("http", {}), results["method"]
    rounds = http.get("rounds", method["rounds"])  # fewer than asked when the time budget was short
    return [f"wrk -t1 -c{method['connections']}, {rounds} interleaved rounds of {method['warmup_s']:g} s "
            f"warm-up + {method['seconds']:g} s measured, medians; ratios are medians of per-round ratios. "
            "The ceiling is one fixed answer, so every keytrail operation is compared with its Encrypt row. "
            "*server cores* is the CPU the server got during the run: below 1, other processes took its share.",
            "", *http_table(http), "", open_loop_line(http.get("open_loop") or {}, _wrk_serving_cpu_us(http)), "",
            "Where that CPU went, by part of each keytrail server (from /proc: the serving process's main "
            "thread, which runs the event loop, in user and system time; its other threads; each child "
            "process), medians over the rounds; the Kafka broker's own CPU is not included:", "",
            *cpu_parts_table(http), "", group_commit_line(http.get("group_commits") or {})]


BEGIN = "<!-- scripts/bench: generated from here to the end marker; edit bench/report*.py instead -->"
END = "<!-- scripts/bench: end of the generated part -->"


def render(results: dict[str, Any]) -> str:
    """The generated part of docs/benchmarks.md, between its markers."""
    lines = [BEGIN, "## The suite: keytrail against moto and the bare ASGI ceiling (`scripts/bench`)", "",
             "Regenerated by every `scripts/bench` run; raw figures in `bench/results/latest.json` (git-ignored).",
             "", "### Targets", "", *targets_table(results), "",
             "### HTTP: keytrail against moto and the ceiling", "", *http_section(results), "",
             "### Scale: keys and worker processes", "", *scale_table(results.get("scale", [])), "",
             "### Where the time goes (Encrypt profile)", "", *profile_section(results.get("profile", {})), "",
             "### Pipeline and detector", "", *pipeline_section(results.get("pipeline", {})),
             "### What limits each figure", "", LIMITS, "", "### Method", "", METHOD, "", "### Machine", "",
             *machine_section(results), END]
    return "\n".join(lines)


def splice(document: str | None, block: str) -> str:
    """`document` with its generated part replaced by `block`; other sections are kept as they are
    (other benchmarks write their own sections of docs/benchmarks.md by hand)."""
    if not document:
        return f"# Benchmarks\n\n{block}\n"
    if BEGIN in document and END in document:
        head, _, rest = document.partition(BEGIN)
        return head + block + rest.partition(END)[2]
    lines = document.split("\n")
    title = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
    return "\n".join([*lines[:title + 1], "", block, "", *lines[title + 1:]]).replace("\n\n\n\n", "\n\n")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("results") / "latest.json"
    sys.stdout.write(render(json.loads(source.read_text())) + "\n")
