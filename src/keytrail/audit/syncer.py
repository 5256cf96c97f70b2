"""The spool's fsyncs, done by a small helper process instead of a thread of the serving process.

A thread that fsyncs needs the GIL twice per group (to wake for the job, and to report it done),
and the event loop holds the GIL while it works: under wrk -c16 a group took ≈ 1 ms from
dispatch to the callers' answers for a ≈ 0.5 ms fsync, 0.35 ms of it before the fsync began
(measured in `serve`, Encrypt). A process has its own interpreter: it fsyncs its own descriptor
of the same file (fsync flushes the file, whoever wrote it) and answers through a pipe the event
loop watches. Against the thread: +19 to +21 % Encrypt req/s, 16 % less CPU per call.

Protocol, one request at a time: the loop writes the segment's path (a 4-byte big-endian length,
then the bytes); the helper fsyncs that file and writes back the errno (0: durable) and the seconds
the fsync took (`_ANSWER`). The helper exits at end of file on its stdin, which the kernel also
gives it when the serving process dies, even by SIGKILL. One that does not answer within
ANSWER_SECONDS is killed and reported gone, as one that died is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from keytrail.children import without_store_secrets

__all__ = ["SyncHelper", "SyncHelperGone", "Synced"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
_ANSWER = struct.Struct("!id")  # errno, fsync seconds
# (error or None, the fsync's seconds); the error is SyncHelperGone when the helper is not there.
Synced = Callable[[OSError | None, float], None]
# How long the helper may take to answer before it is given up: a helper stopped (SIGSTOP, a
# debugger, a frozen cgroup) never answers and never exits, and every audited call, and serve's
# stop, waited on it until it was resumed. Given up, it is killed and the spool's writer thread
# fsyncs instead (a disk that is merely slow then costs a helper restart, not a wait). A local
# disk's fsync takes milliseconds; this is well inside an SDK's timeout (boto3's 60 s).
ANSWER_SECONDS = 5.0


class SyncHelperGone(OSError):
    """The helper process exited or its pipe broke: nothing is known of the fsync asked for."""


class SyncHelper:
    """The serving process's end of the helper: `start`, then `sync` one file at a time."""

    def __init__(self, process: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        assert process.stdin is not None and process.stdout is not None
        self._process = process
        self._loop = loop
        self._requests = process.stdin.fileno()
        self._answers = process.stdout.fileno()
        self._waiting: Synced | None = None
        self._deadline: asyncio.TimerHandle | None = None  # for the answer to the request in flight
        self._gone = False  # its stdout reached end of file, or it was killed: it is exiting or has exited
        self._killed = False
        os.set_blocking(self._answers, False)
        loop.add_reader(self._answers, self._answered)

    @classmethod
    def start(cls, loop: asyncio.AbstractEventLoop) -> SyncHelper:
        """Start the helper process (OSError if it cannot be started)."""
        process = subprocess.Popen(
            [sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            start_new_session=True,  # a terminal's Ctrl-C is for `serve`, which stops it in order
            # Not serve's key store URL and password: it needs neither, and is dumpable.
            env=without_store_secrets(os.environ),
        )
        return cls(process, loop)

    @property
    def pid(self) -> int:
        return self._process.pid

    def sync(self, path: Path, done: Synced) -> None:
        """fsync `path` in the helper; `done` runs on the loop when it answered (or is gone)."""
        if self._waiting is not None:
            raise RuntimeError("SyncHelper takes one request at a time")
        if self._gone:  # an exiting process may still hold its stdin: a request written now is lost
            self._loop.call_soon(done, SyncHelperGone("the audit fsync helper exited"), 0.0)
            return
        encoded = os.fsencode(path)
        try:
            os.write(self._requests, _LENGTH.pack(len(encoded)) + encoded)  # far below a pipe's buffer
        except OSError as exc:
            self._loop.call_soon(done, SyncHelperGone(f"the audit fsync helper exited ({exc})"), 0.0)
            return
        self._waiting = done
        self._deadline = self._loop.call_later(ANSWER_SECONDS, self._not_answered)

    def _not_answered(self) -> None:
        """No answer within ANSWER_SECONDS: kill the helper, and report it gone."""
        self._deadline = None
        self._gone = self._killed = True
        self._loop.remove_reader(self._answers)
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()  # SIGKILL ends a stopped process too
        done, self._waiting = self._waiting, None
        if done is not None:
            done(SyncHelperGone(f"the audit fsync helper did not answer within {ANSWER_SECONDS:g} s; killed it"), 0.0)

    def _answered(self) -> None:
        try:
            answer = os.read(self._answers, _ANSWER.size)
        except BlockingIOError:
            return
        except OSError:
            answer = b""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        done, self._waiting = self._waiting, None
        if len(answer) < _ANSWER.size:  # end of file: it exited (pipes carry 12 bytes whole)
            self._gone = True
            self._loop.remove_reader(self._answers)
            if done is not None:
                done(SyncHelperGone("the audit fsync helper exited"), 0.0)
            return
        errno, seconds = _ANSWER.unpack(answer)
        if done is not None:
            done(OSError(errno, os.strerror(errno)) if errno else None, seconds)

    def close(self, timeout: float = 5.0) -> None:
        """End the helper (its stdin closes: it exits) and reap it."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._loop.remove_reader(self._answers)
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe is not None:
                pipe.close()
        if self._killed:
            # It exits once its fsync returns, which a hung disk may hold for good: reaped by a
            # thread, not by the event loop, which must answer calls (and health) meanwhile.
            threading.Thread(target=self._process.wait, name="audit-fsync-helper-reaper", daemon=True).start()
            return
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("the audit fsync helper did not exit; killing it")
            self._process.kill()
            self._process.wait()


def _read_exactly(fd: int, count: int) -> bytes | None:
    """`count` bytes from `fd`, or None at end of file."""
    data = b""
    while len(data) < count:
        chunk = os.read(fd, count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _fsync(path: bytes, opened: dict[bytes, int]) -> tuple[int, float]:
    """fsync `path` (kept open while it stays the one asked for); errno (0: done) and seconds."""
    try:
        fd = opened.get(path)
        if fd is None:
            for old in opened.values():  # the spool moved to a new segment
                os.close(old)
            opened.clear()
            # fsync needs no write access on Linux. Without waiting: a FIFO put in the segment's
            # place held the helper until it was given up (ANSWER_SECONDS), each call waiting, where
            # its fsync's EINVAL is named as the segment no longer in place (LogMoved) at once.
            fd = opened[path] = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        started = time.perf_counter()
        os.fsync(fd)
        seconds = time.perf_counter() - started
        # Out of the serving process, one stat per group: the segment's folder moved, replaced or
        # deleted while serve ran (records going where no reader looks) is ENOENT, which the spool
        # names (segment_log.LogMoved) and then refuses every record.
        if not os.path.samestat(os.stat(path), os.fstat(fd)):
            return errno.ENOENT, seconds
        return 0, seconds
    except OSError as exc:
        return exc.errno or 5, 0.0  # 5: EIO


def main() -> None:
    """The helper: answer fsync requests from stdin until it closes."""
    opened: dict[bytes, int] = {}
    while (header := _read_exactly(0, _LENGTH.size)) is not None:
        path = _read_exactly(0, _LENGTH.unpack(header)[0])
        if path is None:
            return
        try:
            os.write(1, _ANSWER.pack(*_fsync(path, opened)))
        except BrokenPipeError:  # the serving process died (kill -9) before the answer: no one to tell
            return


if __name__ == "__main__":
    main()
