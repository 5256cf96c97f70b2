"""What the first bytes of a file of records say before any is parsed: gzip (read as it is), or
another packing (said as such: "unpack it first", not bytes that are no UTF-8); and a pipe's first
bytes read whole, so that standard input's packing is told as a file's (its first read may hold
one byte)."""

from __future__ import annotations

import io
from typing import Any

__all__ = ["GZIP_MAGIC", "MAGIC_LENGTH", "Prefixed", "packed_as", "read_whole"]


class Prefixed(io.RawIOBase):
    """The bytes of `head`, read from `rest` already, then the rest of `rest`."""

    def __init__(self, head: bytes, rest: io.RawIOBase) -> None:
        super().__init__()
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        if not self._head:
            return self._rest.readinto(buffer)
        count = min(len(buffer), len(self._head))
        memoryview(buffer).cast("B")[:count] = self._head[:count]
        self._head = self._head[count:]
        return count


def read_whole(stream: io.RawIOBase, size: int) -> bytes:
    """The first `size` bytes of `stream` (fewer only at its end), whatever each read gives."""
    head = b""
    while len(head) < size and (data := stream.read(size - len(head))):
        head += data
    return head


GZIP_MAGIC = b"\x1f\x8b"
#: The first bytes of the other ways a file of records may come packed (Firehose compresses with
#: ZIP or Snappy too; bzip2, xz and zstd by hand), said as such rather than as bytes that are no
#: UTF-8. Only gzip, CloudTrail's and CloudWatch Logs' own, is read as it is.
_PACKED = {b"PK\x03\x04": "a zip archive", b"BZh": "bzip2-compressed", b"\xfd7zXZ\x00": "xz-compressed",
           b"\x28\xb5\x2f\xfd": "zstd-compressed", b"\xff\x06\x00\x00sNaPpY": "Snappy-compressed",
           b"PAR1": "a Parquet file"}
#: Enough of a file's start for each mark: _PACKED's, and a Hadoop-framed Snappy block's head
#: (two lengths, the chunk's varint of at most 5 bytes and its first tag).
MAGIC_LENGTH = max(*map(len, _PACKED), 14)


def packed_as(head: bytes) -> str | None:
    """What packing the first bytes of a file are the mark of, if any (_PACKED, or Hadoop's
    framing of Snappy, which has no mark: _is_hadoop_snappy)."""
    kind = next((kind for magic, kind in _PACKED.items() if head.startswith(magic)), None)
    return kind or ("Snappy-compressed (Hadoop-compatible)" if _is_hadoop_snappy(head) else None)


def _is_hadoop_snappy(head: bytes) -> bool:
    """Whether a file starts as Hadoop's BlockCompressorStream frames Snappy (Firehose's
    HADOOP_SNAPPY compression): the block's length and its first chunk's, 4 bytes big-endian each,
    then the chunk: a Snappy block, its own length as a varint (no more than the block's, the
    chunk no longer than Snappy makes it) and a literal first. Text starts with a byte of at least
    a tab (0x09), a length past _HADOOP_BLOCK_MAX: no JSON file, nor UTF-16 or UTF-32 (their NULs
    give a varint of 0), looks so."""
    if len(head) < 9:
        return False
    block, chunk = int.from_bytes(head[:4], "big"), int.from_bytes(head[4:8], "big")
    length, end = _varint(head, 8)
    return (0 < block <= _HADOOP_BLOCK_MAX and 0 < length <= block and 0 < chunk <= 32 + length + length // 6
            and (end >= len(head) or head[end] & 3 == 0))


#: Past any block Hadoop's codecs write (256 KiB by default), below any text's first 4 bytes.
_HADOOP_BLOCK_MAX = 64 << 20


def _varint(data: bytes, start: int) -> tuple[int, int]:
    """The little-endian base-128 number at `start` (Snappy's length) and where it ends; 0 when
    `data` holds none there (cut, or longer than a 32-bit one)."""
    value = 0
    for index, byte in enumerate(data[start:start + 5]):
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, start + index + 1
    return 0, len(data)
