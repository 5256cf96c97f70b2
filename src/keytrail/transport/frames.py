"""Record framing of the embedded event log (`keytrail.transport.segment_log`).

Each record is framed as a 4-byte little-endian length, a 4-byte CRC32 of the payload, then the
payload. Readers check frames a chunk at a time, the checksum over a view of the chunk, and hand
a batch on as `Payloads`: one bytes object, still framed, rather than one object per record.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Collection, Iterator, MutableSequence, Sequence
from itertools import repeat
from typing import overload

__all__ = ["FRAME", "FRAME_HEADER", "MAX_RECORD", "Payloads", "frame_bytes", "framed_size", "hidden_records",
           "one_unfinished_write", "payloads_at", "possible_length", "split", "verified_prefix"]

FRAME = struct.Struct("<II")
#: Bytes before each payload on disk: its length and CRC32 (`Payloads.framed` keeps them).
FRAME_HEADER = FRAME.size
MAX_RECORD = 64 << 20  # a length beyond this is damage, not a record


def possible_length(length: int) -> bool:
    """Whether a frame header's length can be a record's. Not 0: a zero-filled tail (a crash kept
    a file's new length but not its data) reads as frames of length 0 and CRC32 0, which the
    checksum of an empty payload passes; no record is empty (`SegmentLog.append` refuses one)."""
    return 0 < length <= MAX_RECORD


class Payloads(Sequence[bytes]):
    """Consecutive records' payloads as read from the log, kept framed in one bytes object rather
    than one object per record (a batch of them costs one copy); `framed()` hands them on as is."""

    __slots__ = ("_data", "_ends", "_starts")

    def __init__(self, data: bytes, starts: list[int], ends: list[int]) -> None:
        self._data = data
        self._starts = starts  # payload i is data[starts[i]:ends[i]], its frame header before it
        self._ends = ends

    def __len__(self) -> int:
        return len(self._starts)

    @overload
    def __getitem__(self, index: int) -> bytes: ...

    @overload
    def __getitem__(self, index: slice) -> Payloads: ...

    def __getitem__(self, index: int | slice) -> bytes | Payloads:
        if isinstance(index, slice):
            if index.step not in (None, 1):
                raise ValueError("Payloads slices take consecutive records only")
            return Payloads(self._data, self._starts[index], self._ends[index])
        return self._data[self._starts[index]:self._ends[index]]

    def __iter__(self) -> Iterator[bytes]:
        return map(self._data.__getitem__, map(slice, self._starts, self._ends))

    def framed(self) -> bytes:
        """The records as framed on disk, back to back: each payload follows its FRAME_HEADER
        bytes (length and CRC32)."""
        if not self._starts:
            return b""
        first, end = self._starts[0] - FRAME.size, self._ends[-1]
        return self._data if first == 0 and end == len(self._data) else self._data[first:end]

    def all_start_with(self, prefix: bytes) -> bool:
        """True when every payload begins with `prefix`."""
        return all(map(self._data.startswith, repeat(prefix), self._starts, self._ends))


def payloads_at(data: bytes, positions: Sequence[int], origin: int) -> Payloads:
    """The payloads of the frames at file `positions`, `data` being the file from `origin` on."""
    starts = [p - origin + FRAME.size for p in positions]
    return Payloads(data, starts, [p - origin for p in positions[1:]] + [len(data)])


def verified_prefix(data: bytes, origin: int, limit: int, positions: MutableSequence[int]) -> int:
    """Append the file position (`origin` + offset in `data`) of up to `limit` whole, intact
    frames at the start of `data` to `positions`; return the bytes they cover."""
    view, crc32, unpack, append = memoryview(data), zlib.crc32, FRAME.unpack_from, positions.append
    position, size = 0, len(data)
    for _ in repeat(None, limit):
        if position + 8 > size:
            break
        length, crc = unpack(data, position)
        start = position + 8
        end = start + length
        # Checksums over views, not payload copies. An impossible length (> MAX_RECORD) stops
        # here too: callers read at most FRAME_HEADER + MAX_RECORD bytes at a time.
        if not length or end > size or crc32(view[start:end]) != crc:
            break
        append(origin + position)
        position = end
    return position


def split(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """The whole frames at the start of `data`, intact or not, as (payload, intact); ends at a
    frame whose length is impossible (see `possible_length`)."""
    position = 0
    while position + 8 <= len(data):
        length, crc = FRAME.unpack_from(data, position)
        end = position + 8 + length
        if not length or end > len(data):  # also a length > MAX_RECORD, as in verified_prefix
            return
        payload = data[position + 8:end]
        yield payload, zlib.crc32(payload) == crc
        position = end


def framed_size(payloads: Collection[bytes]) -> int:
    """The bytes these payloads take in the log once framed (summed without a Python loop: it runs
    on each group commit of the audit spool)."""
    return FRAME_HEADER * len(payloads) + sum(map(len, payloads))


def frame_bytes(data: bytes) -> int:
    """The bytes the frame at the start of `data` takes (0 when its length is impossible)."""
    length = FRAME.unpack_from(data)[0]
    return FRAME.size + length if possible_length(length) else 0


def one_unfinished_write(head: bytes, size: int, read_claimed: Callable[[], bytes]) -> bool:
    """Whether the `size` bytes after a segment's last whole record, beginning with `head` (their
    first FRAME_HEADER bytes, or all of them when fewer), are what a crash leaves of a write it
    interrupted: one frame cut short or failing its checksum and nothing after it, or a header of
    zeros first (the writer writes a batch's first header last, and a crash may keep a file's new
    length but not its data). Otherwise they are damage with more after it. A damaged length may
    claim every byte too: `read_claimed` reads them (at most FRAME_HEADER + MAX_RECORD of them),
    called only then, and they are damage when whole records hide behind it (`hidden_records`)."""
    header = head[:FRAME.size]
    if len(header) < FRAME.size or not header.strip(b"\0"):
        return True
    return FRAME.size + FRAME.unpack(header)[0] >= size and not hidden_records(read_claimed())


def hidden_records(tail: bytes) -> int:
    """The whole records in `tail`, bytes whose first frame's length claims them all (or more),
    hidden behind that length. A crash's torn write hides none: the bytes are the start of its
    first frame, the rest zeros or missing. A damaged length hides those from where the frame
    really ended: the frame itself when its payload is whole up to there, and the intact frames
    after it (see `_real_end`)."""
    found = _real_end(tail)
    if found is None:
        return 0
    end, whole = found
    return whole + sum(intact for _, intact in split(tail[end:]))


# A frame header with a possible length (1..MAX_RECORD, little-endian), in a lookahead so that
# overlapping ones are found too: the regular expression engine skips the bytes that are none, not
# a Python step per byte (the bytes a damaged length claims may be up to 64 MiB).
_POSSIBLE_HEADER = re.compile(rb"(?=(?:[^\x00]..|.[^\x00].|..[^\x00])[\x00-\x03]|\x00\x00\x00[\x01-\x04])", re.DOTALL)
_CHECKSUMMED_AT_MOST = 4 * (FRAME.size + MAX_RECORD)  # ~0.2 s of CRC32 over candidate frames


def _real_end(tail: bytes) -> tuple[int, bool] | None:
    """Where the first frame of `tail`, its length claiming all of it, ends as whole records show:
    (position, True) where its payload's checksum matches (its length alone was damaged: at a frame
    header or at the end of `tail`), (position, False) where an intact frame begins (its checksum
    damaged too); None when nothing shows it. Its payload is checksummed as the search goes, once
    over; candidate frames (after its header and a byte of payload: no record is empty) up to
    _CHECKSUMMED_AT_MOST bytes in all, the longer ones skipped past that: in a record's bytes many
    headers look possible, of lengths up to 64 MiB, where the real next one is a record's length."""
    view, crc = memoryview(tail), FRAME.unpack_from(tail)[1]
    summed, running, budget = FRAME.size, 0, _CHECKSUMMED_AT_MOST
    # No header begins in zeros, what a torn write's bytes may end in (a crash kept a file's length
    # only): a possible length has a byte other than 0 among its four, which the lookahead reads.
    searched = min(len(tail), len(tail.rstrip(b"\0")) + 3)
    for found in _POSSIBLE_HEADER.finditer(tail, FRAME.size + 1, searched):
        position = found.start()
        if position + FRAME.size > len(tail):
            break
        running = zlib.crc32(view[summed:position], running)
        summed = position
        if running == crc:
            return position, True
        length, claimed = FRAME.unpack_from(tail, position)
        end = position + FRAME.size + length
        if end <= len(tail) and length <= budget:
            budget -= length
            if zlib.crc32(view[position + FRAME.size:end]) == claimed:
                return position, False
    if len(tail) > FRAME.size and zlib.crc32(view[summed:], running) == crc:
        return len(tail), True
    return None
