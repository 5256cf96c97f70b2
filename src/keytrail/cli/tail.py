"""Following the embedded event log from an offset: the in-process detector's source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from keytrail.pipeline.segment_source import SegmentReader
from keytrail.transport.segment_log import event_log_dir

__all__ = ["follow_event_log"]


async def follow_event_log(
    data_dir: Path, *, start: int = 0, batch: int = 500, idle_seconds: float = 0.1,
) -> AsyncIterator[list[bytes]]:
    """Yield the Avro values of the node's event log, oldest first, then wait for more.
    An empty list is yielded whenever the log is idle, so callers can do timed work.

    Reads run in a worker thread (each one lists the segment files and checks new frames'
    CRCs), so the serving event loop only hands over the values. The reader holds one segment's
    index at a time, so following a long-lived log keeps its memory flat."""
    reader = SegmentReader(event_log_dir(data_dir))
    offset = start
    while True:
        first, values, _ = await asyncio.to_thread(reader.read, offset, batch)
        if not values:
            yield []
            await asyncio.sleep(idle_seconds)
            continue
        offset = first + len(values)
        yield list(values)
        if len(values) < batch:
            await asyncio.sleep(idle_seconds)  # let a live log gather a fuller batch
