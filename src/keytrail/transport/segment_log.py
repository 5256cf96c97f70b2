"""The embedded on-disk event log: numbered records in segment files, read by offset.

A segment is `<base offset, 20 digits>.seg`; each record is framed as a 4-byte little-endian
length, a 4-byte CRC32 of the payload, then the payload. Offsets are consecutive record numbers.
`append` writes without syncing; `sync` makes everything appended durable (callers batch
several appends under one sync: group commit). One writer per directory (an exclusive `flock`
on `LOCK`); any number of readers, in this process or others, see what the writer has flushed.
Opening a writer cuts a torn tail left by a crash.
"""

from __future__ import annotations

import fcntl
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Frame", "LogLockedError", "SegmentLog", "event_log_dir", "writer_active"]

_FRAME = struct.Struct("<II")
_SUFFIX = ".seg"
_MAX_RECORD = 64 << 20  # a length beyond this is damage, not a record


def event_log_dir(data_dir: Path) -> Path:
    """Where a node keeps its embedded audit event log: `<data-dir>/audit/log`.
    Consumers open `SegmentLog(event_log_dir(data_dir))` and read by offset."""
    return Path(data_dir) / "audit" / "log"


def writer_active(directory: Path) -> bool:
    """True while a process holds the writer lock of the log in `directory`."""
    try:
        fd = os.open(Path(directory) / "LOCK", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


class LogLockedError(RuntimeError):
    """Another process holds the writer lock of this log."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One framed record as found on disk (for integrity checks): `intact` is False when the
    checksum does not match the payload."""

    offset: int
    payload: bytes
    intact: bool


@dataclass(slots=True)
class _Segment:
    base: int
    path: Path
    positions: list[int] = field(default_factory=list)  # file position of each record
    size: int = 0  # bytes covered by `positions`


class SegmentLog:
    """An append-only log in `directory`; see the module docstring."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20, writable: bool = False) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.writable = writable
        self._segments: list[_Segment] = []
        self._fd = -1
        self._lock_fd = -1
        self._dirty_dir = False
        if writable:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._take_lock()
        self.refresh()
        if writable:
            self._open_active()

    # --- writer ----------------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append records (not yet durable: call `sync`); return the offset of the first."""
        first = self.end_offset()
        active = self._segments[-1]
        chunks: list[bytes] = []
        positions: list[int] = []
        position = active.size
        pack, crc32 = _FRAME.pack, zlib.crc32
        for payload in payloads:
            if position >= self.segment_bytes and (active.positions or positions):
                self._publish(active, chunks, positions, position)
                active, chunks, positions, position = self.roll(), [], [], 0
            chunks.append(pack(len(payload), crc32(payload)))
            chunks.append(payload)
            positions.append(position)
            position += 8 + len(payload)
        self._publish(active, chunks, positions, position)
        return first

    def _publish(self, segment: _Segment, chunks: list[bytes], positions: list[int], size: int) -> None:
        # Write first, then index: a reader in another thread never sees an unwritten record.
        try:
            self._write(b"".join(chunks))
        except OSError:
            os.ftruncate(self._fd, segment.size)  # disk full mid-write: no partial frame stays
            raise
        segment.positions.extend(positions)
        segment.size = size

    def sync(self) -> None:
        """Make every appended record durable (fsync the active segment, and the directory
        when a segment was created)."""
        os.fsync(self._fd)
        if self._dirty_dir:
            _fsync_dir(self.directory)
            self._dirty_dir = False

    def roll(self) -> _Segment:
        """Close the active segment (syncing it) and start a new one at the end offset."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
        segment = _Segment(self.end_offset(), self.directory / f"{self.end_offset():020d}{_SUFFIX}")
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._segments.append(segment)
        self._dirty_dir = True
        return segment

    @property
    def active_base(self) -> int:
        """The base offset of the segment appends go to (changes when `append` rolls)."""
        return self._segments[-1].base

    def delete_before(self, offset: int) -> int:
        """Retention: delete closed segments whose records all lie before `offset`; return how
        many were deleted."""
        deleted = 0
        while len(self._segments) > 1 and self._segments[1].base <= offset:
            self._segments.pop(0).path.unlink(missing_ok=True)
            deleted += 1
        return deleted

    def close(self) -> None:
        """Sync and release the files and the writer lock."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]

    def _take_lock(self) -> None:
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogLockedError(f"the event log {self.directory} is in use by another process") from None

    def _open_active(self) -> None:
        if not self._segments:
            self.roll()
            return
        active = self._segments[-1]
        self._index(active)
        if active.path.stat().st_size > active.size:  # torn tail from a crash: cut it
            os.truncate(active.path, active.size)
        self._fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        os.fsync(self._fd)

    # --- readers ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up segments another process created or deleted."""
        known = {segment.base: segment for segment in self._segments}
        found = sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob(f"*{_SUFFIX}"))
        self._segments = [known.get(base) or _Segment(base, self.directory / f"{base:020d}{_SUFFIX}")
                          for base in found]

    def segment_bases(self) -> list[int]:
        """The base offset of every retained segment, oldest first."""
        return [segment.base for segment in self._segments]

    def bytes_from(self, offset: int) -> int:
        """Bytes (frames included) of the records from `offset` to the end."""
        total = 0
        for segment in self._segments_from(offset):
            self._index(segment)
            index = max(0, offset - segment.base)
            if index < len(segment.positions):
                total += segment.size - segment.positions[index]
        return total

    def segment_info(self) -> list[tuple[int, int, float]]:
        """(base offset, size in bytes, modification time) of every retained segment."""
        out = []
        for segment in self._segments:
            stat = segment.path.stat()
            out.append((segment.base, stat.st_size, stat.st_mtime))
        return out

    def start_offset(self) -> int:
        """The first offset still retained."""
        return self._segments[0].base if self._segments else 0

    def end_offset(self) -> int:
        """The offset the next appended record gets (readers: one past the last complete record)."""
        if not self._segments:
            return 0
        if not self.writable:
            self.refresh()
            if not self._segments:
                return 0
            self._index(self._segments[-1])
        last = self._segments[-1]
        return last.base + len(last.positions)

    def read(self, offset: int, max_records: int) -> list[tuple[int, bytes]]:
        """Up to `max_records` records from `offset` on, as (offset, payload)."""
        if not self.writable:
            self.refresh()
        out: list[tuple[int, bytes]] = []
        offset = max(offset, self.start_offset())
        for segment in self._segments_from(offset):
            if len(out) >= max_records:
                break
            out.extend(self._read_segment(segment, offset + len(out) - segment.base, max_records - len(out)))
        return out

    def frames(self) -> Iterator[Frame]:
        """Every framed record, including damaged ones (`intact` False), for integrity checks.
        A frame whose length is impossible ends its segment."""
        if not self.writable:
            self.refresh()
        for segment in self._segments:
            offset = segment.base
            for payload, intact in _scan(segment.path.read_bytes()):
                yield Frame(offset, payload, intact)
                offset += 1

    def _segments_from(self, offset: int) -> list[_Segment]:
        return [s for i, s in enumerate(self._segments)
                if i + 1 == len(self._segments) or self._segments[i + 1].base > offset]

    def _read_segment(self, segment: _Segment, index: int, limit: int) -> list[tuple[int, bytes]]:
        self._index(segment)
        stop = min(len(segment.positions), index + limit)
        if index >= stop:
            return []
        start = segment.positions[index]
        end = segment.positions[stop] if stop < len(segment.positions) else segment.size
        with segment.path.open("rb") as handle:
            handle.seek(start)
            data = handle.read(end - start)
        out: list[tuple[int, bytes]] = []
        position = 0
        for number in range(index, stop):
            length = _FRAME.unpack_from(data, position)[0]
            out.append((segment.base + number, data[position + 8: position + 8 + length]))
            position += 8 + length
        return out

    def _index(self, segment: _Segment) -> None:
        """Extend the segment's record positions over complete, checksummed frames on disk."""
        try:
            with segment.path.open("rb") as handle:
                handle.seek(segment.size)
                data = handle.read()
        except FileNotFoundError:
            return
        position = 0
        while position + 8 <= len(data):
            length, crc = _FRAME.unpack_from(data, position)
            end = position + 8 + length
            if length > _MAX_RECORD or end > len(data) or zlib.crc32(data[position + 8:end]) != crc:
                break
            segment.positions.append(segment.size + position)
            position = end
        segment.size += position


def _scan(data: bytes) -> Iterator[tuple[bytes, bool]]:
    position = 0
    while position + 8 <= len(data):
        length, crc = _FRAME.unpack_from(data, position)
        end = position + 8 + length
        if length > _MAX_RECORD or end > len(data):
            return
        payload = data[position + 8:end]
        yield payload, zlib.crc32(payload) == crc
        position = end


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
