"""Micro-benchmark: reading gzip CloudTrail log files of KMS records, records per second, one core.

    python bench/cloudtrail_read.py --workdir /tmp/ct-bench --rounds 5

Writes (once, reused while the count matches) `--files` gzip CloudTrail log files of `--records`
generated KMS records each (keytrail.pipeline.synthetic: ≈1.1 KB a record, as AWS writes them),
then reads them all `--rounds` times the way every reader does (`iter_located_records`:
LogFile.records then readable_records, the path of `audit import`, `consume --cloudtrail`,
`report --cloudtrail`; `detect --cloudtrail` calls the same two). Prints one JSON line per round
and a last one with the medians: wall and CPU seconds, records per second.

To compare two trees, run it with each tree's src first on PYTHONPATH, alternating (the machine
is shared: interleave and compare medians), over the same --workdir.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import time
from pathlib import Path

from keytrail.pipeline.synthetic import generate_events
from keytrail.transport.cloudtrail_logs import ReadReport, iter_located_records


def write_files(workdir: Path, files: int, records: int) -> Path:
    """The folder of log files; written only when missing or of other counts."""
    folder, stamp = workdir / "logs", workdir / "stamp.json"
    wanted = {"files": files, "records": records}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json.gz"):
        old.unlink()
    events = generate_events(files * records)
    for number in range(files):
        document = {"Records": [next(events) for _ in range(records)]}
        name = f"111122223333_CloudTrail_us-east-1_20261001T{number:04d}Z_bench.json.gz"
        (folder / name).write_bytes(gzip.compress(json.dumps(document).encode(), compresslevel=6))
    stamp.write_text(json.dumps(wanted))
    return folder


def read_round(folder: Path) -> dict[str, float]:
    report = ReadReport()
    wall, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in iter_located_records([folder], report=report))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if report.problems or count != report.records:
        raise SystemExit(f"unexpected read: {count} records, problems {list(report.problems)[:3]}")
    return {"records": count, "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "records_per_s": round(count / wall)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="where the log files are written and kept")
    parser.add_argument("--files", type=int, default=2)
    parser.add_argument("--records", type=int, default=50_000, help="KMS records per file")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    folder = write_files(args.workdir, args.files, args.records)
    rounds = [read_round(folder) for _ in range(args.rounds)]
    for number, result in enumerate(rounds):
        print(json.dumps({"round": number, **result}), flush=True)
    print(json.dumps({"median_wall_s": statistics.median(r["wall_s"] for r in rounds),
                      "median_cpu_s": statistics.median(r["cpu_s"] for r in rounds),
                      "median_records_per_s": round(statistics.median(r["records_per_s"] for r in rounds))}))


if __name__ == "__main__":
    main()
