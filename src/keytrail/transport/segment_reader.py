"""SegmentReader: follows the embedded event log one segment at a time, in bounded memory."""

from __future__ import annotations

import asyncio
import logging
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

from keytrail.transport.frames import Payloads
from keytrail.transport.segment_log import SegmentLog

__all__ = ["LogEnd", "SegmentReader", "StallWatch"]

log = logging.getLogger(__name__)


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
        self._end = LogEnd(directory)

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
            return _end_past_damage(self._log)
        return self._end()


class LogEnd:
    """The log's end offset as a reader's StallWatch needs it (`_end_past_damage`), from an instance
    that indexes the last segment alone, and forgets it once the writer starts the next: one
    segment's index in memory, however long it is called."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._log = SegmentLog(directory)
        self._bases: list[int] = []  # the last segment `_log` indexed (none yet)

    def __call__(self) -> int:
        self._log.refresh()
        last = self._log.segment_bases()[-1:]
        if last != self._bases:  # the writer started a segment: forget the old one's index
            self._log, self._bases = SegmentLog(self.directory), last
        return _end_past_damage(self._log)


def _end_past_damage(log: SegmentLog) -> int:
    """The log's end offset, one more when its last segment ends in damage (`held_at_end`): a reader
    held before it is then behind the end, and StallWatch says so, where the end at the damage had
    it look caught up while the writer's records after the damage went unread."""
    end = log.end_offset()
    return end + 1 if log.held_at_end() else end


class StallWatch:
    """Says in one line that a reader following the log is held at an offset the log's end is past:
    a damaged record (in a closed segment, or in the last one: its end is then one past the damage,
    see `_end_past_damage`), or a segment deleted between two. A reader never reads
    past one, and waited there, its calls unread, in silence. A stall is confirmed by two polls in
    a row that find nothing at one offset while the end is past it (a reader racing the writer
    sees an end past what it just read once, then reads on). Said once per stall, and once more
    when reading goes on past it (the log repaired, or retention deleted the segment).

    The reader waits rather than exits for serve to restart it: a restart stops at the same record
    again (serve's detector child replaying the whole log each time), while a waiting reader reads
    on as soon as the segment is repaired or retention deletes it, its lag in /metrics growing
    meanwhile. The line, said at once, tells an operator why; `on_held` hears the offset as the
    line is said and None as reading goes on, for /metrics (keytrail_event_log_reader_held): on a
    quiet node the lag may never reach the lag alerts' threshold."""

    def __init__(self, directory: Path, reader: str, missed: str,
                 on_held: Callable[[int | None], None] = lambda offset: None) -> None:
        self.directory = directory
        self.on_held = on_held
        self._reader = reader  # who reads: "consumer", "detector"
        self._missed = missed  # what the calls it cannot read miss meanwhile: "counted", "judged"
        self._empty_at: int | None = None  # the offset of the last poll that found nothing before the end
        self._stalled_at: int | None = None  # the offset of the stall said, until reading moves past it

    async def polled(self, offset: int, end: int, found: int) -> None:
        """After each read: `offset` where the next one begins, `end` the log's end as this one saw
        it, `found` how many records it read."""
        if self._held_anew(offset, end, found):
            # Off the event loop: finding the damage reads every closed segment (serve's loop under --dev-clock).
            self._say_held(offset, end, await asyncio.to_thread(self._damage))

    def polled_blocking(self, offset: int, end: int, found: int) -> None:
        """`polled`, for a reader with no event loop to keep free (`keytrail audit tail`)."""
        if self._held_anew(offset, end, found):
            self._say_held(offset, end, self._damage())

    def _held_anew(self, offset: int, end: int, found: int) -> bool:
        """Whether this poll confirms a stall not said yet; says a stall's end."""
        if self._stalled_at is not None and offset != self._stalled_at:
            log.warning("the %s reads the event log in %s again (it was held at offset %d)", self._reader,
                        self.directory, self._stalled_at)
            self._stalled_at = None
            self.on_held(None)
        confirmed = not found and offset < end and self._empty_at == offset
        self._empty_at = offset if not found and offset < end else None
        if not confirmed or self._stalled_at is not None:
            return False
        self._stalled_at = offset
        self.on_held(offset)
        return True

    def _damage(self) -> str | None:
        try:
            return SegmentLog(self.directory).damage()
        except OSError as exc:  # a segment it cannot open: said in the line, not ending a reader that waits
            return str(exc)

    def _say_held(self, offset: int, end: int, damage: str | None) -> None:
        behind = f"{end - offset} record{'' if end - offset == 1 else 's'}"
        log.error("the %s reads the event log in %s no further than offset %d, at least %s before its end: %s; it "
                  "waits there, the calls from there on not %s, until the segment is restored (keytrail audit "
                  "verify tells more)", self._reader, self.directory, offset, behind,
                  damage or "the record there cannot be read", self._missed)
