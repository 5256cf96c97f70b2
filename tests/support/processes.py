"""The child processes of a process, read from /proc (serve's sidecars and fsync helper), and how
to start one that Ctrl-C reaches."""

from __future__ import annotations

import signal
from pathlib import Path


def interruptible() -> None:
    """`preexec_fn` for a child a test sends SIGINT: a test run started in the background (`cmd &`
    in a script) ignores SIGINT, and a child would inherit that, so Ctrl-C would never reach it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


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
