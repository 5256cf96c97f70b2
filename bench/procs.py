"""Server processes for the benchmark: start, wait until ready, measure CPU and memory, stop.

CPU and RSS are read from /proc for the whole process tree (uvicorn with several workers is a
supervisor plus children), so "CPU per request" covers every process that served the load.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = ["SERVE_HTTP_PROTOCOL", "SERVING_SYSTEM", "SERVING_USER", "Process", "busy_share", "cpu_by_part",
           "cpu_per_request", "free_port", "tree_cpu_seconds", "tree_peak_rss_bytes", "tree_pids", "tree_rss_bytes"]

# The uvicorn `--http` protocol `keytrail serve` runs (one write per answer): every Python server
# of the suite (serve, its uvicorn workers, the bare ASGI ceiling) runs on the same stack.
SERVE_HTTP_PROTOCOL = "keytrail.api.http_protocol:CoalescingHttpToolsProtocol"
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(entry.path, "stat").read_text()
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    return children


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    children, pids, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children.get(current, []))
    return pids


def tree_cpu_seconds(pids: Sequence[int]) -> float:
    """User plus system CPU seconds of these processes."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += sum(_user_system(Path(f"/proc/{pid}/stat")))
    return total


SERVING_USER, SERVING_SYSTEM = "serving thread (user)", "serving thread (system)"
OTHER_THREADS = "serving process, other threads"


def cpu_by_part(root: int) -> dict[str, float]:
    """CPU seconds of `root`'s process tree by part: its main thread (the event loop of a one-process
    server) in user and system time, its other threads (e.g. the audit spool's writer thread), and
    each child process by what it runs (`child_label`); processes with the same label are summed."""
    parts: dict[str, float] = {}
    with contextlib.suppress(OSError, IndexError, ValueError):
        user, system = _user_system(Path(f"/proc/{root}/task/{root}/stat"))
        parts[SERVING_USER], parts[SERVING_SYSTEM] = user, system
        parts[OTHER_THREADS] = tree_cpu_seconds([root]) - user - system
    for pid in tree_pids(root)[1:]:
        with contextlib.suppress(OSError):
            label = child_label(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"))
            parts[label] = parts.get(label, 0.0) + tree_cpu_seconds([pid])
    return parts


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int) -> dict[str, float]:
    """CPU µs per request of each part, from two `cpu_by_part` readings (a child that restarted
    meanwhile counts from zero)."""
    return {name: max(0.0, seconds - before.get(name, 0.0)) / requests * 1e6 for name, seconds in after.items()}


def busy_share(parts_us: Mapping[str, float], requests_per_second: float) -> float:
    """The share of a core the serving thread was busy: its CPU µs per request (user and system)
    times the request rate. Below 1, its event loop waited (for an fsync, for work)."""
    return (parts_us.get(SERVING_USER, 0.0) + parts_us.get(SERVING_SYSTEM, 0.0)) * requests_per_second / 1e6


def child_label(argv: Sequence[bytes]) -> str:
    """What a child process of a server is, from its command line: `serve`'s sidecars by role."""
    args = [arg.decode(errors="replace") for arg in argv if arg]
    if "keytrail.cli.sidecar" in args[:-1]:
        return f"{args[args.index('keytrail.cli.sidecar') + 1]} child"
    if "keytrail.audit.syncer" in args:
        return "audit fsync helper"
    if "keytrail.audit.shipping" in args:
        return "audit shipper"
    return f"child: {Path(args[0]).name if args else '?'}"


def _user_system(stat: Path) -> tuple[float, float]:
    """User and system CPU seconds from a /proc stat file (utime, stime: fields 14 and 15)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / _TICK, int(fields[12]) / _TICK


def tree_rss_bytes(pids: Sequence[int]) -> int:
    """Resident memory of these processes (sum of RSS)."""
    return _summed(pids, lambda pid: int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE)


def tree_peak_rss_bytes(pids: Sequence[int]) -> int:
    """The most resident memory each of these processes held in its life so far (VmHWM), summed: a
    start that reads everything at once shows here, though it handed the memory back since."""
    def peak(pid: int) -> int:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM:")).split()[1]) * 1024
    return _summed(pids, peak)


def _summed(pids: Sequence[int], bytes_of: Callable[[int], int]) -> int:
    """`bytes_of` each process, summed; a process gone meanwhile (its /proc file unreadable) counts 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, StopIteration, ValueError):
            total += bytes_of(pid)
    return total


class Process:
    """A server subprocess with its log file; `ready()` waits for the port or a health URL."""

    def __init__(self, name: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.log = log
        self.proc = subprocess.Popen(list(args), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                                     env=env, cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self, port: int, health_path: str | None = None, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-1500:]}")
            if _answers(port, health_path):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after {timeout}s: {self.log.read_text()[-1500:]}")

    def pids(self) -> list[int]:
        return tree_pids(self.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process group, SIGKILL it if it does not exit in time."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def _answers(port: int, health_path: str | None) -> bool:
    if health_path is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{health_path}", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False
