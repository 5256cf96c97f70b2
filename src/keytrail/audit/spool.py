"""The durable spool: records appended to the segment log with group commit.

Concurrent `append` calls queue their payloads; one writer task takes whatever is queued, writes
it, hashes it into the integrity chain and fsyncs once in a worker thread (so the event loop keeps
serving), then resolves every caller's future. A record is acknowledged only once it is on disk.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from keytrail.audit.integrity import ChainWriter
from keytrail.transport.segment_log import SegmentLog

__all__ = ["Spool", "SpoolError"]

log = logging.getLogger(__name__)


class SpoolError(RuntimeError):
    """The audit spool cannot persist records (disk error, size cap reached, closed)."""


class _RecoverableWrite(OSError):
    """A write that failed before anything of the batch reached the log (e.g. disk full)."""


class Spool:
    """Group-committing writer over a `SegmentLog` and its `ChainWriter`."""

    def __init__(self, segments: SegmentLog, chain: ChainWriter, now: Callable[[], datetime],
                 maintenance: Callable[[], None] | None = None) -> None:
        self.segments = segments
        self._maintenance = maintenance
        self.chain = chain
        self._now = now
        self._pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self._wake = asyncio.Event()
        self.committed = asyncio.Event()  # set after every commit (the shipper waits on it)
        self.durable_end = segments.end_offset()
        self.fsyncs = 0
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closing = False
        self._digest_tick = False
        self.gather_yields = 3

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="audit-spool-writer")

    async def append(self, payload: bytes) -> int:
        """Queue one record; return its offset once it is durable."""
        if self._failure is not None:
            raise SpoolError(f"the audit spool failed earlier and refuses records: {self._failure}")
        if self._closing or self._task is None:
            raise SpoolError("the audit spool is not running")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((payload, future))
        self._wake.set()
        return await future

    async def drain(self) -> None:
        """Stop taking records, commit what is queued and write a final signed digest."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._failure is None:
            await asyncio.to_thread(self.chain.write_digest, self._now())

    async def close(self) -> None:
        """`drain`, then release the files and the writer lock."""
        await self.drain()
        self.chain.close()
        self.segments.close()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        timer = loop.call_later(self.chain.interval, self._tick)
        try:
            while True:
                await self._wake.wait()
                for _ in range(self.gather_yields):
                    # Let the requests the loop has already read reach the queue first (a commit
                    # delay of a few loop ticks): through `serve` with 16 connections this doubled
                    # the records per fsync (8 → 15) and cut the audit CPU per call from ~70 to ~20 µs.
                    await asyncio.sleep(0)
                self._wake.clear()
                batch, self._pending = self._pending, []
                if batch:
                    await self._commit(batch)
                elif self._digest_tick:
                    self._digest_tick = False
                    await self._idle_digest()
                    timer = loop.call_later(self.chain.interval, self._tick)
                if self._closing and not self._pending:
                    return
        finally:
            timer.cancel()

    def _tick(self) -> None:
        """Timer: an idle node still writes its periodic digest."""
        self._digest_tick = True
        self._wake.set()

    async def _idle_digest(self) -> None:
        if self._failure is None and self.chain.digest_due(self._now()):
            try:
                await asyncio.to_thread(self.chain.write_digest, self._now())
            except OSError as exc:
                log.error("audit digest could not be written: %s", exc)

    async def _commit(self, batch: list[tuple[bytes, asyncio.Future[int]]]) -> None:
        try:
            first = await asyncio.to_thread(self._write, [payload for payload, _ in batch])
        except Exception as exc:  # the whole batch fails; no caller gets an answer without audit
            log.error("audit spool write failed: %s", exc)
            if not isinstance(exc, _RecoverableWrite):
                self._failure = exc
            for _, future in batch:
                if not future.done():
                    future.set_exception(SpoolError(f"the audit spool could not persist the record: {exc}"))
            return
        self.durable_end = first + len(batch)
        for index, (_, future) in enumerate(batch):
            if not future.done():
                future.set_result(first + index)
        self.committed.set()

    def _write(self, payloads: list[bytes]) -> int:
        """Worker thread: append, hash, one fsync; a digest when a segment closed or the hour is up."""
        segments_before = len(self.segments.segment_bases())
        expected = self.segments.end_offset()
        try:
            first = self.segments.append(payloads)
        except OSError as exc:
            if self.segments.end_offset() == expected:  # nothing of the batch stayed on disk
                raise _RecoverableWrite(str(exc)) from exc
            raise
        self.chain.add(first, payloads)
        self.segments.sync()
        self.fsyncs += 1
        now = self._now()
        rolled = len(self.segments.segment_bases()) > segments_before
        if rolled or self.chain.digest_due(now):
            self.chain.write_digest(now)
        if rolled and self._maintenance is not None:
            self._maintenance()
        return first
