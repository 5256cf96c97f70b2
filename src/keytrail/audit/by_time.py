"""The event log's records oldest first, by eventTime (`keytrail audit events`, CONTRACTS.md §3).

A node writes each call's record as the call completes, so the log it writes is in eventTime order
already; `keytrail audit import` appends older history after newer records. A first pass reads
every record's eventTime without decoding the record (16 bytes a record held: 25 MB for 1.6 million);
a log in order is then read once more as it is, and any other in runs of consecutive offsets, in the
order their times sort (records of one millisecond in the order the log holds them).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

from keytrail.audit.cloudtrail_files import decoded_in_order, iter_events
from keytrail.audit.schema import SchemaError, event_time_millis
from keytrail.transport.segment_log import SegmentLog

__all__ = ["events_by_time"]

_BATCH = 2000  # records read at a time, as iter_events reads them


def events_by_time(data_dir: Path, log: SegmentLog) -> Iterator[tuple[int, dict[str, Any]]]:
    """(offset, CloudTrail record) of every event `log` holds, oldest first by eventTime. An
    unreadable record raises SchemaError after the records before it in the log: the log is then
    read in its own order, so that what it holds up to the damage is shown."""
    located = _event_times(log)
    if located is None or _ascending(located[0]):
        yield from iter_events(data_dir, log=log)
        return
    for start, count in _runs(_offsets_by_time(*located)):
        yield from _read_run(log, start, count)


def _event_times(log: SegmentLog) -> tuple[array[int], array[int]] | None:
    """The eventTime (ms) and offset of every record, in the log's order; None if one is unreadable."""
    times, offsets = array("q"), array("q")
    offset = log.start_offset()
    while records := log.read(offset, _BATCH):
        try:
            times.extend(event_time_millis(value) for _, value in records)
        except SchemaError:
            return None
        offsets.extend(record_offset for record_offset, _ in records)
        offset = records[-1][0] + 1
    return times, offsets


def _ascending(times: array[int]) -> bool:
    return all(earlier <= later for earlier, later in pairwise(times))


def _offsets_by_time(times: array[int], offsets: array[int]) -> list[int]:
    """The offsets in the order of their records' times; a stable sort keeps each millisecond's
    records in the log's order."""
    import polars as pl

    frame = pl.DataFrame({"time": pl.Series(times, dtype=pl.Int64), "offset": pl.Series(offsets, dtype=pl.Int64)})
    return frame.sort("time", maintain_order=True)["offset"].to_list()


def _runs(offsets: list[int]) -> Iterator[tuple[int, int]]:
    """(first offset, count) of each run of consecutive offsets in `offsets`, in its order."""
    if not offsets:
        return
    start = previous = offsets[0]
    for offset in offsets[1:]:
        if offset != previous + 1:
            yield start, previous - start + 1
            start = offset
        previous = offset
    yield start, previous - start + 1


def _read_run(log: SegmentLog, start: int, count: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """The decoded records at offsets start .. start + count - 1 (those retention deleted since
    the first pass are passed over)."""
    end, offset = start + count, start
    while offset < end and (records := log.read(offset, min(_BATCH, end - offset))):
        wanted = [(record_offset, value) for record_offset, value in records if record_offset < end]
        yield from zip((o for o, _ in wanted), decoded_in_order([v for _, v in wanted]), strict=True)
        offset = records[-1][0] + 1
