"""Source adapter for the embedded on-disk event log (`keytrail.transport.segment_log`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from keytrail.pipeline.runner import Batch
from keytrail.transport.segment_log import SegmentLog

__all__ = ["SEGMENT_LOG_PARTITION", "SegmentLogSource"]

SEGMENT_LOG_PARTITION = "segment-log"
REOPEN_RECORDS = 200_000  # a reader keeps an index of every segment it read: start afresh now and then


class SegmentLogSource:
    """Batches from the embedded on-disk event log (`keytrail.transport.segment_log`).

    The state file holds the offset, so `commit` has nothing to acknowledge. With `follow`
    it polls for new records until `stop` is set; otherwise it ends at the log's end.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_records: int = 10_000,
        follow: bool = False,
        poll_seconds: float = 0.2,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.directory = directory
        self.max_records = max_records
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.stop = stop or asyncio.Event()
        self._offset = 0

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        log = SegmentLog(self.directory)
        self._offset = start_at(SEGMENT_LOG_PARTITION)
        since_open = 0
        while not self.stop.is_set():
            if since_open >= REOPEN_RECORDS:  # keeps reader memory flat however long the log
                log, since_open = SegmentLog(self.directory), 0
            records, end = await asyncio.to_thread(_read, log, self._offset, self.max_records)
            since_open += len(records)
            if not records:
                if not self.follow:
                    return
                await asyncio.sleep(self.poll_seconds)
                continue
            self._offset = records[-1][0] + 1
            yield Batch(
                SEGMENT_LOG_PARTITION,
                [o for o, _ in records],
                values=[v for _, v in records],
                source_end=end,
            )
            if self.follow and len(records) < self.max_records:
                # Following a live log: let records gather, so each batch's fixed cost (decode,
                # aggregate, state) is shared by many events instead of paid per few calls.
                await asyncio.sleep(self.poll_seconds)

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        self._offset = offset


def _read(log: SegmentLog, offset: int, limit: int) -> tuple[list[tuple[int, bytes]], int]:
    """Worker thread: records from `offset` and the log's end (both list the segment files and
    read new frames, which must not hold the serving event loop)."""
    return log.read(offset, limit), log.end_offset()
