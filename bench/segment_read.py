"""Micro-benchmark: CPU µs per record to read the embedded event log, one core.

    python bench/segment_read.py --workdir /tmp/lu-bench-1m

Reads an existing log (e.g. one written by `bench/pipeline_throughput.py`) to its end, three
ways: `SegmentLog.read` (checksums and payloads), the consumer's source (`SegmentLogSource`,
one segment per batch) and the source plus the Avro decode of each batch. Prints one JSON line
per way: records, CPU µs per record (user + system) and the peak RSS of the process so far.
"""

from __future__ import annotations

import os

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # before polars is imported: one core

import argparse
import asyncio
import json
import resource
from collections.abc import Callable
from pathlib import Path

from keytrail.pipeline.decode import avro_frame
from keytrail.pipeline.segment_source import SegmentLogSource
from keytrail.transport.segment_log import SegmentLog, event_log_dir


def read_log(directory: Path, batch: int) -> int:
    log, offset, records = SegmentLog(directory), 0, 0
    while rows := log.read(offset, batch):
        offset, records = rows[-1][0] + 1, records + len(rows)
    return records


def read_source(directory: Path, batch: int, decode: bool = False) -> int:
    async def run() -> int:
        records = 0
        async for got in SegmentLogSource(directory, max_records=batch).batches(lambda _: 0):
            records += avro_frame(got.values).height if decode else len(got.offsets)
        return records

    return asyncio.run(run())


def measure(name: str, work: Callable[[], int]) -> dict[str, object]:
    before = _cpu_seconds()
    records = work()
    cpu = _cpu_seconds() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"way": name, "records": records, "cpu_us_per_record": round(cpu * 1e6 / records, 3),
            "peak_rss_mb": round(peak, 1)}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True, help="holds audit/log (the bench's --workdir)")
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--way", choices=["log", "source", "decode"], action="append",
                        help="what to measure (repeatable; default all three)")
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    directory = event_log_dir(args.workdir)
    ways: dict[str, Callable[[], int]] = {
        "log": lambda: read_log(directory, args.batch),
        "source": lambda: read_source(directory, args.batch),
        "decode": lambda: read_source(directory, args.batch, decode=True),
    }
    for way in args.way or list(ways):
        print(json.dumps(measure(way, ways[way])), flush=True)


if __name__ == "__main__":
    main()
