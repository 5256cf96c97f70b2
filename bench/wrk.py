"""Run Debian `wrk` with bench/kms.lua and read its RESULT line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["LoadResult", "parse_wrk_output", "run_wrk", "wrk_seconds", "wrk_version"]

LUA = Path(__file__).with_name("kms.lua")
_RESULT = re.compile(r"^RESULT (.*)$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """One measured run: throughput, latency percentiles (ms) and error counts."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    status_errors: int  # answers with status >= 400 (expected for the denied Decrypt)
    socket_errors: int  # connect, read, write errors and timeouts: never expected

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_wrk_output(text: str) -> LoadResult:
    """The LoadResult in wrk's output; ValueError if kms.lua's RESULT line is missing."""
    match = _RESULT.search(text)
    if match is None:
        raise ValueError(f"no RESULT line in wrk output: {text[-500:]!r}")
    fields = {name: int(value) for name, value in (item.split("=", 1) for item in match.group(1).split())}
    seconds = fields["duration_us"] / 1e6
    return LoadResult(
        requests=fields["requests"], seconds=seconds, rps=fields["requests"] / seconds if seconds else 0.0,
        p50_ms=fields["p50_us"] / 1e3, p90_ms=fields["p90_us"] / 1e3, p99_ms=fields["p99_us"] / 1e3,
        p999_ms=fields["p999_us"] / 1e3, max_ms=fields["max_us"] / 1e3, status_errors=fields["status_errors"],
        socket_errors=sum(fields[name] for name in ("connect_errors", "read_errors", "write_errors", "timeouts")),
    )


def run_wrk(url: str, requests_file: Path, seconds: float, connections: int = 16, threads: int = 1) -> LoadResult:
    """One wrk run replaying the requests in `requests_file` against `url`."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    args = [binary, f"-t{threads}", f"-c{connections}", f"-d{wrk_seconds(seconds)}s", "--timeout", "10s",
            "-s", str(LUA), url]
    env = {**os.environ, "KMS_REQ": str(requests_file)}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr[-500:]}")
    return parse_wrk_output(done.stdout)


def wrk_seconds(seconds: float) -> int:
    """The whole seconds wrk runs when asked for `seconds` (its -d takes whole seconds)."""
    return max(1, round(seconds))


def wrk_version() -> str:
    binary = shutil.which("wrk")
    if binary is None:
        return "not installed"
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0].split(" Copyright")[0].strip()
