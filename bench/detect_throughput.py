"""Offline detection throughput over 1M generated CloudTrail KMS events.

    PYTHONPATH=src:. python bench/detect_throughput.py [--events 1000000] [--files]

Prints events/s for the detector alone (records streamed from a generator whose own cost is
measured and reported separately) and, with --files, for the whole offline path
(`keytrail detect --cloudtrail` over .json.gz CloudTrail log files).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.unit.detect.records import T0, denied, event, key_arn, role, user

from keytrail.detect import Detector, RuleSet

CRYPTO = ("Decrypt", "Encrypt", "GenerateDataKey")


def templates(count: int = 5_000, seed: int = 7) -> list[dict[str, Any]]:
    """Distinct calls: 1,000 keys x 200 principals; ~1% denied, ~0.5% management reads."""
    rng = random.Random(seed)
    principals = [role(f"app{i}") for i in range(150)] + [user(f"user{i}") for i in range(50)]
    out = []
    for _ in range(count):
        key, who, roll = key_arn(rng.randrange(1000)), rng.choice(principals), rng.random()
        if roll < 0.01:
            out.append(denied("Decrypt", T0, key, who))
        elif roll < 0.015:
            out.append(event("DescribeKey", T0, key, who))
        else:
            out.append(event(rng.choice(CRYPTO), T0, key, who))
    return out


def stream(n: int, pool: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """n records over one day, in time order, each a shallow copy with its own eventID/eventTime."""
    step = 86_400 / n
    for i in range(n):
        at = T0 + timedelta(seconds=i * step)
        yield dict(pool[i % len(pool)], eventID=f"b-{i:010d}", eventTime=at.strftime("%Y-%m-%dT%H:%M:%SZ"))


def bench_detector(n: int) -> None:
    pool = templates()
    started = time.perf_counter()
    for _ in stream(n, pool):
        pass
    generation = time.perf_counter() - started
    detector = Detector(RuleSet())
    started = time.perf_counter()
    detector.process(stream(n, pool))
    detector.tick()
    total = time.perf_counter() - started
    rate = n / (total - generation)
    print(
        f"detector: {n:,} events in {total:.2f} s incl. {generation:.2f} s generation "
        f"-> {rate:,.0f} events/s ({len(detector.alarms())} alarms)"
    )


def bench_files(n: int, per_file: int = 50_000) -> None:
    from keytrail.cli.detect import run_offline

    pool = templates()
    with tempfile.TemporaryDirectory() as tmp:
        records = stream(n, pool)
        for index in range(0, n, per_file):
            chunk = [next(records) for _ in range(min(per_file, n - index))]
            Path(tmp, f"{index:09d}.json.gz").write_bytes(
                gzip.compress(json.dumps({"Records": chunk}).encode(), 1)
            )
        started = time.perf_counter()
        alarms = run_offline([Path(tmp)], RuleSet(), None).alarms
        total = time.perf_counter() - started
    print(
        f"offline (.json.gz files): {n:,} events in {total:.2f} s -> {n / total:,.0f} events/s "
        f"({len(alarms)} alarms)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--files", action="store_true", help="also time the .json.gz file path")
    args = parser.parse_args()
    bench_detector(args.events)
    if args.files:
        bench_files(args.events)


if __name__ == "__main__":
    main()
