"""The durable spool: records appended to the segment log with group commit.

Concurrent `append` calls queue their payloads. When no other call is on its way to the spool, or
when enough are that the loop can work on them while the batch syncs (`Spool._full`), or after a
few loop ticks, the queued records are framed, written and hashed into the integrity chain on the
event loop (page-cache writes of a few KB), and a helper process fsyncs them (audit/syncer.py:
a thread of this process would wait for the GIL the loop holds), or, without one, a dedicated
writer thread. While that fsync is in flight new records queue; when it returns, one callback
resolves every caller of the group and the next group goes out (classic group commit pipelining).
The writer thread also writes the signed digests and does the rare fsyncs of a new segment.
A record is acknowledged only once it is on disk.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from keytrail.audit.integrity import ChainWriter
from keytrail.audit.syncer import SyncHelper, SyncHelperGone
from keytrail.kms.model import AuditUnavailable, CallsInProgress
from keytrail.transport.frames import framed_size
from keytrail.transport.segment_log import LogMoved, SegmentLog, TornWrite

__all__ = ["FSYNC_BUCKETS", "CommitStats", "Spool", "SpoolError"]

log = logging.getLogger(__name__)

_Waiters = list[asyncio.Future[int]]  # one per record of a batch, in its order
# Loop ticks a batch waits, at most, for the requests the loop is already working on. Each fsync
# costs ≈ 80 µs of CPU (mostly kernel) whatever it carries, so fuller batches are cheaper: through
# `serve` under wrk -c16 (Encrypt, everything on, interleaved A/B), 16 ticks against 3 gave
# +9 to +16 % req/s and 158 against 187 µs CPU per call, with no worse open-loop p99; 0 ticks gave
# -14 %. Knowing the calls in progress (`CallsInProgress`) a batch stops waiting sooner; see `_full`.
GATHER_YIELDS = 16
# After the fsync helper died: the pause before a new one starts (the writer thread fsyncs
# meanwhile), doubled while helpers keep dying within HELPER_STEADY_SECONDS, at most the last.
HELPER_RESTART_SECONDS = (1.0, 60.0)
HELPER_STEADY_SECONDS = 60.0
_Done = Callable[[BaseException | None], None]
# How soon the digest timer tries again when a digest is due but the spool is busy, and its
# shortest wait (a clock read just short of the due time must not spin the loop).
TICK_RETRY_SECONDS = 0.01


# How long a write that failed for want of space (and none that worked since) keeps the health check
# unhealthy: a node taken out of rotation gets no call whose write would show that space is back,
# so past this it says healthy again and the next calls find out.
REFUSAL_SHOWN_SECONDS = 10.0
# While writes are refused, a state change goes ahead (and so tries the spool) at most this often
# when the cause is not a full disk (an I/O error), and, for a full disk, once this much is free.
REFUSED_RETRY_SECONDS = 1.0
ROOM_TO_RETRY_BYTES = 1 << 20
# Upper bounds (seconds) of the fsync latency histogram: an idle local disk syncs in ≈ 0.1 to 0.5 ms,
# a busy one in milliseconds; beyond 100 ms every audited call waits visibly.
FSYNC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


@dataclass
class CommitStats:
    """What the group commits did since the spool opened: an fsync latency histogram (the
    durability wait every audited call pays) and the records they carried (records ÷ fsyncs is the
    mean group size: how well concurrent calls share an fsync)."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(FSYNC_BUCKETS) + 1))  # the last: +Inf
    fsync_seconds: float = 0.0
    records: int = 0

    @property
    def fsyncs(self) -> int:
        return sum(self.buckets)

    def observe(self, seconds: float, records: int) -> None:
        self.buckets[bisect.bisect_left(FSYNC_BUCKETS, seconds)] += 1
        self.fsync_seconds += seconds
        self.records += records


class SpoolError(AuditUnavailable):
    """The audit spool cannot persist records (disk error, size cap reached, closed)."""


class _RecoverableWrite(OSError):
    """A write that failed before anything of the batch reached the log (e.g. disk full)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.out_of_space = error.errno in (errno.ENOSPC, errno.EDQUOT)


class Spool:
    """Group-committing writer over a `SegmentLog` and its `ChainWriter`."""

    def __init__(self, segments: SegmentLog, chain: ChainWriter, now: Callable[[], datetime],
                 maintenance: Callable[[], None] | None = None, in_progress: CallsInProgress | None = None,
                 sync_helper: bool = False) -> None:
        self.segments = segments
        self.in_progress = in_progress
        self._maintenance = maintenance
        self.chain = chain
        self._now = now
        # The queued batch as two parallel lists: no tuple per record on the hot path.
        self._payloads: list[bytes] = []
        self._waiters: _Waiters = []
        # Told each time a group is durable (`durable_end` moved): the Kafka shipper's cue.
        self.on_durable: Callable[[], None] | None = None
        self.durable_end = segments.end_offset()
        self.durable_bytes = 0  # framed bytes made durable since open (the trail's shipping cap)
        self.stats = CommitStats()
        self._fsync_seconds = 0.0  # the last group's fsync, timed where it ran (helper or writer thread)
        # Running averages for `_full`: a group's round trip (sent to the fsync, to its callers
        # answered: the fsync plus waking the helper and the loop hearing back, 0.6 ms where the
        # fsync alone took 0.3 under wrk), and the event loop's CPU time per record (how long each
        # call still on its way to the spool will keep the loop busy).
        self._round_trip_average = 0.0
        self._sent_at = 0.0  # when the group in flight went out (perf_counter)
        self._cpu_per_record = 0.0
        self._cpu_mark = 0.0  # the loop thread's CPU time at the last commit
        self.gather_yields = GATHER_YIELDS
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], _Done] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._wants_helper = sync_helper
        self._helper: SyncHelper | None = None
        self._helper_started = 0.0  # monotonic time the current helper started
        self.helper_restart_seconds = HELPER_RESTART_SECONDS[0]
        self.helper_restarts = 0  # helpers lost (exited, or killed for not answering) and started anew: /metrics
        self._helper_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        # A group's fsync (helper or writer thread) or another writer-thread job is in flight; a
        # writer-thread job owns the log and the chain until it is done.
        self._in_flight = False
        self._syncing = 0  # records of the batch in the writer thread
        self._gathering = False
        self._idle: asyncio.Future[None] | None = None  # what `drain` waits on
        self._failure: BaseException | None = None
        self._refused = 0  # records refused by write errors since the last commit that worked
        self._last_refusal: tuple[float, BaseException] | None = None  # (monotonic time, error) of the latest
        self._closing = False

    @property
    def fsync_helper_pid(self) -> int | None:
        """The fsync helper process's id, while there is one (benchmarks count its CPU)."""
        return self._helper.pid if self._helper is not None else None

    @property
    def fsyncs(self) -> int:
        """Group commits made durable since open."""
        return self.stats.fsyncs

    def problem(self) -> str | None:
        """Why the spool refuses records now, for the health check; None while it takes them."""
        if self._failure is not None:
            return f"the audit spool failed and refuses every record until restarted: {self._failure}"
        refusal = self._last_refusal
        if self._refused and refusal is not None and (
                time.monotonic() - refusal[0] < REFUSAL_SHOWN_SECONDS or not self._worth_retrying(*refusal)):
            return f"the audit spool cannot write: {refusal[1]}"
        return None

    def start(self) -> None:
        """Start the writer thread and the digest timer for the running loop."""
        self._loop = asyncio.get_running_loop()
        self._cpu_mark = time.thread_time()
        self._thread = threading.Thread(target=self._serve_jobs, name="audit-spool-writer", daemon=True)
        self._thread.start()
        self._schedule_tick(self.chain.seconds_until_due(self._now()))
        if self._wants_helper:
            self._start_helper()

    @property
    def out_of_service(self) -> bool:
        """Whether it refuses every record until restarted: failed, stopping, or not started."""
        return self._failure is not None or self._closing or self._loop is None

    def ready(self) -> None:
        """SpoolError if `append` is sure to refuse: the spool failed earlier, is not running, or
        its writes are refused (a full disk) and nothing says they would work now. Asked before a
        state change: made first, it stood while its caller was answered a retryable error, and
        each SDK retry made it again (one CreateKey, three keys) through a whole outage."""
        if self._failure is not None:
            raise SpoolError(f"the audit spool failed earlier and refuses records: {self._failure}")
        if self._closing or self._loop is None:
            raise SpoolError("the audit spool is not running")
        if self._refused and self._last_refusal is not None and not self._worth_retrying(*self._last_refusal):
            raise SpoolError(f"the audit spool cannot write: {self._last_refusal[1]}")

    def _worth_retrying(self, refused_at: float, error: BaseException) -> bool:
        """Whether a write may work again, the last having been refused with `error`: for a full
        disk, once the log's file system has room; else once a while has passed. A call that
        writes nothing (a read, a failed call's record) tries anyway, and its success ends the
        outage at once."""
        if isinstance(error, _RecoverableWrite) and error.out_of_space:
            try:
                found = os.statvfs(self.segments.directory)
            except OSError:
                return True  # cannot tell: let the write say
            room = (found.f_bfree if os.geteuid() == 0 else found.f_bavail) * found.f_frsize
            return room >= ROOM_TO_RETRY_BYTES
        return time.monotonic() - refused_at >= REFUSED_RETRY_SECONDS

    async def append(self, payload: bytes) -> int:
        """Queue one record; return its offset once it is durable."""
        return await self.submit(payload)

    def submit(self, payload: bytes) -> asyncio.Future[int]:
        """Queue one record (SpoolError now if the spool refuses it); the future of its offset,
        set once it is durable. Not a coroutine: the audit trail awaits the future itself, one
        coroutine fewer to create, suspend and resume on every call."""
        self.ready()
        assert self._loop is not None  # ready() refuses a spool that is not running
        if not payload:  # the log refuses it, which would fail the whole group with it
            raise SpoolError("an empty audit record cannot be stored")
        future: asyncio.Future[int] = self._loop.create_future()
        self._payloads.append(payload)
        self._waiters.append(future)
        if not (self._in_flight or self._gathering):
            self._gather(self.gather_yields)
        return future

    async def drain(self) -> None:
        """Stop taking records, commit what is queued and write a final signed digest."""
        if self._closing:
            return
        self._closing = True
        if self._loop is None:  # never started: still sign what recovery hashed on open
            await asyncio.to_thread(self._closing_digest)
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._busy():
            self._idle = self._loop.create_future()
            await self._idle
        if self._failure is not None:  # nothing it would sign can be trusted: the stop must say so
            raise SpoolError(f"no final digest was signed, as the audit spool failed earlier: {self._failure}")
        await self._run_job(self._closing_digest)

    async def close(self) -> None:
        """`drain`, then stop the writer thread and release the files and the writer lock."""
        try:
            await self.drain()
        finally:
            self._release()

    def _release(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join()  # idle after `drain`: it returns at once
            self._thread = None
        if self._helper_timer is not None:
            self._helper_timer.cancel()
        if self._helper is not None:
            self._helper.close()
            self._helper = None
        self.chain.close()
        self.segments.close()

    # --- event loop side -------------------------------------------------------------------------

    def _busy(self) -> bool:
        return self._in_flight or self._gathering or bool(self._payloads)

    def _gather(self, ticks: int) -> None:
        # Let the requests the loop has already read reach the queue first (GATHER_YIELDS ticks).
        self._gathering = ticks > 0 and not self._full()
        if self._gathering:
            self._require_loop().call_soon(self._gather, ticks - 1)
        else:
            self._commit()

    def _full(self) -> bool:
        """Whether to send the batch now rather than wait for the calls still on their way to the spool.

        Waiting for all of them has every caller wait on one fsync while the loop idles: under
        wrk -c16 the loop of an audited `serve` was busy 80 % of the time, against 99 % with the
        audit trail off. Sent once it holds half of them, the batch's fsync runs while the loop
        works on the other half: busy 87-89 %, Encrypt +6 to +13 % req/s (medians of 8-10
        interleaved rounds). That pays only when the other half keeps the loop busy as long as a
        group's round trip takes; else they wait for this fsync and then their own (open loop at
        1,800 req/s: p99 47 ms against 27 without this check, 30 with it). A lone call goes out at
        once."""
        if self.in_progress is None:
            return False
        queued = len(self._payloads)
        on_their_way = self.in_progress.count - queued - self._syncing
        if on_their_way <= 0:
            return True
        return queued >= on_their_way and on_their_way * self._cpu_per_record >= self._round_trip_average

    def _commit(self) -> None:
        payloads, waiters = self._payloads, self._waiters
        if not payloads:
            self._settle()
            return
        self._payloads, self._waiters = [], []
        cpu, self._cpu_mark = self._cpu_mark, time.thread_time()
        self._cpu_per_record = _average(self._cpu_per_record, (self._cpu_mark - cpu) / len(payloads))
        try:
            first, rolled = self._append(payloads)
        except Exception as exc:  # the whole batch fails; no caller gets an answer without audit
            self._fail(waiters, exc)
            self._settle()
            return
        now = self._now()
        roll_ahead = self.segments.full  # in the writer thread, after this batch's fsync: see `_sync`
        digest = rolled or roll_ahead or self.chain.digest_due(now)
        size = framed_size(payloads)
        self._syncing = len(waiters)

        def done(error: BaseException | None) -> None:
            self._synced(waiters, first, size, error)

        if self._helper is not None and not (digest or self.segments.needs_directory_sync):
            self._sync_in_helper(self._helper, done)
        else:
            self._dispatch(lambda: self._sync(digest, now, roll_ahead=roll_ahead), done)

    def _sync_in_helper(self, helper: SyncHelper, done: _Done) -> None:
        self._in_flight = True
        self._sent_at = time.perf_counter()

        def answered(error: OSError | None, seconds: float) -> None:
            if isinstance(error, SyncHelperGone):  # the records are written: the writer thread syncs them
                self._helper = None
                self.helper_restarts += 1
                helper.close()
                self._jobs.put((lambda: self._sync(False, self._now()), done))
                self._restart_helper_later(str(error))
                return
            self._fsync_seconds = seconds
            self._finish(done, error and self._moved_or(error))

        helper.sync(self.segments.active_path, answered)

    def _moved_or(self, error: OSError) -> OSError:
        """LogMoved, naming the segment, when the helper's fsync failed because the log's folder
        was moved or replaced (it answers an errno alone); else `error`."""
        try:
            self.segments.require_in_place()
        except LogMoved as moved:
            return moved
        return error

    def _start_helper(self) -> None:
        self._helper_timer = None
        if self._closing or self._failure is not None:
            return
        try:
            self._helper = SyncHelper.start(self._require_loop())
        except OSError as exc:
            self._helper_started = 0.0  # a helper that never ran: the pause keeps growing
            self._restart_helper_later(f"the audit fsync helper could not start ({exc})")
            return
        self._helper_started = time.monotonic()

    def _restart_helper_later(self, why: str) -> None:
        """The writer thread fsyncs until a new helper starts, after a pause that grows while
        helpers keep dying young (a helper that ran steadily gets the short pause again)."""
        first, most = HELPER_RESTART_SECONDS
        if self._helper_started and time.monotonic() - self._helper_started >= HELPER_STEADY_SECONDS:
            self.helper_restart_seconds = first
        pause = self.helper_restart_seconds
        self.helper_restart_seconds = min(2 * pause, most)
        log.warning("%s; the writer thread does the audit fsyncs until a new helper starts in %.1f s", why, pause)
        self._helper_timer = self._require_loop().call_later(pause, self._start_helper)

    def _append(self, payloads: list[bytes]) -> tuple[int, bool]:
        """Write and hash the batch (not yet durable); the first offset and whether a segment closed."""
        active = self.segments.active_base
        try:
            first = self.segments.append(payloads)
        except OSError as exc:
            # Nothing of the batch stayed on disk (a TornWrite left bytes behind it could not cut).
            if not isinstance(exc, TornWrite | LogMoved):
                raise _RecoverableWrite(exc) from exc
            raise
        self.chain.add(first, payloads)
        return first, self.segments.active_base != active

    def _synced(self, waiters: _Waiters, first: int, size: int, error: BaseException | None) -> None:
        if error is not None:
            self._fail(waiters, error)
            return
        self.stats.observe(self._fsync_seconds, len(waiters))
        self._round_trip_average = _average(self._round_trip_average, time.perf_counter() - self._sent_at)
        if self._refused:
            log.warning("audit spool writes again, after refusing %d records", self._refused)
            self._refused = 0
        self.durable_end = first + len(waiters)
        self.durable_bytes += size
        if self.on_durable is not None:
            self.on_durable()
        for offset, future in enumerate(waiters, first):
            if not future.done():  # its caller may have been cancelled meanwhile
                future.set_result(offset)

    def _fail(self, waiters: _Waiters, exc: BaseException) -> None:
        if isinstance(exc, _RecoverableWrite):
            if not self._refused:  # once an outage, not once a batch (see AuditUnavailable)
                log.error("audit spool write failed: %s; calls are refused until it can write again", exc)
            self._refused += len(waiters)
            self._last_refusal = (time.monotonic(), exc)
        else:
            log.error("audit spool write failed: %s; the spool refuses every record until restarted", exc)
            self._failure = exc  # after a failed fsync nothing queued can be trusted either
            waiters = waiters + self._waiters
            self._payloads, self._waiters = [], []
        for future in waiters:
            if not future.done():
                future.set_exception(SpoolError(f"the audit spool could not persist the record: {exc}"))

    def _settle(self) -> None:
        """Nothing in flight: send what queued meanwhile, or tell a waiting `drain` all is done."""
        if self._payloads:
            self._gather(self.gather_yields)
        elif self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _tick(self) -> None:
        """Timer: a digest each interval, over no new record too (a busy node writes it with a
        commit): `verify` tells a node that ran idle from one whose newest digests were removed."""
        if self._closing or self._failure is not None:  # a failed spool signs nothing more until restarted
            return
        now = self._now()
        if not self.chain.digest_due(now):
            self._schedule_tick(self.chain.seconds_until_due(now))
        elif self._busy():  # the commit under way writes it, or the timer does right after
            self._schedule_tick(TICK_RETRY_SECONDS)
        else:
            self._dispatch(self._periodic_digest, _log_digest_error)
            self._schedule_tick(self.chain.interval)

    def _schedule_tick(self, delay: float) -> None:
        self._timer = self._require_loop().call_later(max(delay, TICK_RETRY_SECONDS), self._tick)

    def _dispatch(self, work: Callable[[], None], done: _Done) -> None:
        self._in_flight = True
        self._sent_at = time.perf_counter()
        self._jobs.put((work, done))

    def _finish(self, done: _Done, error: BaseException | None) -> None:
        self._in_flight, self._syncing = False, 0
        done(error)
        self._settle()

    async def _run_job(self, work: Callable[[], None]) -> None:
        """Run `work` in the writer thread and wait for it (raising what it raised)."""
        finished: asyncio.Future[None] = self._require_loop().create_future()

        def done(error: BaseException | None) -> None:
            if error is None:
                finished.set_result(None)
            else:
                finished.set_exception(error)

        self._dispatch(work, done)
        await finished

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise SpoolError("the audit spool is not running")
        return self._loop

    # --- writer thread ---------------------------------------------------------------------------

    def _serve_jobs(self) -> None:
        """Writer thread: run one job at a time; one callback per job back on the loop."""
        loop = self._require_loop()
        while (job := self._jobs.get()) is not None:
            work, done = job
            error: BaseException | None = None
            try:
                work()
            except BaseException as exc:  # whatever it is, the callers waiting on the job must hear of it
                error = exc
            try:
                loop.call_soon_threadsafe(self._finish, done, error)
            except RuntimeError:  # the loop is gone (never closed): nobody waits any more
                return

    def _sync(self, digest: bool, now: datetime, *, roll_ahead: bool = False) -> None:
        """One fsync for the batch; the next segment started if this one is full (`roll_ahead`); a
        digest when a segment closed or the hour is up, and the maintenance (retention) then."""
        started = time.perf_counter()
        self.segments.sync()
        self._fsync_seconds = time.perf_counter() - started  # read by `_synced`, queued after this job
        if roll_ahead:
            self._roll_ahead()
        if digest:
            self._digest_after_sync(now)
            self._maintain()

    def _roll_ahead(self) -> None:
        """Writer thread: start the next segment, so that the event loop's next append need not. A
        roll fsyncs the segment it closes, and on the loop every call waited on that fsync (0.2-63
        ms on a loaded VM, once a segment). A roll that fails here is left to that append, which
        rolls a full segment itself and refuses its batch if it cannot."""
        with contextlib.suppress(OSError):
            self.segments.roll()
            self.segments.sync()  # the new segment's folder entry: the next batch may go to the helper

    def _digest_after_sync(self, now: datetime) -> None:
        """The batch is durable by now: a digest that cannot be written (no file descriptor or no
        space left) is logged and left to the next, which covers these records too, as a timer's
        digest is. Raised, it failed the spool for good: every call refused until a restart."""
        try:
            self.chain.write_digest(now)
        except OSError as exc:
            log.error("audit digest could not be written: %s; the next digest covers its records", exc)

    def _periodic_digest(self) -> None:
        self.chain.write_digest(self._now(), empty=True)
        self._maintain()

    def _maintain(self) -> None:
        """Writer thread: the maintenance (retention) each digest interval and at each segment
        closed, so that an age limit holds on a quiet node too, whose segment may stay open for
        weeks. The records are durable by now: a failure is logged and tried again at the next."""
        if self._maintenance is None:
            return
        try:
            self._maintenance()
        except OSError as exc:
            log.error("audit log retention failed: %s; it is tried again at the next digest", exc)

    def _closing_digest(self) -> None:
        self.chain.write_final_digest(self._now())


def _average(average: float, sample: float) -> float:
    """A running average that follows the last few dozen samples (the first one stands alone)."""
    return sample if average == 0.0 else average + (sample - average) / 16


def _log_digest_error(error: BaseException | None) -> None:
    if error is not None:
        log.error("audit digest could not be written: %s", error)
