"""The supervisor of serve's children, with real child processes."""

from __future__ import annotations

import asyncio
import errno
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from keytrail.children import ANALYTICS_NICENESS, Child, ChildSpec
from tests.support.processes import sessions_are_scheduling_groups


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def _wait_until(done: Callable[[], bool]) -> None:
    """Poll `done` for up to 10 s (a child's lines arrive as its process runs); the test's own
    asserts then say what did not come."""
    for _ in range(200):
        if done():
            return
        await asyncio.sleep(0.05)


async def test_a_child_that_exits_is_restarted_and_its_lines_read(tmp_path: Path) -> None:
    lines: list[bytes] = []
    child = Child(ChildSpec("echo", _python("print('up')"), lines.append, first_backoff=0.05))
    child.start()
    await _wait_until(lambda: len(lines) >= 3)
    await child.stop()
    assert lines[:3] == [b"up\n"] * 3


async def test_what_a_child_told_is_let_go_of_after_each_of_its_runs() -> None:
    # A held reader restarted reads on from its checkpoint, and the new one never says it was held.
    told: list[str] = []
    child = Child(ChildSpec("echo", _python("print('held')"), lambda line: told.append("held"), first_backoff=0.05,
                            on_exit=lambda: told.append("exited")))
    child.start()
    await _wait_until(lambda: len(told) >= 4)
    await child.stop()
    assert told[:4] == ["held", "exited", "held", "exited"]


async def test_stop_terminates_then_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(60)"
    ready = asyncio.Event()
    child = Child(ChildSpec("stubborn", _python(ignoring), lambda line: ready.set(), stop_timeout=0.5))
    child.start()
    await asyncio.wait_for(ready.wait(), 10)
    await child.stop()
    assert child.process is not None and child.process.returncode == -9


async def test_a_child_that_stops_at_the_end_of_its_input_gets_no_sigterm_while_it_starts() -> None:
    # Still "importing" (no SIGTERM handler yet) when stopped: a SIGTERM would end it, work undone.
    finishing = "import sys, time; time.sleep(1.0); sys.stdin.read(); print('work done', flush=True)"
    lines: list[bytes] = []
    child = Child(ChildSpec("shipper-like", _python(finishing), lines.append, settings=b"", stop_timeout=10,
                            stops_at_end_of_input=True))
    child.start()
    for _ in range(100):
        if child.process is not None:
            break
        await asyncio.sleep(0.01)
    await child.stop()
    assert child.process is not None and child.process.returncode == 0
    assert lines == [b"work done\n"]


async def test_a_child_sees_end_of_file_on_stdin_when_the_supervisor_closes_it(tmp_path: Path) -> None:
    ready = asyncio.Event()
    child = Child(ChildSpec("reader", _python("import sys; print('ready', flush=True); sys.stdin.read()"),
                            lambda line: ready.set()))
    child.start()
    await asyncio.wait_for(ready.wait(), 10)
    assert child.process is not None and child.process.stdin is not None
    child.process.stdin.close()  # what the kernel does when serve dies
    assert await asyncio.wait_for(child.process.wait(), 10) == 0
    await child.stop()


async def test_a_child_gets_its_environment_defaults_unless_serves_environment_sets_them(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYTRAIL_TEST_SET", "by the operator")
    monkeypatch.delenv("KEYTRAIL_TEST_UNSET", raising=False)
    lines: list[bytes] = []
    show = "import os; print(os.environ['KEYTRAIL_TEST_SET'], os.environ['KEYTRAIL_TEST_UNSET'], sep='|')"
    defaults = {"KEYTRAIL_TEST_SET": "default", "KEYTRAIL_TEST_UNSET": "default"}
    child = Child(ChildSpec("env", _python(show), lines.append, environment_defaults=defaults))
    child.start()
    await _wait_until(lambda: bool(lines))
    await child.stop()
    assert lines[0] == b"by the operator|default\n"


_LINGERING = "import pathlib, sys, time; time.sleep(0.3); pathlib.Path(sys.argv[1]).touch(); time.sleep(60)"


@pytest.mark.parametrize("ticks", [0, 1, 2, 3], ids=lambda n: f"stopped-{n}-ticks-after-start")
async def test_a_child_stopped_as_it_starts_does_not_outlive_the_stop(tmp_path: Path, ticks: int) -> None:
    """A failed serve start stops its children a moment after starting them: one spawned while the
    stop ran (stop found no process to end) went on, writing into the data dir the start then
    cleaned, until serve exited and its stdin closed."""
    marker = tmp_path / "ran"
    child = Child(ChildSpec("lingering", (*_python(_LINGERING), str(marker)), settings=b"", stop_timeout=5))
    child.start()
    for _ in range(ticks):  # the supervisor not yet run, or spawning the process
        await asyncio.sleep(0)
    await child.stop()
    assert child.process is None or child.process.returncode is not None
    written = marker.exists()
    await asyncio.sleep(0.6)
    assert marker.exists() == written  # nothing of it ran after the stop


async def test_a_child_that_cannot_be_spawned_is_tried_again(monkeypatch: pytest.MonkeyPatch,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    # fork or exec refused for a moment (no file descriptor left for its pipes under a flood of
    # connections, no memory, no process slot): the supervisor ended, and the child never ran again.
    spawn = asyncio.create_subprocess_exec
    refusals = [OSError(errno.EMFILE, "Too many open files")]

    async def refused_once(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        if refusals:
            raise refusals.pop()
        return await spawn(*args, **kwargs)

    monkeypatch.setattr(asyncio, "create_subprocess_exec", refused_once)
    lines: list[bytes] = []
    child = Child(ChildSpec("echo", _python("print('up')"), lines.append, first_backoff=0.05))
    child.start()
    await _wait_until(lambda: bool(lines))
    await child.stop()
    assert lines[:1] == [b"up\n"]
    assert "echo child could not start ([Errno 24] Too many open files); restarting in 0.1 s" in caplog.text


async def test_a_long_line_neither_ends_the_reading_nor_is_cut(caplog: pytest.LogCaptureFixture) -> None:
    # The detector writes each alarm as a line: a permissive-key alarm over a policy of a few hundred
    # statements is ≈ 90 KB, past the 64 KiB a StreamReader's readline takes. Its ValueError ended
    # the supervisor, and the child, its output no longer read, then blocked on a write for good.
    lines: list[bytes] = []
    code = "import sys; sys.stdout.write('a' * 100_000 + '\\n' + 'b' * 3_000_000 + '\\nafter\\n'); sys.stdout.flush()"
    child = Child(ChildSpec("talker", _python(code), lines.append, first_backoff=60))
    child.start()
    await _wait_until(lambda: b"after\n" in lines)
    await child.stop()
    assert lines == [b"a" * 100_000 + b"\n", b"after\n"]  # the one over LINE_LIMIT is left out, and said so
    assert "talker child: a line of its output over 1048576 bytes was left out" in caplog.text


_LOWERED = """
import os, sys
from pathlib import Path
import keytrail.children as children
if len(sys.argv) > 1:  # a kernel without autogroups: no such file to write
    children._AUTOGROUP = Path(sys.argv[1])
before = os.nice(0)
children.lower_priority(3)
group = children._AUTOGROUP.read_text().split()[-1] if children._AUTOGROUP.exists() else "none"
print(os.nice(0) - before, group)
"""


async def _first_line(argv: tuple[str, ...], in_serves_group: bool = False) -> list[str]:
    """The words of the first line a child running `argv` printed, started as serve starts its
    children (`in_serves_group`, or a session of its own)."""
    lines: list[bytes] = []
    child = Child(ChildSpec("child", argv, lines.append, first_backoff=60, in_serves_group=in_serves_group))
    child.start()
    await _wait_until(lambda: bool(lines))
    await child.stop()
    return lines[0].decode().split()


async def _lowered(*argv: str) -> list[str]:
    """What the _LOWERED child printed, run as serve runs its children (a session of its own)."""
    return await _first_line((*_python(_LOWERED), *argv))


@pytest.mark.skipif(not sessions_are_scheduling_groups(), reason="this kernel has no autogroups")
async def test_a_child_lowers_its_sessions_scheduling_group_too() -> None:
    # Each child has a session of its own: where sessions are autogroups, a niceness inside one
    # weighs against nothing, so the group's is lowered too.
    assert await _lowered() == ["3", "3"]


async def test_without_autogroups_a_child_lowers_its_niceness_alone(tmp_path: Path) -> None:
    missing = tmp_path / "autogroup"
    assert await _lowered(str(missing)) == ["3", "none"]
    assert not missing.exists()  # not created in its place


_IDLE = """
import os, signal, sys
from pathlib import Path
import keytrail.children as children
if len(sys.argv) > 1:  # no thread list to read (/proc not mounted): SCHED_IDLE cannot be set
    children._THREADS = Path(sys.argv[1])
before = os.nice(0)
children.run_when_idle()
print(os.getsid(0), os.getpgid(0), os.getpid(), os.sched_getscheduler(0) == os.SCHED_IDLE,
      signal.getsignal(signal.SIGTTOU) == signal.SIG_IGN, os.nice(0) - before)
"""


async def test_a_child_in_serves_group_runs_when_serve_idles() -> None:
    # In serve's session, so in its scheduling group, where SCHED_IDLE yields to serve's threads at
    # once; in a process group of its own, taken before exec, so a terminal's Ctrl-C is serve's alone.
    session, group, pid, idle, ttou_ignored, niceness = await _first_line(_python(_IDLE), in_serves_group=True)
    assert int(session) == os.getsid(0)
    assert int(group) == int(pid) != os.getpgid(0)
    assert idle == ttou_ignored == "True"
    assert niceness == "0"  # SCHED_IDLE needs none


async def test_a_child_that_cannot_run_when_idle_lowers_its_niceness(tmp_path: Path) -> None:
    *_, idle, ttou_ignored, niceness = await _first_line((*_python(_IDLE), str(tmp_path / "task")),
                                                         in_serves_group=True)
    assert (idle, ttou_ignored, niceness) == ("False", "True", str(ANALYTICS_NICENESS))


async def test_a_child_of_its_own_session_is_in_neither_of_serves_groups() -> None:
    code = "import os; print(os.getsid(0), os.getpgid(0), os.getpid())"
    session, group, pid = map(int, await _first_line(_python(code)))
    assert session == group == pid != os.getsid(0)


async def test_a_restart_asked_for_starts_the_child_again_at_once_and_is_no_crash(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[bytes] = []
    child = Child(ChildSpec("waiting", _python("import time; print('up', flush=True); time.sleep(60)"), runs.append,
                            first_backoff=30.0))  # a crash's restart would wait 30 s
    child.start()
    await _wait_until(lambda: len(runs) == 1)
    first = child.process
    child.restart()
    await _wait_until(lambda: len(runs) == 2)
    await child.stop()
    assert len(runs) == 2 and child.process is not first
    assert first is not None and first.returncode == -15  # SIGTERM, as `stop` ends it
    assert child.restarts == 0 and "restarting" not in caplog.text
