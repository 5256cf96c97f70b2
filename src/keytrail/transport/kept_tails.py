"""What opening a writer cut off the end of a segment and kept beside it
(`<segment>.cut-at-<byte position>-<time>`, transport/segment_log.py), read back for `keytrail
audit verify`: a crash's torn write holds no record, but damage cut with whole records after it
took answered calls' records out of the log, which no digest may sign yet.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from keytrail.owner_only import open_regular
from keytrail.transport.frames import hidden_records, one_unfinished_write, split

__all__ = ["RecordsCut", "records_cut"]

_KEPT = re.compile(r"(?P<segment>\d{20}\.seg)\.cut-at-(?P<position>\d+)-\d+")


@dataclass(frozen=True, slots=True)
class RecordsCut:
    """Bytes cut at the damaged record `offset` of `segment`, kept in `kept`: `size` bytes in all,
    `records` whole, intact records among them."""

    kept: Path
    segment: str
    offset: int
    size: int
    records: int

    def text(self) -> str:
        """The problem `verify` names."""
        records = f"{self.records} whole record{'s' if self.records != 1 else ''}"
        return (f"{self.kept.name}: the record at offset {self.offset} of {self.segment} was damaged, and keytrail "
                f"serve cut the log there when it opened it: the {self.size} bytes from it on, {records} among them "
                "(answered calls), are out of the log, kept in this file; readers, Kafka and the digests signed "
                f"since miss them. Move the file out of {self.kept.parent} once they are accounted for")


def records_cut(directory: Path) -> list[RecordsCut]:
    """The kept tails in the log `directory` that are damage with more after it, not a torn write,
    of segments still in the log (retention deleted the records of the others anyway)."""
    found = []
    for kept in sorted(directory.glob("*.cut-at-*")):
        named = _KEPT.fullmatch(kept.name)
        if named is None or not (directory / named["segment"]).is_file():
            continue
        data = _read(kept)
        if _damage(data):
            offset = _record_offset(directory / named["segment"], int(named["position"]))
            found.append(RecordsCut(kept, named["segment"], offset, len(data), _whole_records(data)))
    return found


def _damage(data: bytes) -> bool:
    """Whether kept bytes are damage with records after it or behind it, not a torn write."""
    return not one_unfinished_write(data, len(data), lambda: data)


def _whole_records(data: bytes) -> int:
    """The whole, intact records in bytes cut as damage: those after the damaged frame, or those
    its length hides when it claims them all, or more than a record can be (a damaged length)."""
    frames = list(split(data))
    return sum(intact for _, intact in frames) if frames else hidden_records(data)


def _record_offset(segment: Path, position: int) -> int:
    """The record offset of the frame at byte `position` of `segment`: its base offset plus the
    frames before it (the writer appends its records after the cut, from that position on)."""
    before = _read(segment)[:position]
    return int(segment.name[:20]) + sum(1 for _ in split(before))


def _read(path: Path) -> bytes:
    with open(open_regular(path), "rb") as handle:  # no FIFO put in its place waited on
        return handle.read()
