"""Record framing of the embedded event log (`keytrail.transport.segment_log`).

Each record is framed as a 4-byte little-endian length, a 4-byte CRC32 of the payload, then the
payload. Readers check frames a chunk at a time, the checksum over a view of the chunk, and hand
a batch on as `Payloads`: one bytes object, still framed, rather than one object per record.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, MutableSequence, Sequence
from itertools import repeat
from typing import overload

__all__ = ["FRAME", "FRAME_HEADER", "MAX_RECORD", "Payloads", "frame_bytes", "framed_size", "one_unfinished_write",
           "payloads_at", "possible_length", "split", "verified_prefix"]

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


def framed_size(payloads: Iterable[bytes]) -> int:
    """The bytes these payloads take in the log once framed."""
    return sum(FRAME_HEADER + len(payload) for payload in payloads)


def frame_bytes(data: bytes) -> int:
    """The bytes the frame at the start of `data` takes (0 when its length is impossible)."""
    length = FRAME.unpack_from(data)[0]
    return FRAME.size + length if possible_length(length) else 0


def one_unfinished_write(head: bytes, size: int) -> bool:
    """Whether the `size` bytes after a segment's last whole record, beginning with `head` (their
    first FRAME_HEADER bytes, or all of them when fewer), are what a crash leaves of a write it
    interrupted: one frame cut short or failing its checksum and nothing after it, or a header of
    zeros first (the writer writes a batch's first header last, and a crash may keep a file's new
    length but not its data). Otherwise they are damage with more after it."""
    header = head[:FRAME.size]
    return len(header) < FRAME.size or not header.strip(b"\0") or FRAME.size + FRAME.unpack(header)[0] >= size
