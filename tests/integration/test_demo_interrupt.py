"""`keytrail demo` signalled while it stops its server at the end of the story: the user's first Ctrl-C or
SIGTERM lets the server finish its clean stop (its final digest signed) and is reported as an interrupt;
only a second one kills the server.

The moment is the demo's "stopping keytrail serve" line. The test then holds the server stopped
(SIGSTOP) so that the signal surely lands while the demo waits for it, as on a slower machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.processes import child_commands, interruptible

pytestmark = pytest.mark.integration

STOPPING = "keytrail demo: story played; stopping keytrail serve"
INTERRUPTED = "keytrail demo: interrupted; the server was stopped"
INTACT = "verified: no record missing, altered, reordered or inserted"
CLEAN_STOP = "it is the final digest of a clean stop"
NOT_FINAL = "the newest digest is not the final one"
KILL_GRACE_SECONDS = 1.0  # far longer than the demo takes to kill its server on a signal


def _start_demo(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "keytrail", "demo", "--data-dir", str(data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)


def _read_until_stopping(demo: subprocess.Popen[str]) -> list[str]:
    """The demo's stderr lines up to and with the one it prints as it begins to stop its server."""
    assert demo.stderr is not None
    lines: list[str] = []
    for line in demo.stderr:
        lines.append(line.rstrip("\n"))
        if lines[-1] == STOPPING:
            return lines
    raise AssertionError(f"the demo ended without stopping its server: {lines}")


def _server_pid(demo: subprocess.Popen[str]) -> int:
    [pid] = [pid for pid, args in child_commands(demo.pid).items() if b"serve" in args]
    return pid


def _state(pid: int) -> str | None:
    """The kernel's one-letter state of `pid` (T: stopped, Z: exited), None once it is reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # reaped before the open, or between it and the read
        return None


def _wait_for_state(pid: int, wanted: set[str | None], seconds: float) -> str | None:
    deadline = time.monotonic() + seconds
    while (state := _state(pid)) not in wanted and time.monotonic() < deadline:
        time.sleep(0.01)
    return state


@contextmanager
def _held(pid: int) -> Iterator[None]:
    """The server frozen (its SIGTERM pending) until the block ends, then let go to finish its stop."""
    os.kill(pid, signal.SIGSTOP)
    try:
        assert _wait_for_state(pid, {"T", "Z", None}, 5) == "T", "the server exited before the test could hold it"
        yield
    finally:
        if _state(pid) not in ("Z", None):
            os.kill(pid, signal.SIGCONT)


def _wait_until_delivered(pid: int) -> None:
    """Until `pid` has taken its pending signals: a second one sent earlier would merge with the first."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
        if int(status["SigPnd"], 16) == int(status["ShdPnd"], 16) == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the demo never took its signal")


def _audit_verify(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_one_signal_while_the_server_stops_lets_it_stop_cleanly_and_is_an_interrupt(
        tmp_path: Path, signum: int, status: int) -> None:
    data_dir = tmp_path / "data"
    demo = _start_demo(data_dir)
    try:
        _read_until_stopping(demo)
        server = _server_pid(demo)
        with _held(server):
            demo.send_signal(signum)
            killed = _wait_for_state(server, {"Z", None}, KILL_GRACE_SECONDS) in ("Z", None)
        _, stderr = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert not killed, "the demo killed its server on the user's first signal"
    assert demo.returncode == status, stderr
    assert stderr.splitlines() == [INTERRUPTED]
    assert _state(server) is None  # the demo waited for it
    verified = _audit_verify(data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert INTACT in verified.stdout and CLEAN_STOP in verified.stdout


def test_a_second_ctrl_c_while_the_server_stops_kills_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    demo = _start_demo(data_dir)
    try:
        _read_until_stopping(demo)
        server = _server_pid(demo)
        with _held(server):
            demo.send_signal(signal.SIGINT)
            _wait_until_delivered(demo.pid)
            demo.send_signal(signal.SIGINT)
            killed = _wait_for_state(server, {"Z", None}, 30) in ("Z", None)
        _, stderr = demo.communicate(timeout=60)
    finally:
        demo.kill()
    assert killed, "a second Ctrl-C left the server stopping"
    assert demo.returncode == 130, stderr
    assert stderr.splitlines() == [INTERRUPTED]
    verified = _audit_verify(data_dir)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert NOT_FINAL in verified.stdout and CLEAN_STOP not in verified.stdout  # killed: no final digest
