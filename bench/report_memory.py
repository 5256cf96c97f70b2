"""Benchmark: peak memory and wall time of the offline reports over a month of a large account.

    PYTHONPATH=src:. python bench/report_memory.py --events 300000   # data dir /tmp/keytrail-bench-report-300000

Phase 1 (not measured) writes generated events spread over one month (many keys and principals)
to the data dir's event log and runs `keytrail consume --no-follow` over it, or reuses the data
dir an earlier run left in --workdir for the same count, settings and generator (`stamp.json`).
Phase 2 runs each command in its own process: `keytrail report --out report.html`,
`--out report.json`, `keytrail cost --free-tier --format json`, and prints per command its peak
RSS (the child's own `ru_maxrss`, from wait4), its wall time and a SHA-256 of what it wrote (the
HTML page's "generated <time>" left out), so runs before and after a change show the same answers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

from keytrail.pipeline.synthetic import SyntheticSettings, generate_events

_MONTH_SECONDS = 30 * 86_400
_START = datetime(2026, 10, 1, tzinfo=UTC)


def settings_for(count: int) -> SyntheticSettings:
    """`count` events over 30 days from 3,000 keys and 1,500 principals of 8 accounts, mildly skewed."""
    return SyntheticSettings(keys=3_000, principals=1_500, accounts=8, start=_START,
                             seconds_per_event=_MONTH_SECONDS / count, skew=1.5, lifecycle_share=0.0005)


def prepare(workdir: Path, count: int) -> bool:
    """Write and consume `count` events into the data dir `workdir`; False when it already holds them."""
    stamp = _stamp(count)
    if (workdir / "stamp.json").exists() and (workdir / "stamp.json").read_text() == stamp:
        return False
    if workdir.exists():
        shutil.rmtree(workdir)
    _write_log(workdir, count)
    keytrail = [sys.executable, "-m", "keytrail"]
    subprocess.run([*keytrail, "consume", "--data-dir", str(workdir), "--no-follow"], check=True,
                   stderr=subprocess.DEVNULL)
    (workdir / "stamp.json").write_text(stamp)  # last: a data dir cut short by ^C is never reused
    return True


def _write_log(workdir: Path, count: int) -> None:
    from keytrail.audit.schema import encode
    from keytrail.pipeline.consumer import event_log_dir
    from keytrail.transport.segment_log import SegmentLog

    log = SegmentLog(event_log_dir(workdir), writable=True)
    events = generate_events(count, settings_for(count), seed=3)
    while chunk := list(islice(events, 50_000)):
        log.append([encode(e) for e in chunk])
    log.sync()
    log.close()


def _stamp(count: int) -> str:
    """What the data dir depends on: the count, the settings and the generating and consuming code."""
    import keytrail.audit.schema as schema
    import keytrail.pipeline.synthetic as synthetic

    sources = hashlib.sha256()
    for module in (synthetic, schema):
        sources.update(Path(str(module.__file__)).read_bytes())
    return json.dumps({"events": count, "settings": repr(settings_for(count)), "code": sources.hexdigest()})


def measure(name: str, args: list[str], output: Path) -> dict[str, Any]:
    """Run one keytrail command; its peak RSS (its own ru_maxrss from wait4), wall time and the
    digest of what it wrote (its file, else its stdout)."""
    output.unlink(missing_ok=True)
    stdout = output.with_name(output.name + ".stdout")
    started = time.perf_counter()
    with stdout.open("wb") as sink:
        pid = subprocess.Popen([sys.executable, "-m", "keytrail", *args], stdout=sink,
                               stderr=subprocess.DEVNULL).pid
        _, status, usage = os.wait4(pid, 0)  # reaped here, not by Popen: its rusage is this child's alone
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{name} failed with exit status {os.waitstatus_to_exitcode(status)}")
    body = output.read_bytes() if output.exists() else stdout.read_bytes()
    return {"command": name, "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "wall_s": round(wall, 2),
            "sha256": hashlib.sha256(_stable(body)).hexdigest()[:16]}


def _stable(body: bytes) -> bytes:
    """`body` without what changes from run to run (when the HTML page was generated)."""
    return re.sub(rb"generated [^<]*", b"generated X", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--runs", type=int, default=1, help="measure each command this many times (median)")
    args = parser.parse_args()
    workdir = args.workdir or Path(f"/tmp/keytrail-bench-report-{args.events}")
    started = time.perf_counter()
    state = "wrote and consumed" if prepare(workdir, args.events) else "reused"
    print(f"{state} {args.events} events in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    data = ["--data-dir", str(workdir)]
    commands = {
        "report --out report.html": (["report", *data, "--out", str(workdir / "report.html")], workdir / "report.html"),
        "report --out report.json": (["report", *data, "--out", str(workdir / "report.json")], workdir / "report.json"),
        "cost --free-tier --format json": (["cost", *data, "--free-tier", "--format", "json"], workdir / "cost.json"),
    }
    results = []
    for name, (command, output) in commands.items():
        runs = sorted((measure(name, command, output) for _ in range(args.runs)), key=lambda r: r["wall_s"])
        results.append({**runs[len(runs) // 2], "runs_peak_rss_mb": [r["peak_rss_mb"] for r in runs]})
    print(json.dumps({"events": args.events, "results": results}, indent=1))


if __name__ == "__main__":
    main()
