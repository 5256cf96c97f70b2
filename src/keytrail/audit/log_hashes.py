"""The records of the event log as `keytrail audit verify` reads them: each one's hash, where it
stands, and the eventIDs of the few it names.

Verify diffs the records one after another, as they are read, against the stored hashes. A record
is named by the offset its segment's file name gives it, which readers and `audit events` go by:
in a log whose segments are renamed, copied under another name or deleted, that is not its place
in the read, and two records may share one (a segment copied over the offsets of another).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
from dataclasses import dataclass, field

from keytrail.audit.schema import SchemaError, decode
from keytrail.transport.segment_log import SegmentLog

__all__ = ["ReadRecords", "event_ids", "read_records"]

# Reads of the log a verification makes while retention deletes segments under it, before it fails.
_READS_UNDER_RETENTION = 3


@dataclass(slots=True)
class ReadRecords:
    """Each record's hash in the order read, each checksum failure, and where the offsets jump:
    `(index, offset)` at the first record and wherever a record's offset does not follow the one
    before it (a segment that starts elsewhere than where the one before it ends)."""

    hashes: list[bytes] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    jumps: list[tuple[int, int]] = field(default_factory=list)
    following: int = -1  # the offset a record read next has when it follows on

    def offset(self, index: int) -> int:
        """The offset the log gives the `index`-th record read."""
        at = bisect.bisect_right(self.jumps, index, key=lambda jump: jump[0]) - 1
        first, offset = self.jumps[at] if at >= 0 else (0, 0)
        return offset + index - first

    def add(self, offset: int, payload: bytes, intact: bool) -> None:
        if offset != self.following:
            self.jumps.append((len(self.hashes), offset))
        self.following = offset + 1
        if not intact:
            self.problems.append(f"record at offset {offset}: checksum mismatch (altered)")
        self.hashes.append(hashlib.sha256(payload).digest())


def read_records(log: SegmentLog) -> ReadRecords:
    """Every record from the log's first offset on (payloads are re-read for the few records named).
    Retention on a running node deletes the oldest segments: one gone before it was opened (those
    read before it are gone too) has the log read again from its new start, where the read ended in
    FileNotFoundError."""
    for _ in range(_READS_UNDER_RETENTION - 1):
        with contextlib.suppress(FileNotFoundError):
            return _read(log)
    return _read(log)


def _read(log: SegmentLog) -> ReadRecords:
    read = ReadRecords()
    for frame in log.frames():
        read.add(frame.offset, frame.payload, frame.intact)
    return read


def event_ids(log: SegmentLog, read: ReadRecords, indexes: set[int]) -> dict[int, str]:
    """The eventID of the records `read` holds at `indexes`, found at the same place in the log read
    again (none for a record whose place moved meanwhile: retention deleted segments before it)."""
    if not indexes:
        return {}
    found: dict[int, str] = {}
    for index, frame in enumerate(log.frames()):
        if index in indexes and index < len(read.hashes) and frame.offset == read.offset(index):
            found[index] = _event_id(frame.payload)
    return found


def _event_id(payload: bytes) -> str:
    try:
        return str(decode(payload).get("eventID"))
    except (SchemaError, ValueError, EOFError, IndexError, KeyError):
        return "(undecodable)"
