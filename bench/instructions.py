"""Instructions the serving process executes per Encrypt, counted by valgrind's callgrind.

    PYTHONPATH=src:. python -m bench.instructions [--calls 1000] [--src SRC ...] [-- SERVE_ARG ...]

CPU seconds on a shared 2-core VM move ±25 % with the neighbours' load; an instruction count does
not: callgrind counts the same for the same work whatever else the machine does. So this is the
way to judge a lever that cuts the serving thread's work by a few per cent while other sessions
run. Each SRC (a `src` folder, as bench/ab.py takes: `git archive HEAD src schemas | tar -x -C
/tmp/base` for the last commit; default: this tree's) is measured in turn, as `keytrail serve`
starts by default (embedded event log, audit trail, consumer and detector children), plus any
serve options after `--` (`--kafka 127.0.0.1:9092`, `--no-audit`):

1. `keytrail serve` runs under callgrind; its children (the fsync helper, the consumer, the
   detector, the shipper) are exec'd and so run natively, uncounted: this is the serving process,
   the one that limits req/s (its other threads are counted with it).
2. The benchmark key is made through boto3 (bench/targets.py), then `--warmup` pre-signed Encrypt
   requests are replayed over `--connections` keep-alive connections (every cache filled).
3. `callgrind_control --zero`, `--calls` more requests, `callgrind_control --dump`: that dump's
   total over the calls is the figure (startup and warm-up excluded).

With 16 connections (the default, wrk's count) the group commits are shared, as under load; with
`--connections 1` each request is handled alone, its audit record in a group commit of its own
(≈ 8 % more instructions a call). Two runs of the same tree gave 806,015 and 804,296 a call with
16, 864,126 and 870,713 with 1; `--runs 2` measures each SRC twice to show it. Kernel time is not
counted (callgrind sees user-space instructions only). Under callgrind the server runs ≈ 50x
slower: 1,000 calls take one to two minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.fixtures import write_principals
from bench.presign import read_requests
from bench.procs import Process, free_port
from bench.targets import ROOT, Target, load_keys

__all__ = ["Count", "count_instructions"]

_SUMMARY = re.compile(rb"^summary:\s+(\d+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Count:
    source: Path
    calls: int
    instructions: int
    dump: Path

    @property
    def per_call(self) -> float:
        return self.instructions / self.calls


def _received(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ConnectionError("the server closed the connection")
    return data


def _read_answer(sock: socket.socket, buffer: bytearray) -> int:
    """Read one HTTP/1.1 answer (with Content-Length) from `sock`; its status. `buffer` holds
    what was read past it."""
    while b"\r\n\r\n" not in buffer:
        buffer += _received(sock)
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(v) for k, _, v in (line.partition(":") for line in lines[1:])
                   if k.strip().lower() == "content-length"), 0)
    while len(rest) < length:
        rest += _received(sock)
    buffer[:] = rest[length:]
    return int(lines[0].split()[1])


def _replay(port: int, raw: bytes, calls: int, connections: int) -> None:
    """Send `raw` `calls` times over `connections` keep-alive connections, one request at a
    time on each; every answer must be a 200."""
    failures: list[str] = []

    def connection(count: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=600) as sock:
                buffer = bytearray()
                for _ in range(count):
                    sock.sendall(raw)
                    status = _read_answer(sock, buffer)
                    if status != 200:
                        failures.append(f"status {status}")
                        return
        except OSError as exc:
            failures.append(str(exc))

    shares = [calls // connections + (1 if n < calls % connections else 0) for n in range(connections)]
    threads = [threading.Thread(target=connection, args=(share,)) for share in shares if share]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"Encrypt failed: {failures[0]}")


def _control(pid: int, action: str) -> None:
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True, timeout=120)


def _dumped_total(work: Path, pid: int, before: set[Path]) -> tuple[int, Path]:
    new = sorted(set(work.glob(f"callgrind.out.{pid}.*")) - before, key=lambda p: int(p.suffix[1:]))
    if not new:
        raise RuntimeError("callgrind wrote no dump")
    found = _SUMMARY.search(new[-1].read_bytes())
    if found is None:
        raise RuntimeError(f"no summary line in {new[-1]}")
    return int(found.group(1)), new[-1]


def _serve(work: Path, source: Path, serve_args: Sequence[str]) -> Target:
    port, principals = free_port(), write_principals(work / "principals.toml")
    data_dir = Path(tempfile.mkdtemp(prefix="data-", dir=work))
    # sys.executable, not the file it links to: the venv is found from the path Python was run by.
    args = ["valgrind", "--tool=callgrind", "--trace-children=no", "--compress-strings=no", "--compress-pos=no",
            f"--callgrind-out-file={work}/callgrind.out.%p",
            sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", str(port),
            "--principals", str(principals), *serve_args]
    # A fixed hash seed: set and dict iteration orders (and so the work they cost) repeat run to run.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(source), str(ROOT)]), "PYTHONHASHSEED": "0"}
    process = Process("keytrail-callgrind", args, work / "serve.log", env=env, cwd=ROOT)
    target = Target("keytrail", "keytrail", process, port)
    try:
        process.ready(port, "/_keytrail/health", timeout=900)
        load_keys(target)
    except BaseException:
        process.stop()
        raise
    return target


def count_instructions(work: Path, source: Path, calls: int, warmup: int, connections: int,
                       serve_args: Sequence[str] = ()) -> Count:
    """The serving process's instructions over `calls` Encrypt requests, after `warmup` of them."""
    target = _serve(work, source, serve_args)
    try:
        pid = target.process.pid
        _replay(target.port, read_requests(target.sign("Encrypt", work / "warmup.txt"))[0], warmup, connections)
        raw = read_requests(target.sign("Encrypt", work / "encrypt.txt"))[0]  # a signature lasts 5 minutes
        before = set(work.glob(f"callgrind.out.{pid}.*"))
        _control(pid, "--zero")
        _replay(target.port, raw, calls, connections)
        _control(pid, "--dump")
        total, dump = _dumped_total(work, pid, before)
    finally:
        target.process.stop(timeout=120)
    return Count(source, calls, total, dump)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--runs", type=int, default=1, help="measure each source this many times")
    parser.add_argument("--src", type=Path, action="append", help="a src folder (default: this tree's)")
    parser.add_argument("--keep", type=Path, help="keep the callgrind dumps in this folder (callgrind_annotate)")
    parser.add_argument("serve_args", nargs="*", help="serve options, after --")
    args = parser.parse_args()
    sources = [path.resolve() for path in args.src or [ROOT / "src"]]
    results = []
    with tempfile.TemporaryDirectory(prefix="keytrail-callgrind-") as tmp:
        for run in range(args.runs):
            for n, source in enumerate(sources):
                work = Path(tmp) / f"{run}-{n}"
                work.mkdir()
                count = count_instructions(work, source, args.calls, args.warmup, args.connections, args.serve_args)
                if args.keep:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    kept = args.keep / f"callgrind.out.run{run}.src{n}"
                    kept.write_bytes(count.dump.read_bytes())
                print(f"{source}  run {run + 1}: {count.instructions:,} instructions over {count.calls} calls "
                      f"= {count.per_call:,.0f} per Encrypt", flush=True)
                results.append({"source": str(source), "run": run + 1, "calls": count.calls,
                                "instructions": count.instructions, "per_call": round(count.per_call)})
    print(json.dumps({"connections": args.connections, "serve_args": args.serve_args, "results": results}))


if __name__ == "__main__":
    main()
