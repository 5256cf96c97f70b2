"""Source adapter for the embedded on-disk event log (`keytrail.transport.segment_log`)."""

from __future__ import annotations

import asyncio
import contextlib
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from keytrail.pipeline.runner import Batch
from keytrail.pipeline.state import SEGMENT_LOG_PARTITION
from keytrail.transport.frames import Payloads
from keytrail.transport.segment_log import SegmentLog

__all__ = ["SEGMENT_LOG_PARTITION", "SegmentLogSource", "SegmentReader"]


class SegmentLogSource:
    """Batches from the embedded on-disk event log (`keytrail.transport.segment_log`).

    The state file holds the offset, so `commit` has nothing to acknowledge. With `follow`
    it polls for new records every `poll_seconds` until `stop` is set, and after a partial
    batch of the live log waits `gather_seconds` (default: `poll_seconds`) so the next batch
    is fuller; otherwise it ends at the log's end.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_records: int = 10_000,
        follow: bool = False,
        poll_seconds: float = 0.2,
        gather_seconds: float | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.directory = directory
        self.max_records = max_records
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.gather_seconds = poll_seconds if gather_seconds is None else gather_seconds
        self.stop = stop or asyncio.Event()
        self._offset = 0

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        reader = SegmentReader(self.directory)
        self._offset = start_at(SEGMENT_LOG_PARTITION)
        while not self.stop.is_set():
            first, values, end = await asyncio.to_thread(reader.read, self._offset, self.max_records)
            if not values:
                if not self.follow:
                    return
                await self._pause(self.poll_seconds)
                continue
            # Offsets within a read are consecutive (the log numbers its records one by one).
            self._offset = first + len(values)
            yield Batch(SEGMENT_LOG_PARTITION, range(first, self._offset), values=values, source_end=end)
            if self.follow and len(values) < self.max_records and self._offset >= end:
                # Following a live log: let records gather, so each batch's fixed cost (decode,
                # aggregate, state) is shared by many events instead of paid per few calls.
                await self._pause(self.gather_seconds)

    async def _pause(self, seconds: float) -> None:
        # Ends early on stop: shutting down need not wait out a gather.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        self._offset = offset


class SegmentReader:
    """Reads the log one segment at a time, each through a fresh SegmentLog.

    A SegmentLog keeps the position of every record of every segment it indexed, so one
    instance reading a long log grows without bound. A read never spans two segments
    (`read_payloads`), so each segment is indexed (its checksums verified) once, as it is read,
    and memory holds one segment's index.
    The end offset comes from a second instance that only indexes the last segment, or, once
    the reader is on the last segment, from the reader's own index of it: a live log's records
    are verified once, not by both.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log = SegmentLog(directory)
        self._base = -1  # base offset of the segment `_log` reads
        self._tail = SegmentLog(directory)
        self._tail_bases: list[int] = []  # the last segment `_tail` indexed (none yet)

    def read(self, offset: int, limit: int) -> tuple[int, Payloads, int]:
        """Up to `limit` records from `offset` on, all from one segment (the offset of the first
        and their payloads), and the log's end offset."""
        self._log.refresh()
        bases = self._log.segment_bases()
        index = max(0, bisect_right(bases, offset) - 1)
        if bases and bases[index] != self._base:
            self._log, self._base = SegmentLog(self.directory), bases[index]
        first, values = self._log.read_payloads(offset, limit)
        return first, values, self._end_offset()

    def _end_offset(self) -> int:
        if self._log.segment_bases()[-1:] == [self._base]:
            return self._log.end_offset()
        self._tail.refresh()
        last = self._tail.segment_bases()[-1:]
        if last != self._tail_bases:  # the writer started a segment: forget the old one's index
            self._tail, self._tail_bases = SegmentLog(self.directory), last
        return self._tail.end_offset()
