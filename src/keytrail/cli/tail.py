"""Following the embedded event log from an offset: the in-process consumers' source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from keytrail.audit.schema import decode_batch
from keytrail.transport.segment_log import SegmentLog, event_log_dir

__all__ = ["follow_event_log"]


async def follow_event_log(
    data_dir: Path, *, start: int = 0, batch: int = 500, idle_seconds: float = 0.1,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield CloudTrail records from the node's event log, oldest first, then wait for more.
    An empty list is yielded whenever the log is idle, so callers can do timed work.

    Decoding runs in a worker thread in batches of at most `batch` records, so the serving
    event loop is never held for long (the GIL is handed back every few milliseconds)."""
    log = SegmentLog(event_log_dir(data_dir))
    offset = max(start, log.start_offset())
    try:
        while True:
            rows = log.read(offset, batch)
            if not rows:
                yield []
                await asyncio.sleep(idle_seconds)
                log.refresh()
                continue
            offset = rows[-1][0] + 1
            yield await asyncio.to_thread(decode_batch, [value for _, value in rows])
            if len(rows) < batch:
                await asyncio.sleep(idle_seconds)  # let a live log gather a fuller batch
    finally:
        log.close()
