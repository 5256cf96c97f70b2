"""The embedded on-disk event log: numbered records in segment files, read by offset.

A segment is `<base offset, 20 digits>.seg`; each record is framed as a 4-byte little-endian
length, a 4-byte CRC32 of the payload, then the payload. Offsets are consecutive record numbers.
`append` writes without syncing, a batch's first frame header last (readers see all of the
batch's records or none), a batch whole in one segment (a segment may pass `segment_bytes` by its
last batch); `sync` makes everything appended durable (callers batch several appends
under one sync: group commit). One writer per directory (an exclusive `flock`
on `LOCK`); any number of readers, in this process or others, see what the writer has flushed.
Opening a writer cuts a torn tail left by a crash; the bytes it cuts are kept beside the segment
(`<segment>.cut-at-<position>-<time>`): a tail that is damage rather than a torn write, with whole
records after it, stays on disk for `keytrail audit verify` and for whoever investigates. Whoever
opens the writer reports a torn tail it cut (`SegmentLog.cut`): only it may know whether the
writer before it crashed (audit/integrity.py reads the trail's final digest).

Readers read in bounded chunks and check each record's CRC32 the first time they read it; they
never return a record whose checksum fails, nor any after it in its segment. `read_payloads`
hands a batch on as one bytes object (`Payloads`), not one object per record.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from keytrail.owner_only import make_dirs, named, open_regular, sync_folder
from keytrail.transport.frames import (
    FRAME,
    MAX_RECORD,
    Payloads,
    frame_bytes,
    one_unfinished_write,
    payloads_at,
    split,
    verified_prefix,
)

__all__ = [
    "Cut", "CutRefused", "Damage", "Frame", "LogLockedError", "LogMoved", "SegmentLog", "TornWrite",
    "event_log_dir",
    "lock_held", "writer_active",
]

_SUFFIX = ".seg"
log = logging.getLogger(__name__)
_CHUNK = 1 << 20  # readers read this much at a time (more for one larger record)
# How long a frame header of zeros with written bytes after it may stay, in the segment a writer
# appends to, before readers take it for a hole rather than a batch in progress. A writer writes a
# batch's first header right after the rest of it (microseconds apart); a hole zeroed into the file
# stays, and the writer's records after it would go unread in silence.
HOLE_SECONDS = 1.0


def event_log_dir(data_dir: Path) -> Path:
    """Where a node keeps its embedded audit event log: `<data-dir>/audit/log`.
    Consumers open `SegmentLog(event_log_dir(data_dir))` and read by offset."""
    return Path(data_dir) / "audit" / "log"


def writer_active(directory: Path) -> bool:
    """True while a process holds the writer lock of the log in `directory`."""
    return lock_held(Path(directory) / "LOCK")


def lock_held(path: Path) -> bool:
    """True while a process holds an exclusive `flock` on `path`. The probe is a shared lock taken
    and dropped at once (two probes never see each other); it never creates the file."""
    try:  # not waiting on a FIFO put in its place
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we may have taken
    return False


@dataclass(frozen=True, slots=True)
class Damage:
    """Bytes of the log that are no whole record: `torn_write` when they are one unfinished frame
    at the very end of the last segment, or begin with a header of zeros (a batch whose first
    header was still to be written), what a crash leaves of a write it interrupted. Of a torn
    write, `offset` is the record offset the bytes begin at and `facts` says them without reading
    them as a crash's, which they cannot be after a clean stop (see `torn`)."""

    text: str
    torn_write: bool
    offset: int | None = None
    facts: str = ""

    @classmethod
    def torn(cls, facts: str, offset: int) -> Damage:
        """A torn write, its `text` reading it as a crash's (whoever knows the writer stopped cleanly
        says `facts` otherwise)."""
        return cls(f"{facts} (a write torn by a crash, cut and kept aside when keytrail serve next opens the log, or "
                   "damage)", torn_write=True, offset=offset, facts=facts)


@dataclass(frozen=True, slots=True)
class Cut:
    """What opening a writer cut off the end of its last segment and kept in `kept`: the `size`
    bytes after record `offset` of `segment`; `torn_write` as in `Damage`."""

    segment: Path
    offset: int
    size: int
    kept: Path
    torn_write: bool


class LogLockedError(RuntimeError):
    """Another process holds the writer lock of this log."""


class CutRefused(RuntimeError):
    """Opening a writer found bytes that are no whole record at `offset` of `segment`, below the
    offset it was told to keep every record under (`SegmentLog(keep_below=…)`): it cut nothing."""

    def __init__(self, segment: Path, offset: int) -> None:
        super().__init__(f"{segment.name}: the record at offset {offset} is damaged")
        self.segment = segment
        self.offset = offset


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
    # The file position of each record: 8 bytes each in an array, where a list of ints took 36 (a
    # reader of a year's log, 1.5 million records, held 57 MB of them; the node itself as much).
    positions: array[int] = field(default_factory=lambda: array("q"))
    size: int = 0  # bytes covered by `positions`
    # Bytes follow `size` that no write in progress leaves: their header is not zeros (a writer
    # writes a batch's first header last), yet they begin no intact frame (see `_verify`).
    blocked: bool = False
    # A header of zeros at `size` with bytes written after it: since when (monotonic) a reader has
    # seen it there. A batch in progress for a moment; a hole once it stays (see `_hole_stays`).
    hole_since: float | None = None


class TornWrite(OSError):
    """An append failed after writing part of its bytes, and cutting them off failed too: records
    appended after them would sit behind bytes that are no record (a restart would cut them)."""


class LogMoved(OSError):
    """The file appends go to is no longer at its path: the log's folder (or one above it) was
    moved away, replaced or deleted while the writer ran. Its appends would land where no reader
    looks, or nowhere once the file is deleted, the calls they audit answered all the same."""

    def __init__(self, path: Path) -> None:
        super().__init__(f"{path} is no longer the file this node writes its audit records to (its folder was "
                         "moved, replaced or deleted while it ran): records would go where no reader finds "
                         "them; restart it")


class SegmentLog:
    """An append-only log in `directory`; see the module docstring."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 << 20, writable: bool = False,
                 keep_below: int = 0) -> None:
        """`keep_below`: a writer cuts no tail that begins below this offset (CutRefused): the
        records up to it are vouched for elsewhere (signed, shipped), so such bytes are damage."""
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.writable = writable
        self._segments: list[_Segment] = []
        self._fd = -1
        self._fd_file: tuple[int, int] = (0, 0)  # the (device, inode) of the file `_fd` writes
        self._lock_fd = -1
        self._dirty_dir = False
        self.cut: Cut | None = None  # what opening as the writer cut off the last segment
        if writable:
            _create_directory(self.directory)
            self._take_lock()
        self.refresh()
        if writable:
            try:
                self._open_active(keep_below)
            except BaseException:
                self.close()  # the writer lock too: a refused open holds nothing
                raise

    # --- writer ----------------------------------------------------------------------------------

    def append(self, payloads: Sequence[bytes]) -> int:
        """Append records (not yet durable: call `sync`), all in one segment, rolling first if the
        active one is `full`; return the offset of the first. On an error none of them is in the log
        (after a TornWrite, bytes that are no record are)."""
        if not all(payloads):  # readers take a frame of length 0 for a zero-filled tail, not a record
            raise ValueError("the event log takes no empty record")
        first = self.end_offset()
        active = self.roll() if self.full else self._segments[-1]
        chunks: list[bytes] = []
        positions: list[int] = []
        position = active.size
        pack, crc32 = FRAME.pack, zlib.crc32
        for payload in payloads:
            chunks.append(pack(len(payload), crc32(payload)))
            chunks.append(payload)
            positions.append(position)
            position += 8 + len(payload)
        self._publish(active, chunks, positions, position)
        return first

    @property
    def full(self) -> bool:
        """Whether the active segment holds `segment_bytes` or more: the next `append` rolls. A
        writer that can roll off its hot path does it first (the roll fsyncs the closed segment)."""
        active = self._segments[-1]
        return active.size >= self.segment_bytes and bool(active.positions)

    def _publish(self, segment: _Segment, chunks: list[bytes], positions: list[int], size: int) -> None:
        # Write first, then index: a reader in another thread never sees an unwritten record.
        # The first frame's header goes last. Until then readers find a length of 0 there (a hole
        # in the file), which they take for a record still being written. So when the disk takes
        # only part of a write, whose bytes are cut off again below, no reader in another process
        # has read whole frames of it: frames that would be gone, their offsets then given to
        # other records.
        data = memoryview(b"".join(chunks))
        try:
            self._write_at(data[FRAME.size:], segment.size + FRAME.size)
            self._write_at(data[:FRAME.size], segment.size)
        except OSError as error:
            try:
                os.ftruncate(self._fd, segment.size)  # disk full mid-write: no partial frame stays
            except OSError as cut:
                raise TornWrite(f"{error}; the part written could not be cut off ({cut})") from error
            raise
        segment.positions.extend(positions)
        segment.size = size

    def sync(self) -> None:
        """Make every appended record durable (fsync the active segment, and the directory
        when a segment was created); LogMoved when they went to a file no longer at its path."""
        os.fsync(self._fd)
        self.require_in_place()
        if self._dirty_dir:
            sync_folder(self.directory)
            self._dirty_dir = False

    def require_in_place(self) -> None:
        """LogMoved unless the active segment's path still names the file appends go to. One stat:
        called where the writer syncs or rolls, never per record (the fsync helper checks as it
        syncs, audit/syncer.py)."""
        if self._fd < 0:  # none open yet (a new log), or the last open failed
            return
        path = self._segments[-1].path
        try:
            found = os.stat(path)
        except FileNotFoundError:
            raise LogMoved(path) from None
        if (found.st_dev, found.st_ino) != self._fd_file:
            raise LogMoved(path)

    def roll(self) -> _Segment:
        """Close the active segment (syncing it) and start a new one at the end offset, in the
        folder the closed one is still in (LogMoved if not: the new one would start another log)."""
        self.require_in_place()
        self._close_active()
        segment = _Segment(self.end_offset(), self.directory / f"{self.end_offset():020d}{_SUFFIX}")
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_CREAT, 0o600)  # no O_APPEND: see `_publish`
        self._fd_file = _file_of(self._fd)
        self._segments.append(segment)
        self._dirty_dir = True
        return segment

    @property
    def active_path(self) -> Path:
        """The file appends go to."""
        return self._segments[-1].path

    @property
    def needs_directory_sync(self) -> bool:
        """Whether `sync` must also fsync the directory (a segment was created since the last)."""
        return self._dirty_dir

    @property
    def active_base(self) -> int:
        """The base offset of the segment appends go to (changes when `append` rolls)."""
        return self._segments[-1].base

    def kept_from(self, offset: int) -> int:
        """The first offset `delete_before(offset)` would keep."""
        bases = [segment.base for segment in self._segments[1:] if segment.base <= offset]
        return bases[-1] if bases else self.start_offset()

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
        self._close_active()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _close_active(self) -> None:
        """Sync and close the active segment's descriptor, if open."""
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            # Forget the closed number before a new open: if that fails (no descriptor left, disk
            # full), the next roll or close must not fsync and close whatever file then got it.
            self._fd = -1

    def _write_at(self, data: memoryview, position: int) -> None:
        while data:
            written = os.pwrite(self._fd, data, position)
            data, position = data[written:], position + written

    def _take_lock(self) -> None:
        self._lock_fd = os.open(self.directory / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise LogLockedError(f"the event log {self.directory} is in use by another process") from None

    def _open_active(self, keep_below: int) -> None:
        if not self._segments:
            self.roll()
            return
        active = self._segments[-1]
        self._index(active)
        if (with_bytes := active.path.stat().st_size) > active.size:
            if (offset := active.base + len(active.positions)) < keep_below:
                raise CutRefused(active.path, offset)
            self.cut = _cut_tail(active, with_bytes)
        self._fd = os.open(active.path, os.O_WRONLY)
        self._fd_file = _file_of(self._fd)
        os.fsync(self._fd)

    # --- readers ---------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Pick up segments another process created or deleted."""
        known = {segment.base: segment for segment in self._segments}
        # Only `<20 digits>.seg` is a segment: a stray `backup.seg` copied in is not read.
        found = sorted(int(p.name[: -len(_SUFFIX)]) for p in self.directory.glob(f"{'[0-9]' * 20}{_SUFFIX}"))
        self._segments = [known.get(base) or _Segment(base, self.directory / f"{base:020d}{_SUFFIX}")
                          for base in found]

    def damage(self) -> str | None:
        """Where readers stop short of what the files hold, if anywhere: bytes that are not whole,
        intact records in a closed segment, or in the last one while no writer is at work, or in a
        writer's last segment unless they begin with a header of zeros (a record it is still
        writing) that does not stay for HOLE_SECONDS. None when all is readable."""
        found = self.find_damage()
        return found.text if found is not None else None

    def find_damage(self) -> Damage | None:
        """`damage`, telling a crash's torn last write from damage with whole records after it."""
        self.refresh()
        writing = writer_active(self.directory)
        gap: str | None = None
        for number, segment in enumerate(self._segments, 1):
            self._index(segment)
            if number == len(self._segments) and writing:
                if damage := self._damage_in_writers_segment(segment):
                    return damage
                break
            try:
                with_bytes = segment.path.stat().st_size
            except FileNotFoundError:  # retention deleted it meanwhile
                continue
            if with_bytes > segment.size:
                offset, unread = segment.base + len(segment.positions), with_bytes - segment.size
                if number == len(self._segments) and _ends_in_one_frame(segment, with_bytes):  # a crash's torn write
                    return Damage.torn(f"{segment.path.name}: the {unread} bytes from record offset {offset} to the "
                                       "end are no whole record", offset)
                return Damage(f"{segment.path.name}: the record at offset {offset} is damaged; the {unread} bytes "
                              "from there to the segment's end cannot be read", torn_write=False)
            if number < len(self._segments) and gap is None:
                gap = _gap(segment, self._segments[number])
        return Damage(gap, torn_write=False) if gap else None  # bytes that are no record are named first

    def _damage_in_writers_segment(self, segment: _Segment) -> Damage | None:
        """Damage in the segment a writer appends to: bytes after its last intact record that no write
        in progress leaves. Looked at twice, 10 ms apart: a frame header read while the writer wrote
        it may come half old, half new (a read is not atomic across a page), and verify then."""
        if segment.blocked:
            time.sleep(0.01)
            self._index(segment)
        while not segment.blocked and (age := _hole_age(segment)) is not None and age < HOLE_SECONDS:
            time.sleep(0.05)  # a batch in progress has its first header written by then
            self._index(segment)
        offset = segment.base + len(segment.positions)
        if segment.blocked:
            what = "is damaged"
        elif self._hole_stays(segment):
            what = f"is a hole of zeros (not a write in progress: it stayed over {HOLE_SECONDS:g} s)"
        else:
            return None
        return Damage(f"{segment.path.name}: the record at offset {offset} {what}; readers stop there, and the writer "
                      "appends its records after it, unread", torn_write=False)

    def _hole_stays(self, segment: _Segment) -> bool:
        """Whether the header of zeros at the end of `segment` (`_Segment.hole_since`) stayed long
        enough to be no write in progress, while a writer is at work: a writer killed between a batch's
        two writes leaves the same bytes, a torn write its restart cuts."""
        age = _hole_age(segment)
        return age is not None and age >= HOLE_SECONDS and writer_active(self.directory)

    def held_at_end(self) -> bool:
        """Whether the last segment, as last indexed (`end_offset`), ends in bytes that are no record
        and no write in progress (see `_Segment.blocked`, `_Segment.hole_since`): damage a reader at
        the end waits before."""
        if not self._segments:
            return False
        last = self._segments[-1]
        return last.blocked or self._hole_stays(last)

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
        """Up to `max_records` consecutive records from `offset` on, as (offset, payload).

        Ends at the end of what is written and before a damaged record: a reader never gets past one.
        """
        if not self.writable:
            self.refresh()
        out: list[tuple[int, bytes]] = []
        while len(out) < max_records:
            first, payloads = self._read_from(offset, max_records - len(out))
            if not payloads or (out and first != offset):
                break
            offset = first + len(payloads)
            out.extend(zip(range(first, offset), payloads, strict=True))
        return out

    def read_payloads(self, offset: int, max_records: int) -> tuple[int, Payloads]:
        """Up to `max_records` consecutive records of one segment from `offset` on (from the first
        retained one when `offset` was deleted): the offset of the first and their payloads, read
        into one bytes object. Empty at the end of what is written and before a damaged record."""
        if not self.writable:
            self.refresh()
        return self._read_from(offset, max_records)

    def frames(self) -> Iterator[Frame]:
        """Every framed record, including damaged ones (`intact` False), for integrity checks.
        A frame whose length is impossible ends its segment."""
        if not self.writable:
            self.refresh()
        for segment in self._segments:
            with open(open_regular(segment.path), "rb", buffering=0) as handle:
                for offset, (payload, intact) in enumerate(_all_frames(handle.fileno()), segment.base):
                    yield Frame(offset, payload, intact)

    def _segments_from(self, offset: int) -> list[_Segment]:
        return [s for i, s in enumerate(self._segments)
                if i + 1 == len(self._segments) or self._segments[i + 1].base > offset]

    def _read_from(self, offset: int, limit: int) -> tuple[int, Payloads]:
        offset = max(offset, self.start_offset())
        segments = self._segments_from(offset)
        if not segments or limit <= 0:
            return offset, _NO_PAYLOADS
        return offset, self._read_segment(segments[0], offset - segments[0].base, limit)

    def _read_segment(self, segment: _Segment, index: int, limit: int) -> Payloads:
        """Records `index` … `index + limit - 1` of `segment` (fewer at its verified end): those
        verified before are read back as they are, the rest verified as they are read."""
        try:
            fd = open_regular(segment.path)
        except FileNotFoundError:  # retention deleted it meanwhile: the next read starts later
            return _NO_PAYLOADS
        try:
            _verify(fd, segment, index, None)  # no-op unless the reader jumps ahead
            if index > len(segment.positions):
                return _NO_PAYLOADS
            start, known = _position(segment, index), min(index + limit, len(segment.positions))
            parts = [memoryview(os.pread(fd, _position(segment, known) - start, start))] if known > index else []
            _verify(fd, segment, index + limit, parts)
        finally:
            os.close(fd)
        stop = min(index + limit, len(segment.positions))
        return payloads_at(b"".join(parts), segment.positions[index:stop], start)

    def _index(self, segment: _Segment) -> None:
        """Extend the segment's record positions over complete, checksummed frames on disk."""
        try:
            fd = open_regular(segment.path)
        except FileNotFoundError:
            return
        try:
            _verify(fd, segment, sys.maxsize, None)
        finally:
            os.close(fd)


_NO_PAYLOADS = Payloads(b"", [], [])


def _gap(closed: _Segment, following: _Segment) -> str | None:
    """Why `following` does not take up where `closed` (whole, indexed) ends, if it does not. A
    reader stops at the gap: without it named, commands that read the log whole answered from the
    segments before it in silence (retention deletes only the oldest segments, never between)."""
    end = closed.base + len(closed.positions)
    if following.base > end:
        return (f"{following.path.name} starts at record offset {following.base} but {closed.path.name} ends at "
                f"{end}: the records at offsets {end}..{following.base - 1} are missing (a segment file deleted, "
                "emptied or renamed), and readers stop there")
    if following.base < end:
        return (f"{following.path.name} starts at record offset {following.base} but {closed.path.name} ends at "
                f"{end}: the records at offsets {following.base}..{end - 1} are in both (a segment file renamed or "
                "written into)")
    return None


def _position(segment: _Segment, index: int) -> int:
    """Where record `index` of `segment` begins (the verified end when it is the next one)."""
    return segment.positions[index] if index < len(segment.positions) else segment.size


def _verify(fd: int, segment: _Segment, until: int, keep: list[memoryview] | None) -> None:
    """Extend `segment.positions` over intact frames after its verified size until it holds
    `until`, reading bounded chunks; `keep` gets the verified bytes. Stops at the end of the
    file, at a partial frame (its rest is not written yet) and at a damaged one (for good)."""
    size = _CHUNK
    while len(segment.positions) < until:
        # Chunks, not one read of the whole: a large read is fresh memory each time (page
        # faults), where chunks reuse the same few freed blocks.
        with named(segment.path):  # pread's error has no file name ("Is a directory" alone)
            data = os.pread(fd, size, segment.size)
        verified = verified_prefix(data, segment.size, until - len(segment.positions), segment.positions)
        if verified and keep is not None:
            keep.append(memoryview(data)[:verified])
        segment.size += verified
        stopped = len(segment.positions) < until
        segment.blocked = stopped and any(data[verified:verified + FRAME.size])
        _see_hole(segment, stopped and not segment.blocked and _written_after(data, verified), fresh=verified > 0)
        if len(data) < size:
            return
        size = _CHUNK if verified else frame_bytes(data)
        if not verified and size <= len(data):  # a whole frame failed its checksum, or cannot be
            return


def _see_hole(segment: _Segment, seen: bool, fresh: bool) -> None:
    """Start or keep the clock of a header of zeros with bytes after it (`_Segment.hole_since`);
    `fresh`: records were verified before it, so it is not the one seen before."""
    if not seen:
        segment.hole_since = None
    elif fresh or segment.hole_since is None:
        segment.hole_since = time.monotonic()


def _hole_age(segment: _Segment) -> float | None:
    """Seconds since a reader first saw the header of zeros at the end of `segment`, if one is there."""
    return None if segment.hole_since is None else time.monotonic() - segment.hole_since


def _written_after(data: bytes, position: int) -> bool:
    """Whether a byte other than zero follows `position` in `data`: zeros alone past the last record
    hold no record back (the writer writes over them)."""
    return data.count(0, position) < len(data) - position


def _all_frames(fd: int) -> Iterator[tuple[bytes, bool]]:
    """Every whole frame of a segment file as (payload, intact), read in bounded chunks; ends at
    a partial frame and at an impossible length."""
    position, size = 0, _CHUNK
    while True:
        data = os.pread(fd, size, position)
        used = 0
        for payload, intact in split(data):
            yield payload, intact
            used += FRAME.size + len(payload)
        position += used
        if len(data) < size:
            return
        size = _CHUNK if used else frame_bytes(data)
        if not used and size <= len(data):
            return


def _ends_in_one_frame(segment: _Segment, file_size: int) -> bool:
    """Whether the unreadable bytes after the segment's last whole record are one frame, cut short
    or failing its checksum, and nothing after it, or start with a header of zeros: what a crash
    leaves of an unfinished write (the writer writes a batch's first header last, and a crash may
    keep a file's new length but not its data). Not when that frame's length, damaged, hides whole
    records (`hidden_records`): the bytes are read for them only when its length claims them all,
    and no further than a frame can reach."""
    with open(open_regular(segment.path), "rb") as handle:
        handle.seek(segment.size)
        head = handle.read(FRAME.size)
        return one_unfinished_write(head, file_size - segment.size, lambda: head + handle.read(MAX_RECORD))


def _cut_tail(segment: _Segment, file_size: int) -> Cut:
    """Keep what follows the segment's last whole record aside, then cut it off. Damage with
    records after it is logged here: answered records leave the log. A torn write is left to the
    opener to say (`SegmentLog.cut`): a crash's, or bytes written in after a clean stop."""
    torn = _ends_in_one_frame(segment, file_size)
    kept = _keep_tail(segment)
    os.truncate(segment.path, segment.size)
    segment.blocked = False
    cut = Cut(segment.path, segment.base + len(segment.positions), kept.stat().st_size, kept, torn)
    if not torn:  # answered records after the damage leave the log: say so loudly
        log.error("event log %s: the record at offset %d is damaged, and whole records follow the damage: cut with "
                  "them (%d bytes, kept in %s); readers and Kafka miss them, and `keytrail audit verify` names "
                  "those the signed digests miss", segment.path.name, cut.offset, cut.size, kept.name)
    return cut


def _keep_tail(segment: _Segment) -> Path:
    """Copy what follows the segment's last whole record to a file beside it (synced); its path."""
    kept = segment.path.with_name(f"{segment.path.name}.cut-at-{segment.size}-{time.time_ns()}")
    target_fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # audit bytes: owner only
    try:
        with named(kept), open(open_regular(segment.path), "rb") as source, os.fdopen(target_fd, "wb") as target:
            source.seek(segment.size)
            while chunk := source.read(_CHUNK):
                target.write(chunk)
            target.flush()
            os.fsync(target.fileno())
    except BaseException:
        # Nothing was cut: the bytes are still in the segment, and a part copy left here would be
        # one more file at each start that fails so (a full disk, serve restarted in a loop).
        kept.unlink(missing_ok=True)
        raise
    sync_folder(segment.path.parent)
    return kept


def _file_of(fd: int) -> tuple[int, int]:
    """The (device, inode) of the file `fd` is open on."""
    found = os.fstat(fd)
    return found.st_dev, found.st_ino


def _create_directory(directory: Path) -> None:
    """`mkdir -p`, each new folder's entry made durable in its parent: the first records' fsync
    covers their segment and the log folder's entry for it, not the folders above."""
    missing = []
    path = directory
    while not path.exists():
        missing.append(path)
        path = path.parent
    make_dirs(directory)
    for created in reversed(missing):
        sync_folder(created.parent)
