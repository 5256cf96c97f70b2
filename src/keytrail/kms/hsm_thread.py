"""The one thread that makes a key service's PKCS#11 calls, each given a time limit.

Every PKCS#11 call of the process runs one at a time anyway (`hsm_module.MODULE_CALLS`), so one
thread costs nothing; and a token that stops answering (a network HSM whose link died) then holds
this thread only, not the event loop's default pool that the key store, the audit spool and the
shipper share, and the call that waits on it gives up after `timeout` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

__all__ = ["HSM_CALL_TIMEOUT", "TIMEOUT_ENV", "HsmThread", "call_timeout"]

TIMEOUT_ENV = "KEYTRAIL_PKCS11_TIMEOUT"
HSM_CALL_TIMEOUT = 10.0  # seconds: a PKCS#11 call takes milliseconds, a login over a network a second
_T = TypeVar("_T")
log = logging.getLogger("keytrail.kms.hsm")


def call_timeout() -> float:
    """Seconds a PKCS#11 call is given: `$KEYTRAIL_PKCS11_TIMEOUT`, else HSM_CALL_TIMEOUT (read now,
    not as this module loads, so that tests can make it small)."""
    given = os.environ.get(TIMEOUT_ENV)
    if not given:
        return HSM_CALL_TIMEOUT
    try:
        seconds = float(given)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        log.warning("%s=%r is not a number of seconds above 0: PKCS#11 calls are given %g s",
                    TIMEOUT_ENV, given, HSM_CALL_TIMEOUT)
        return HSM_CALL_TIMEOUT
    return seconds


_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class _DaemonWorker:
    """One daemon thread running what is submitted, in order. Not a ThreadPoolExecutor: the
    interpreter joins those threads at exit, so a call the token never answers (a network HSM
    whose link died) kept serve from exiting after SIGTERM had stopped the node. As an executor's,
    the thread ends once the worker is no longer used (after the work queued before)."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, work: Callable[..., _T], *args: Any) -> Future[_T]:
        future: Future[_T] = Future()
        self._work.put((future, work, args))
        with self._start_lock:  # started on first use, as a ThreadPoolExecutor's thread is
            if self._thread is None:
                self._thread = threading.Thread(target=_run, args=(self._work,), name="keytrail-pkcs11", daemon=True)
                self._thread.start()
                weakref.finalize(self, self._work.put, None)  # the thread holds the queue, not the worker
        return future


def _run(work_queue: queue.SimpleQueue[_Work | None]) -> None:
    while (item := work_queue.get()) is not None:
        future, work, args = item
        if not future.set_running_or_notify_cancel():  # given up on while it waited its turn
            continue
        try:
            result = work(*args)
        except BaseException as exc:  # handed to the caller, as an executor does
            future.set_exception(exc)
        else:
            future.set_result(result)


class HsmThread:
    """Runs PKCS#11 work, one piece at a time and in order, on a thread of its own."""

    def __init__(self, timeout: float | None = None) -> None:
        self._executor = _DaemonWorker()
        self.timeout = call_timeout() if timeout is None else timeout
        self._overdue: set[Future[Any]] = set()  # work given up on that still holds the thread

    @property
    def stuck(self) -> bool:
        """True while work the token has not answered in time holds the thread."""
        return bool(self._overdue)

    async def call(self, work: Callable[[], _T], late: Callable[[_T], object] | None = None) -> _T:
        """What `work()` gives; TimeoutError if it has not given it within the timeout, and at once
        while the thread is `stuck` (queued behind that work, it would only time out in turn). The
        work goes on in the thread; `late`, if given, is called there with what it gives after all,
        also when the caller is cancelled meanwhile: what it gives (a session) has no one else."""
        if self.stuck:
            raise TimeoutError
        future = self._executor.submit(work)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except TimeoutError:  # waiting in the queue, the work was cancelled; running, it goes on
            if late is not None:  # queued before the thread counts as free, so before any next call
                future.add_done_callback(lambda done: self._hand_over(done, late))
            self._hold_until_done(future)
            raise
        except asyncio.CancelledError:  # as above; not `stuck`: the work is no later than any other
            if late is not None:
                future.add_done_callback(lambda done: self._hand_over(done, late))
            raise

    async def finish(self, work: Callable[[], object]) -> None:
        """`work()` (a session's close) on the thread, in its turn, even if its caller stops waiting:
        TimeoutError as `call`, but the work is never cancelled. A close cancelled while it waited
        behind a call the HSM answered late never ran, and the session kept the token's login,
        which then refused every login of the process (CKR_USER_ALREADY_LOGGED_IN)."""
        future = self._executor.submit(work)
        if self.stuck:  # queued behind work the token has not answered: waiting would only time out
            raise TimeoutError
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), self.timeout)
        except TimeoutError:  # running or queued, it holds the thread until it has run
            self._hold_until_done(future)
            raise

    def _hold_until_done(self, future: Future[Any]) -> None:
        """`stuck` until `future`'s work has ended, if it has not yet."""
        if not future.done():
            self._overdue.add(future)
            future.add_done_callback(self._overdue.discard)

    def _hand_over(self, done: Future[_T], late: Callable[[_T], object]) -> None:
        if not done.cancelled() and done.exception() is None:
            self._executor.submit(late, done.result())
