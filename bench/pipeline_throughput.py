"""Benchmark: events/s from the embedded event log into usage, last-used and cost state, one core.

    python bench/pipeline_throughput.py --events 1000000 --workdir /tmp/bench-pipeline

Phase 1 (not timed) writes generated events, Avro single-object encoded, to a segment log in
streaming chunks (≈ 60 µs an event: a minute and more for a million on a slow machine), or reuses
the log an earlier run left in --workdir when it was written by the same generator, settings,
schema and count (its `stamp.json` says so). Phase 2 runs in a fresh process pinned to one CPU (POLARS_MAX_THREADS=1):
the consumer reads the log to its end; it prints events/s and its peak RSS. Phase 2 runs `--runs`
times (3) over the same log and the median run is printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported: one core

import argparse
import asyncio
import hashlib
import json
import resource
import shutil
import subprocess
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

from keytrail.pipeline.synthetic import SyntheticSettings, generate_events

# 500 events/s of event time from 300 keys and 60 principals, skewed like real traffic (a few hot
# key x principal pairs), with rotations, deletions, denied calls, late events and duplicates.
SETTINGS = SyntheticSettings(
    keys=300, principals=60, accounts=4, seconds_per_event=0.002, skew=3.0, lifecycle_share=0.00002
)


def write_log(workdir: Path, count: int) -> bool:
    """Write `count` generated events to the event log in `workdir`; False when the log already
    there holds exactly these events (same stamp), which is then reused."""
    from keytrail.audit.schema import encode
    from keytrail.pipeline.consumer import event_log_dir
    from keytrail.transport.segment_log import SegmentLog

    stamp = _stamp(count)
    if (workdir / "stamp.json").exists() and (workdir / "stamp.json").read_text() == stamp:
        return False
    if workdir.exists():
        shutil.rmtree(workdir)
    log = SegmentLog(event_log_dir(workdir), writable=True)
    events = generate_events(count, SETTINGS, seed=1)
    while chunk := list(islice(events, 50_000)):
        log.append([encode(e) for e in chunk])
    log.sync()
    log.close()
    (workdir / "stamp.json").write_text(stamp)  # last: a log cut short by ^C is never reused
    return True


def _stamp(count: int) -> str:
    """What the written log depends on: the count, the settings, and the code that generates and
    encodes the events (a changed generator or schema writes the log again)."""
    import keytrail.audit.schema as schema
    import keytrail.pipeline.synthetic as synthetic

    sources = hashlib.sha256()
    for module in (synthetic, schema):
        sources.update(Path(str(module.__file__)).read_bytes())
    sources.update(schema.SCHEMA_PATH.read_bytes())
    return json.dumps({"events": count, "settings": repr(SETTINGS), "seed": 1, "code": sources.hexdigest()})


def consume(workdir: Path, batch: int) -> dict[str, object]:
    from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer

    settings = ConsumerSettings(workdir, follow=False, max_records=batch, export_seconds=None)
    consumer = MetricsConsumer(settings)
    samples: list[tuple[int, float]] = []  # (records, RSS MB) at each checkpoint: flat means bounded
    consumer.runner.after_checkpoint = lambda: samples.append((consumer.runner.stats.records, _rss_mb()))
    started, cpu = time.perf_counter(), _cpu_seconds()
    stats = asyncio.run(consumer.run())
    elapsed, cpu = time.perf_counter() - started, _cpu_seconds() - cpu
    quarters = [samples[min(len(samples) - 1, len(samples) * q // 4)] for q in (1, 2, 3, 4)]
    return {
        "events": stats.records,
        "wall_s": round(elapsed, 2),
        "cpu_s": round(cpu, 2),
        "events_per_wall_s": round(stats.records / elapsed),
        "events_per_cpu_s": round(stats.records / cpu),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mb_at_quarters": [round(mb) for _, mb in quarters],
        "counted": stats.counted,
        "duplicates": stats.duplicates,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/keytrail-bench-pipeline"))
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--consume-only", action="store_true", help="reuse the log already in --workdir")
    parser.add_argument("--runs", type=int, default=3, help="consumer runs over the log; the median is reported")
    args = parser.parse_args()
    if args.consume_only:
        shutil.rmtree(args.workdir / "metrics", ignore_errors=True)
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
        print(json.dumps(consume(args.workdir, args.batch)))
        return
    started = time.perf_counter()
    if write_log(args.workdir, args.events):
        print(f"wrote {args.events} events in {time.perf_counter() - started:.1f}s", file=sys.stderr, flush=True)
    else:
        print(f"reused the {args.events} events already in {args.workdir}", file=sys.stderr, flush=True)
    env = {**os.environ, "POLARS_MAX_THREADS": "1"}
    command = [sys.executable, __file__, "--consume-only", "--workdir", str(args.workdir), "--batch", str(args.batch)]
    runs = [json.loads(subprocess.run(command, check=True, env=env, stdout=subprocess.PIPE, text=True).stdout)
            for _ in range(args.runs)]
    print(json.dumps(median_run(runs)))


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median events per CPU second, with every run's rate beside it (on a shared
    machine one run's rate moves by ±10 %)."""
    ordered = sorted(runs, key=lambda run: run["events_per_cpu_s"])
    return {**ordered[(len(ordered) - 1) // 2], "runs_events_per_cpu_s": [run["events_per_cpu_s"] for run in runs]}


if __name__ == "__main__":
    main()
