"""The child processes of a process, read from /proc (serve's sidecars and fsync helper), how
to start one that Ctrl-C reaches or whose output nobody reads, and how the kernel schedules them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


def interruptible() -> None:
    """`preexec_fn` for a child a test sends SIGINT: a test run started in the background (`cmd &`
    in a script) ignores SIGINT, and a child would inherit that, so Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def keytrail_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess[str]:
    """keytrail with its stdout a pipe nobody reads any more (`keytrail … | head -1` once head is gone)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "keytrail", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=60, check=False)
    finally:
        os.close(write_end)


def child_commands(pid: int) -> dict[int, list[bytes]]:
    """The child processes of process `pid` and their command lines (argv, NUL-split)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # exited meanwhile
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = args
    return found


def sessions_are_scheduling_groups() -> bool:
    """Whether this kernel groups each session's processes for the scheduler (autogroups on), so
    that a process's niceness weighs only inside its session's group (keytrail.children.lower_priority)."""
    enabled = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return enabled.exists() and enabled.read_text().strip() == "1"


def autogroup_niceness(pid: int) -> int:
    """The niceness of the scheduling group of `pid`'s session ("/autogroup-639 nice 10")."""
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
