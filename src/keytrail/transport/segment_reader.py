"""SegmentReader: follows the embedded event log one segment at a time, in bounded memory."""

from __future__ import annotations

from bisect import bisect_right
from pathlib import Path

from keytrail.transport.frames import Payloads
from keytrail.transport.segment_log import SegmentLog

__all__ = ["SegmentReader"]


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
