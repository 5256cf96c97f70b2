"""A/B of `keytrail serve` builds or options under wrk: servers side by side, loaded in alternation.

    PYTHONPATH=src:. python -m bench.ab [--rounds 10] [--seconds 4] NAME=SRC[:ARG,ARG,env.VAR=VALUE] ...

Each NAME is one server: `keytrail serve` run from the source tree SRC (a `src` folder: another
checkout, or `git archive HEAD src schemas | tar -x -C /tmp/base` for the last commit) with the
serve options ARGs (commas between them: `--kafka,127.0.0.1:9092`, `--no-audit`) and environment
variables `env.VAR=VALUE`. Every server runs as `serve` runs by default (consumer and detector as
child processes) and gets one pre-signed Encrypt replayed by wrk -t1 -c16 (`--connections`) per round (with
`--open-loop RATE`: sent at RATE requests/s by bench/openloop.py, and each round also reports
p99 latency and the audit spool's records per fsync); rounds visit
the servers in turn, so a shared machine's slow minutes fall on all of them. Printed per server:
median req/s with every round's, CPU µs per call by part (bench/procs.py), how busy the serving
thread was, and each server's median per-round ratio against the first. On this kind of VM one
configuration moves ±25 % between rounds: trust medians of 8 or more rounds, not one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.server import PRINCIPALS, KeytrailServer

from bench.audit_e2e import presigned, wrk_rate
from bench.phases import group_commits
from bench.presign import Signer, write_requests
from bench.procs import busy_share, cpu_by_part, cpu_per_request


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    source: Path
    serve_args: tuple[str, ...]
    environment: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> Variant:
        name, _, rest = spec.partition("=")
        source, _, options = rest.partition(":")
        serve_args: list[str] = []
        environment: dict[str, str] = {}
        for option in filter(None, options.split(",")):
            if option.startswith("env."):
                variable, _, value = option.removeprefix("env.").partition("=")
                environment[variable] = value
            else:
                serve_args.append(option)
        return cls(name, Path(source), tuple(serve_args), environment)


@dataclass(frozen=True, slots=True)
class Round:
    rate: float
    cpu_us: dict[str, float]  # CPU µs per call by part
    p99_ms: float | None = None  # open loop only
    records_per_fsync: float | None = None  # open loop only

    @property
    def busy(self) -> float:
        """The share of a core the serving thread was busy (below 1: its loop waited)."""
        return busy_share(self.cpu_us, self.rate)


def _start(variant: Variant, folder: Path) -> KeytrailServer:
    saved = dict(os.environ)
    os.environ.update(variant.environment, PYTHONPATH=f"{variant.source.resolve()}:.")
    try:
        return KeytrailServer(folder / variant.name, *variant.serve_args, dev_clock=False).start()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _round(server: KeytrailServer, request: tuple[dict[str, str], bytes], seconds: int, connections: int,
           folder: Path) -> Round:
    assert server.proc is not None
    before = cpu_by_part(server.proc.pid)
    rate, calls = wrk_rate(server.endpoint, request, seconds, connections, folder)
    after = cpu_by_part(server.proc.pid)
    return Round(rate, cpu_per_request(before, after, calls))


def _open_loop_round(server: KeytrailServer, key_id: str, rate: float, seconds: int, folder: Path) -> Round:
    """One run of bench/openloop.py at `rate` (its own process, like wrk), freshly signed."""
    assert server.proc is not None
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    signer = Signer(server.endpoint, access_key, secret)
    # The body wrk replays (bench/audit_e2e.py): a Plaintext of "eA==" * 16, base64 that does not
    # decode, had every open-loop call refused with a 400, uncounted, since the option came in.
    params = {"KeyId": key_id, "Plaintext": base64.b64encode(b"x" * 64).decode(),
              "EncryptionContext": {"Department": "Engineering"}}
    requests = write_requests(folder / "openloop.txt", [signer.raw("Encrypt", params)])
    before, commits_before = cpu_by_part(server.proc.pid), group_commits(server.endpoint)
    done = subprocess.run([sys.executable, "-m", "bench.openloop", "--port", server.endpoint.rsplit(":", 1)[1],
                           "--requests", str(requests), "--rate", str(rate), "--seconds", str(seconds)],
                          capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if set(result["statuses"]) != {"200"}:  # as wrk_rate refuses non-2xx answers
        raise RuntimeError(f"Encrypt failed under the open loop: {result['statuses']}")
    commits = group_commits(server.endpoint)
    fsyncs = commits.get("keytrail_audit_fsync_seconds_count", 0.0) - commits_before.get(
        "keytrail_audit_fsync_seconds_count", 0.0)
    records = commits.get("keytrail_audit_committed_records_total", 0.0) - commits_before.get(
        "keytrail_audit_committed_records_total", 0.0)
    cpu = cpu_per_request(before, cpu_by_part(server.proc.pid), result["completed"])
    return Round(result["achieved_rps"], cpu, result["p99_ms"], records / fsyncs if fsyncs else None)


def _report(results: dict[str, list[Round]]) -> None:
    for name, rounds in results.items():
        parts = sorted({part for r in rounds for part in r.cpu_us})
        cpu = {part: statistics.median(r.cpu_us.get(part, 0.0) for r in rounds) for part in parts}
        print(f"{name}: median {statistics.median(r.rate for r in rounds):,.0f} req/s "
              f"{[round(r.rate) for r in rounds]}; CPU µs per call "
              + ", ".join(f"{part} {value:.0f}" for part, value in cpu.items())
              + f", total {sum(cpu.values()):.0f}; serving thread busy {statistics.median(r.busy for r in rounds):.2f}")
        if p99s := [r.p99_ms for r in rounds if r.p99_ms is not None]:
            groups = [r.records_per_fsync for r in rounds if r.records_per_fsync is not None]
            print(f"  open loop p99 median {statistics.median(p99s):.1f} ms {[round(p, 1) for p in p99s]}"
                  + (f"; records per fsync {statistics.median(groups):.2f}" if groups else ""))
    base, *others = results
    for name in others:
        ratios = [mine.rate / theirs.rate for mine, theirs in zip(results[name], results[base], strict=True)]
        print(f"{name} / {base}: median {statistics.median(ratios):.3f} {[round(ratio, 2) for ratio in ratios]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=4, help="wrk seconds per server per round")
    parser.add_argument("--connections", type=int, default=16, help="wrk's connections (the suite uses 16)")
    parser.add_argument("--open-loop", type=float, metavar="RATE", help="requests/s sent open loop instead of wrk")
    parser.add_argument("variants", nargs="+", metavar="NAME=SRC[:ARGS]")
    args = parser.parse_args()
    variants = [Variant.parse(spec) for spec in args.variants]
    results: dict[str, list[Round]] = {variant.name: [] for variant in variants}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        servers: dict[str, KeytrailServer] = {}
        try:
            for variant in variants:
                servers[variant.name] = _start(variant, folder)
            requests, keys = {}, {}
            for name, server in servers.items():
                keys[name] = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
                requests[name] = presigned(server.endpoint, keys[name])
                wrk_rate(server.endpoint, requests[name], 2, args.connections, folder)  # warm-up
            for _ in range(args.rounds):
                for name, server in servers.items():
                    if args.open_loop:
                        round_ = _open_loop_round(server, keys[name], args.open_loop, args.seconds, folder)
                    else:
                        round_ = _round(server, requests[name], args.seconds, args.connections, folder)
                    results[name].append(round_)
        finally:
            for server in servers.values():
                server.stop()
    _report(results)


if __name__ == "__main__":
    main()
