"""Encrypt calls per second through a real `keytrail serve`, audit trail on vs off, same run.

    PYTHONPATH=src:. python bench/audit_e2e.py [--calls 3000] [--rounds 3] [--concurrency 16] [--wrk SECONDS]

Two servers run side by side, as `serve` runs by default (the consumer and the detector as child
processes): one audited, one with the hidden `--no-audit` switch (ServeSettings.audit). Each round
sends the same pre-signed Encrypt request (SigV4, valid 5 minutes, replayed) `--calls` times to
each, interleaved, over keep-alive connections (httpx; with `--wrk SECONDS` and `wrk` installed,
wrk -t1 replays it for that long instead: a Python client cannot saturate the server). Reports
medians of calls/s, the serving process's CPU µs per call (utime+stime from /proc), how busy its
serving thread was (its CPU per call × calls/s: below 1 the loop waited) and the per-round ratio
on/off. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tests.support.server import PRINCIPALS, KeytrailServer

from bench.httpload import post_rate
from bench.procs import busy_share, cpu_by_part, cpu_per_request


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def presigned(endpoint: str, key_id: str) -> tuple[dict[str, str], bytes]:
    _, access_key, secret, _, _ = PRINCIPALS["alice"]
    body = json.dumps({"KeyId": key_id, "Plaintext": base64.b64encode(b"x" * 64).decode(),
                       "EncryptionContext": {"Department": "Engineering"}}).encode()
    request = AWSRequest("POST", endpoint + "/", data=body, headers={
        "X-Amz-Target": "TrentService.Encrypt", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(access_key, secret), "kms", "us-east-1").add_auth(request)
    return dict(request.headers.items()), body


def wrk_rate(endpoint: str, request: tuple[dict[str, str], bytes], seconds: int, concurrency: int,
             folder: Path) -> tuple[float, int]:
    """(requests/s, requests) from wrk replaying the request; non-2xx answers are an error."""
    headers, body = request
    script = folder / "encrypt.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(body.decode())}"]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "-s", str(script), endpoint + "/"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"Encrypt failed under wrk:\n{out}")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), total  # type: ignore[union-attr]


def measure(server: KeytrailServer, key: str, args: argparse.Namespace, folder: Path) -> tuple[float, float, float]:
    """(calls/s, serving process CPU µs per call, share of a core its serving thread was busy)."""
    assert server.proc is not None
    request = presigned(server.endpoint, key)
    asyncio.run(post_rate(server.endpoint, request, 100, args.concurrency))  # warm-up
    before, parts_before = cpu_seconds(server.proc.pid), cpu_by_part(server.proc.pid)
    if args.wrk and shutil.which("wrk"):
        served, calls = wrk_rate(server.endpoint, request, args.wrk, args.concurrency, folder)
    else:
        served, calls = asyncio.run(post_rate(server.endpoint, request, args.calls, args.concurrency)), args.calls
    parts = cpu_per_request(parts_before, cpu_by_part(server.proc.pid), calls)
    return served, (cpu_seconds(server.proc.pid) - before) / calls * 1e6, busy_share(parts, served)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--wrk", type=int, default=0, help="seconds per measurement with wrk (0: httpx)")
    args = parser.parse_args()
    results: dict[str, list[tuple[float, float, float]]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        servers = {"off": KeytrailServer(Path(tmp) / "off", "--no-audit", dev_clock=False).start(),
                   "on": KeytrailServer(Path(tmp) / "on", dev_clock=False).start()}
        try:
            keys = {name: s.client("alice").create_key()["KeyMetadata"]["KeyId"] for name, s in servers.items()}
            for _ in range(args.rounds):
                for name in ("off", "on"):
                    results[name].append(measure(servers[name], keys[name], args, Path(tmp)))
        finally:
            for server in servers.values():
                server.stop()
    ratios = [on[0] / off[0] for on, off in zip(results["on"], results["off"], strict=True)]
    for name in ("off", "on"):
        rates, cpu, busy = zip(*results[name], strict=True)
        print(f"audit {name:>3}: median {statistics.median(rates):,.0f} Encrypt calls/s {[round(r) for r in rates]}, "
              f"server CPU {statistics.median(cpu):.0f} µs/call, serving thread busy {statistics.median(busy):.2f}")
    print(f"ratio on/off (median of per-round ratios): {statistics.median(ratios):.2f} "
          f"{[round(r, 2) for r in ratios]}")


if __name__ == "__main__":
    main()
