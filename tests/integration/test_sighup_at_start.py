"""SIGHUP while `keytrail serve` starts: a supervisor's `reload` right after its `start`. Until the
node's own handler was installed, SIGHUP had its default action, and serve died in silence (exit
status 129, nothing on stdout or stderr, the data dir it was making left empty)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import child_commands
from tests.support.server import PRINCIPALS, KeytrailServer, write_principals

_LISTENING = "keytrail serve: listening on "
_SECONDS = 90.0  # as tests/support/server.py waits for a start on a loaded machine

# `keytrail serve` that stops before its node starts (the principals file read, the node built,
# its SIGHUP handler not yet installed), says so on stderr, and goes on once the file named in
# $GO exists.
_HELD_BEFORE_THE_NODE_STARTS = """
import asyncio, os, sys
import keytrail.cli.node as node
start = node._start
async def _start(*args):
    print("holding", file=sys.stderr, flush=True)
    while not os.path.exists(os.environ["GO"]):
        await asyncio.sleep(0.05)
    return await start(*args)
node._start = _start
from keytrail.cli import main
main()
"""


def _listening(proc: subprocess.Popen[bytes], out: Path) -> None:
    """Wait until serve says it listens; fail if it exits first."""
    deadline = time.monotonic() + _SECONDS
    while _LISTENING not in out.read_text():
        code = proc.poll()
        assert code is None, f"serve exited with status {code}: {out.read_text()[-2000:]}"
        assert time.monotonic() < deadline, f"serve did not start: {out.read_text()[-2000:]}"
        time.sleep(0.05)


def _reader_waits(fifo: Path, proc: subprocess.Popen[bytes]) -> int:
    """A write end of `fifo`, opened once serve has opened it to read."""
    deadline = time.monotonic() + _SECONDS
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:  # ENXIO: no reader yet
            assert error.errno == errno.ENXIO, error
        assert proc.poll() is None and time.monotonic() < deadline, "serve never opened its root key file"
        time.sleep(0.02)


def _ignores_sighup(pid: int) -> bool:
    """Whether `pid` ignores SIGHUP (its SigIgn mask, /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(mask & (1 << (signal.SIGHUP - 1)))


def test_a_sighup_while_serve_waits_for_its_root_key_does_not_stop_it(tmp_path: Path) -> None:
    # The root key read from a FIFO ($KEYTRAIL_ROOT_KEY_FILE, as `<(vault read ...)` gives it)
    # holds serve inside its start, before the principals file is read, for as long as the test likes.
    fifo = tmp_path / "root.key"
    os.mkfifo(fifo, 0o600)
    server = KeytrailServer(tmp_path / "d", dev_clock=False)  # the real clock: serve starts its children
    out = tmp_path / "serve.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(server.command(), stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, "KEYTRAIL_ROOT_KEY_FILE": str(fifo)})
    server.proc = proc
    try:
        writer = _reader_waits(fifo, proc)
        proc.send_signal(signal.SIGHUP)
        os.write(writer, os.urandom(32))
        os.close(writer)
        _listening(proc, out)
        server.client("alice").list_keys()
        # The children serve starts take SIGHUP's default action, as before (SIG_IGN would be inherited).
        children = child_commands(proc.pid)
        assert children and not any(_ignores_sighup(pid) for pid in children), children
    finally:
        code = server.stop()
    assert code == 0, out.read_text()[-2000:]


def test_a_principals_file_changed_before_a_sighup_while_serve_starts_is_in_effect_once_it_serves(
        tmp_path: Path) -> None:
    # The node's handler re-reads the file on SIGHUP; one that came before it was installed is
    # a reload owed: the file may have changed since serve read it.
    go = tmp_path / "go"
    without_carol = {name: entry for name, entry in PRINCIPALS.items() if name != "carol"}
    server = KeytrailServer(tmp_path / "d", principals=write_principals(tmp_path / "principals.toml", without_carol))
    out = tmp_path / "serve.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen([sys.executable, "-c", _HELD_BEFORE_THE_NODE_STARTS, *server.command()[3:]],
                                stdout=sink, stderr=subprocess.PIPE, env={**os.environ, "GO": str(go)})
    server.proc = proc
    try:
        assert proc.stderr is not None and proc.stderr.readline() == b"holding\n"
        write_principals(server.principals, PRINCIPALS)  # carol added
        proc.send_signal(signal.SIGHUP)
        # Time for serve to take the signal before its node goes on: taken by the node's handler
        # instead, it would reload the file with or without the fix.
        time.sleep(0.5)
        go.touch()
        _listening(proc, out)
        assert server.client("carol").list_keys()["Keys"] == []  # the key added before the SIGHUP
        assert server.client("alice").list_keys()["Keys"] == []
    finally:
        code = server.stop()
        proc.stderr.close()
    assert code == 0, out.read_text()[-2000:]
