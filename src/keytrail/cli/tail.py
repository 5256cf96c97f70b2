"""Following the embedded event log from an offset: the in-process detector's source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from keytrail.transport.segment_log import SegmentLog, event_log_dir

__all__ = ["follow_event_log"]


async def follow_event_log(
    data_dir: Path, *, start: int = 0, batch: int = 500, idle_seconds: float = 0.1,
) -> AsyncIterator[list[bytes]]:
    """Yield the Avro values of the node's event log, oldest first, then wait for more.
    An empty list is yielded whenever the log is idle, so callers can do timed work.

    Reads run in a worker thread (each one lists the segment files and checks new frames'
    CRCs), so the serving event loop only hands over the values."""
    log = SegmentLog(event_log_dir(data_dir))
    offset = max(start, log.start_offset())
    try:
        while True:
            rows = await asyncio.to_thread(log.read, offset, batch)
            if not rows:
                yield []
                await asyncio.sleep(idle_seconds)
                continue
            offset = rows[-1][0] + 1
            yield [value for _, value in rows]
            if len(rows) < batch:
                await asyncio.sleep(idle_seconds)  # let a live log gather a fuller batch
    finally:
        log.close()
