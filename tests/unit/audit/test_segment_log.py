"""The embedded event log: offsets, segments, torn tails, retention, the writer lock."""

from __future__ import annotations

import os
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keytrail.transport import frames, segment_log
from keytrail.transport.frames import MAX_RECORD, hidden_records, possible_length
from keytrail.transport.kept_tails import RecordsCut, records_cut
from keytrail.transport.segment_log import Cut, LogLockedError, SegmentLog
from tests.support.audit_records import append_each, flip_bit, overwrite


def _payloads(count: int, size: int = 40) -> list[bytes]:
    return [bytes([65 + i % 26]) * size + str(i).encode() for i in range(count)]


def test_append_returns_offsets_and_read_returns_them_in_order(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    assert log.append(_payloads(5)) == 0
    assert log.append(_payloads(3)) == 5
    log.sync()
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 8
    assert len(reader.segment_bases()) > 1  # small segments: the records span several files
    assert [o for o, _ in reader.read(0, 100)] == list(range(8))
    assert reader.read(6, 1) == [(6, _payloads(3)[1])]
    assert reader.read(8, 10) == []


def test_reader_sees_records_appended_later(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=120, writable=True)
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 1 or reader.end_offset() == 0
    log.append(_payloads(4))
    log.sync()
    assert [o for o, _ in reader.read(2, 10)] == [2, 3]


def test_torn_tail_is_cut_on_open_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    segment = _closed_log(tmp_path, 10)
    intact = segment.stat().st_size
    with segment.open("ab") as handle:  # a crash in the middle of the next write
        handle.write(b"\x30\x00\x00\x00\x01\x02\x03\x04half-a-record")
    assert SegmentLog(tmp_path).end_offset() == 10  # readers ignore the torn frame
    reopened = SegmentLog(tmp_path, writable=True)
    assert segment.stat().st_size == intact
    assert reopened.append([b"after crash"]) == 10
    reopened.sync()
    assert SegmentLog(tmp_path).read(10, 1) == [(10, b"after crash")]
    assert [p for _, p in SegmentLog(tmp_path).read(0, 10)] == _payloads(10)


def test_corrupt_tail_frame_is_cut(tmp_path: Path) -> None:
    segment = _closed_log(tmp_path, 3)
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # last record's payload no longer matches its CRC
    segment.write_bytes(bytes(data))
    assert SegmentLog(tmp_path, writable=True).end_offset() == 2


def _ten_records_with_the_fifth_damaged(folder: Path) -> tuple[Path, bytes, int]:
    """A closed log of ten records whose record 4 fails its checksum: (segment, its bytes, where
    record 4's frame begins)."""
    log = SegmentLog(folder, writable=True)
    log.append(_payloads(10))
    log.sync()
    log.close()
    segment = _segment(folder)
    data = bytearray(segment.read_bytes())
    position = sum(8 + len(p) for p in _payloads(4))  # record 4's frame
    data[position + 8] ^= 0xFF  # its payload no longer matches its CRC
    segment.write_bytes(bytes(data))
    return segment, bytes(data), position


def test_what_opening_cuts_is_kept_beside_the_segment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    segment, data, position = _ten_records_with_the_fifth_damaged(tmp_path)
    assert SegmentLog(tmp_path).damage() == (
        f"{segment.name}: the record at offset 4 is damaged; the {len(data) - position} bytes from there to the "
        "segment's end cannot be read")
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_log"):
        SegmentLog(tmp_path, writable=True).close()
    [said] = caplog.records  # answered records cut with the damage: an error, not a torn write's warning
    assert said.levelname == "ERROR" and "the record at offset 4 is damaged, and whole records follow" in said.message
    [kept] = tmp_path.glob("*.cut-at-*")
    assert kept.name.startswith(f"{segment.name}.cut-at-{position}-") and kept.read_bytes() == data[position:]
    assert kept.stat().st_mode & 0o777 == 0o600
    assert segment.read_bytes() == data[:position] and SegmentLog(tmp_path).damage() is None


def test_a_torn_write_is_cut_and_left_to_the_opener_to_say(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A crash's, or bytes written in after a clean stop: only the trail's final digest tells, which
    # this layer does not read (the trail says which: tests/unit/audit/test_integrity.py).
    segment = _closed_log(tmp_path, 5)
    with segment.open("ab") as torn:
        torn.write(struct.pack("<II", 100, 0) + b"part of it")  # the last write, cut short by the crash
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_log"):
        log = SegmentLog(tmp_path, writable=True)
        log.close()
    assert caplog.records == []
    [kept] = tmp_path.glob("*.cut-at-*")
    assert log.cut == Cut(segment, 5, 18, kept, torn_write=True)
    assert kept.read_bytes() == struct.pack("<II", 100, 0) + b"part of it"


def _framed(payloads: list[bytes]) -> bytes:
    return b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads)


@pytest.mark.parametrize("flipped", [1 << 12, 1 << 30], ids=["past the segment's end", "more than a record can be"])
def test_a_length_damaged_to_claim_every_byte_after_it_is_damage_not_a_torn_write(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, flipped: int) -> None:
    # One unfinished frame, to the length alone: a start cut records 4..9, answered calls, with a
    # warning of a torn write, and verify named neither the damage nor the records.
    segment, data, position = _ten_records_with_the_fifth_damaged(tmp_path)
    data = data[:position + 8] + bytes([data[position + 8] ^ 0xFF]) + data[position + 9:]  # the payload as it was
    length = int.from_bytes(data[position:position + 4], "little") ^ flipped
    data = data[:position] + length.to_bytes(4, "little") + data[position + 4:]
    segment.write_bytes(data)
    damage = SegmentLog(tmp_path).find_damage()
    assert damage is not None and not damage.torn_write
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_log"):
        log = SegmentLog(tmp_path, writable=True)
        log.close()
    [said] = caplog.records
    assert said.levelname == "ERROR" and "the record at offset 4 is damaged, and whole records follow" in said.message
    assert log.cut is not None and not log.cut.torn_write
    assert records_cut(tmp_path) == [RecordsCut(log.cut.kept, segment.name, 4, len(data) - position, 6)]


def test_records_hidden_behind_a_length_that_claims_every_byte_are_found() -> None:
    record, after = b"the damaged record", _payloads(3)
    header = struct.pack("<II", len(record) + (1 << 16), zlib.crc32(record))  # bit 16 of its length flipped
    assert hidden_records(header + record + _framed(after)) == 4  # itself, whole up to the next header, and 3
    assert hidden_records(header + record) == 1  # the last record: whole up to the end
    checksum_too = struct.pack("<II", len(record) + (1 << 16), zlib.crc32(record) ^ 1)
    assert hidden_records(checksum_too + record + _framed(after)) == 3  # the intact frames after it
    assert hidden_records(checksum_too + record) == 0  # nothing shows where it ended: as a torn write
    torn = _framed([record])
    for end in range(8, len(torn)):  # a crash's torn write, cut anywhere, or its end zeros
        assert hidden_records(torn[:end]) == 0
        assert hidden_records(torn[:end] + bytes(4096)) == 0


@settings(max_examples=60, deadline=None)
@given(payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=2, max_size=12), data=st.data())
def test_a_bit_flipped_in_a_length_to_claim_the_rest_never_hides_the_records_behind_it(
        payloads: list[bytes], data: st.DataObject) -> None:
    damaged = data.draw(st.integers(min_value=0, max_value=len(payloads) - 1))
    framed = _framed(payloads[damaged:])
    bit = data.draw(st.integers(min_value=len(framed).bit_length(), max_value=31))  # a bit 0 in the length
    length = len(payloads[damaged]) ^ (1 << bit)
    assert 8 + length >= len(framed)  # it claims every byte (or more)
    tail = struct.pack("<I", length) + framed[4:]
    assert hidden_records(tail) == len(payloads) - damaged
    assert not frames.one_unfinished_write(tail, len(tail), lambda: tail)


@pytest.mark.parametrize("length", [0, 1, 0x7F, 1 << 8, 1 << 16, 1 << 24, 3 << 24, MAX_RECORD, MAX_RECORD + 1,
                                    4 << 24 | 1, 1 << 31])
def test_the_search_finds_every_possible_frame_header_and_no_other(length: int) -> None:
    assert bool(frames._POSSIBLE_HEADER.match(struct.pack("<I", length))) == possible_length(length)


def test_the_search_for_hidden_records_checksums_candidate_frames_up_to_a_budget(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Bytes full of possible frame headers, none intact: each costs a checksum of its length, up
    # to the budget; past it only the damaged frame's own payload is checksummed on (once over).
    decoys = (struct.pack("<II", 16, 0) + bytes(range(1, 17))) * 10  # length 16, a CRC32 that fails
    record = b"x" + decoys
    tail = struct.pack("<II", 1 << 20, zlib.crc32(record) ^ 1) + record + _framed([b"intact"])
    assert hidden_records(tail) == 1
    monkeypatch.setattr(frames, "_CHECKSUMMED_AT_MOST", 100)
    assert hidden_records(tail) == 0
    length_alone = struct.pack("<II", 1 << 20, zlib.crc32(record)) + record + _framed([b"intact"])
    assert hidden_records(length_alone) == 2


def test_damage_in_a_closed_segment_is_reported_and_a_writers_tail_is_not(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    append_each(log, _payloads(12))
    log.sync()
    payload = b"the next record"
    with _segment(tmp_path).open("ab") as active:
        active.write(bytes(8) + payload)  # the writer's batch in progress, its first header last: not damage
    with _header_written_soon(_segment(tmp_path), payload):
        assert SegmentLog(tmp_path).damage() is None
    closed = tmp_path / f"{log.segment_bases()[1]:020d}.seg"
    closed.write_bytes(closed.read_bytes()[:-1] + b"!")
    assert (SegmentLog(tmp_path).damage() or "").startswith(f"{closed.name}: the record at offset ")


def test_damage_in_the_segment_a_writer_appends_to_is_reported_and_held_at(tmp_path: Path) -> None:
    """A flipped bit in the live segment held every reader in silence: `audit events` printed the
    records before it and exited 0, and the consumer and detector looked caught up."""
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(20))
    log.sync()
    active = _segment(tmp_path)
    tenth = sum(8 + len(payload) for payload in _payloads(10))
    flip_bit(active, tenth + 20)  # in record 10's payload
    log.append(_payloads(3))  # the writer appends on after it
    log.sync()
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 10 and reader.held_at_end()
    assert reader.damage() == (f"{active.name}: the record at offset 10 is damaged; readers stop there, and the "
                               "writer appends its records after it, unread")
    flip_bit(active, tenth + 20)  # restored
    assert SegmentLog(tmp_path).damage() is None
    restored = SegmentLog(tmp_path)
    assert restored.end_offset() == 23 and not restored.held_at_end()


def test_a_writers_batch_in_progress_is_no_damage_and_holds_no_reader(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(4))
    log.sync()
    payload = b"the next record"
    with _segment(tmp_path).open("ab") as active:
        active.write(bytes(8) + payload)  # its body written, its header still to come
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 4 and not reader.held_at_end()
    with _header_written_soon(_segment(tmp_path), payload):
        assert SegmentLog(tmp_path).damage() is None  # it waits for the batch's header
    assert reader.end_offset() == 5 and not reader.held_at_end()


@contextmanager
def _header_written_soon(segment: Path, payload: bytes) -> Iterator[None]:
    """The writer's part, 50 ms later: the header of the frame of `payload` that ends `segment`."""
    def write_header() -> None:
        with segment.open("r+b") as active:
            active.seek(-(8 + len(payload)), os.SEEK_END)
            active.write(struct.pack("<II", len(payload), zlib.crc32(payload)))

    writer = threading.Timer(0.05, write_header)
    writer.start()
    try:
        yield
    finally:
        writer.join()


def test_a_hole_of_zeros_in_the_segment_a_writer_appends_to_is_held_at_once_it_stays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record's header zeroed in the live segment read as the writer's batch in progress: every
    reader waited there in silence while the writer's records after it went unread."""
    monkeypatch.setattr(segment_log, "HOLE_SECONDS", 0.2)
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(20))
    log.sync()
    active = _segment(tmp_path)
    tenth = sum(8 + len(payload) for payload in _payloads(10))
    header = overwrite(active, tenth, bytes(8))  # record 10's header
    log.append(_payloads(3))  # the writer appends on after it
    log.sync()
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 10 and not reader.held_at_end()  # a batch in progress, for all it knows yet
    time.sleep(0.2)
    assert reader.end_offset() == 10 and reader.held_at_end()
    assert SegmentLog(tmp_path).damage() == (
        f"{active.name}: the record at offset 10 is a hole of zeros (not a write in progress: it stayed over 0.2 s); "
        "readers stop there, and the writer appends its records after it, unread")
    overwrite(active, tenth, header)  # the operator puts it back
    assert reader.end_offset() == 23 and not reader.held_at_end()
    assert SegmentLog(tmp_path).damage() is None


def test_zeros_after_the_last_record_of_a_writers_segment_hold_no_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Zeros alone after the last record (a file grown without data) hide no record: the writer
    writes its next records over them."""
    monkeypatch.setattr(segment_log, "HOLE_SECONDS", 0.0)
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(4))
    log.sync()
    with _segment(tmp_path).open("ab") as active:
        active.write(bytes(4096))
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 4 and not reader.held_at_end() and reader.damage() is None
    log.append(_payloads(2))
    log.sync()
    assert reader.end_offset() == 6 and not reader.held_at_end()


def test_a_batch_torn_by_a_writer_killed_between_its_two_writes_holds_no_reader(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same bytes as a hole, left by a crash: no writer is at work, and the next one cuts them."""
    monkeypatch.setattr(segment_log, "HOLE_SECONDS", 0.0)
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(4))
    log.close()
    payloads = _payloads(3)
    frames = b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in payloads)
    with _segment(tmp_path).open("ab") as active:
        active.write(bytes(8) + frames[8:])  # all but the batch's first header, written last
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 4 and not reader.held_at_end()


def test_retention_deletes_whole_closed_segments_only(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=100, writable=True)
    append_each(log, _payloads(10))
    log.sync()
    bases = log.segment_bases()
    assert log.delete_before(bases[2]) == 2
    assert log.start_offset() == bases[2]
    assert SegmentLog(tmp_path).read(0, 1)[0][0] == bases[2]
    assert log.delete_before(10**9) == len(bases) - 3  # the active segment always stays
    assert len(log.segment_bases()) == 1


def test_one_writer_per_directory(tmp_path: Path) -> None:
    SegmentLog(tmp_path, writable=True)
    with pytest.raises(LogLockedError):
        SegmentLog(tmp_path, writable=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=30),
       cut=st.integers(min_value=0, max_value=10_000))
def test_any_crash_point_leaves_a_prefix_of_the_records(tmp_path_factory: pytest.TempPathFactory,
                                                        payloads: list[bytes], cut: int) -> None:
    folder = tmp_path_factory.mktemp("log")
    log = SegmentLog(folder, segment_bytes=1 << 20, writable=True)
    log.append(payloads)
    log.close()
    segment = sorted(folder.glob("*.seg"))[-1]
    data = segment.read_bytes()
    segment.write_bytes(data[: cut % (len(data) + 1)])  # the file as a crash may leave it
    reopened = SegmentLog(folder, writable=True)
    recovered = [p for _, p in reopened.read(0, 1000)]
    reopened.close()
    assert recovered == payloads[: len(recovered)]
    assert reopened.cut is None or reopened.cut.torn_write  # not damage, however long the frame it cut into


# --- readers: bounded chunks, damage, a live log, payloads read as one block -----------------------


def _sized(count: int) -> list[bytes]:
    """Payloads of many lengths: some fit a small chunk many times, some are larger than it."""
    return [bytes([97 + i % 26]) * (1 + (i * 37) % 300) for i in range(count)]


def _segment(folder: Path) -> Path:
    return sorted(folder.glob("*.seg"))[-1]


def _closed_log(folder: Path, records: int) -> Path:
    """A log of `records` records, synced and closed, as a crash finds it; its last segment."""
    log = SegmentLog(folder, writable=True)
    log.append(_payloads(records))
    log.sync()
    log.close()
    return _segment(folder)


def test_frames_split_across_chunk_boundaries_are_read_whole(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segment_log, "_CHUNK", 64)  # most frames straddle a boundary, some exceed a chunk
    log = SegmentLog(tmp_path, writable=True)
    log.append(_sized(200))
    log.sync()
    assert [p for _, p in SegmentLog(tmp_path).read(0, 1000)] == _sized(200)
    assert SegmentLog(tmp_path).read(123, 3) == list(zip(range(123, 126), _sized(200)[123:126], strict=True))
    assert SegmentLog(tmp_path).end_offset() == 200
    assert [f.payload for f in SegmentLog(tmp_path).frames()] == _sized(200)


def test_indexing_reads_a_large_segment_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append([bytes(1000)] * 5000)  # a 5 MB segment
    log.sync()
    sizes: list[int] = []
    pread = os.pread

    def recording_pread(fd: int, size: int, position: int) -> bytes:
        sizes.append(size)
        return pread(fd, size, position)

    monkeypatch.setattr(os, "pread", recording_pread)
    assert SegmentLog(tmp_path).end_offset() == 5000
    assert len(list(SegmentLog(tmp_path).frames())) == 5000
    assert max(sizes) == segment_log._CHUNK < 5_000_000


def test_a_damaged_record_mid_chunk_is_never_returned_nor_passed(tmp_path: Path) -> None:
    _ten_records_with_the_fifth_damaged(tmp_path)
    reader = SegmentLog(tmp_path)
    assert [o for o, _ in reader.read(0, 100)] == [0, 1, 2, 3]
    assert reader.read(4, 100) == [] and reader.read(6, 100) == []
    assert reader.end_offset() == 4
    assert [(f.offset, f.intact) for f in reader.frames()][3:6] == [(3, True), (4, False), (5, True)]


def test_a_damaged_record_in_a_closed_segment_ends_reads_there(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    append_each(log, _payloads(12))
    log.sync()
    bases = log.segment_bases()
    closed = tmp_path / f"{bases[1]:020d}.seg"
    data = bytearray(closed.read_bytes())
    data[8] ^= 0xFF  # the first record of the second segment
    closed.write_bytes(bytes(data))
    reader = SegmentLog(tmp_path)
    assert [o for o, _ in reader.read(0, 100)] == list(range(bases[1]))  # no later segment's records after the gap
    assert reader.read(bases[1] + 1, 100) == []
    assert reader.read(bases[2], 100)[0][0] == bases[2]  # a reader told to skip the damage may


def test_an_impossible_length_ends_the_segment_for_readers(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(3))
    log.sync()
    log.close()
    with _segment(tmp_path).open("ab") as handle:
        handle.write(b"\xff\xff\xff\x7f\x00\x00\x00\x00" + bytes(2 << 20))  # 2 GB claimed, chunks of data after it
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 3
    assert [o for o, _ in reader.read(0, 10)] == [0, 1, 2]
    assert [f.offset for f in reader.frames()] == [0, 1, 2]


def test_a_partial_frame_is_read_once_its_rest_is_written(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(2))
    log.sync()
    log.close()
    frame = struct.pack("<II", 11, zlib.crc32(b"late record")) + b"late record"
    segment = _segment(tmp_path)
    reader = SegmentLog(tmp_path)
    with segment.open("ab") as handle:
        handle.write(frame[:13])  # a writer in the middle of its write
        handle.flush()
        assert [o for o, _ in reader.read(0, 10)] == [0, 1] and reader.end_offset() == 2
        handle.write(frame[13:])
    assert reader.read(2, 10) == [(2, b"late record")] and reader.end_offset() == 3


def test_a_write_the_disk_takes_only_in_part_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Disk full mid-write: the writer cuts the part written off again and gives its offsets to the
    # next records. A reader in another process that had read whole frames of that part meanwhile
    # would have handed on records that never were, and then read the next ones at wrong places.
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(2))
    log.sync()
    reader = SegmentLog(tmp_path)
    seen_mid_write: list[list[int]] = []
    real_pwrite = os.pwrite

    def most_then_full(fd: int, data: bytes, at: int) -> int:
        real_pwrite(fd, bytes(data)[: len(data) - 5], at)  # every frame whole but the last
        seen_mid_write.append([o for o, _ in reader.read(0, 100)])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwrite", most_then_full)
    with pytest.raises(OSError, match="No space left"):
        log.append(_payloads(6))
    monkeypatch.undo()
    assert seen_mid_write == [[0, 1]]
    assert log.append([b"after space came back"]) == 2
    log.sync()
    assert reader.read(2, 10) == [(2, b"after space came back")] and reader.end_offset() == 3
    reopened = SegmentLog(tmp_path)
    assert [p for _, p in reopened.read(0, 10)] == [*_payloads(2), b"after space came back"]


def test_a_crash_before_a_batchs_first_header_is_a_torn_write(tmp_path: Path) -> None:
    segment = _closed_log(tmp_path, 3)
    intact = segment.stat().st_size
    body = b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in _payloads(4))
    with segment.open("ab") as handle:  # the batch written, its first header not yet
        handle.write(bytes(8) + body[8:])
    assert SegmentLog(tmp_path).end_offset() == 3
    damage = SegmentLog(tmp_path).find_damage()
    assert damage is not None and damage.torn_write
    reopened = SegmentLog(tmp_path, writable=True)
    assert segment.stat().st_size == intact
    assert reopened.append([b"after crash"]) == 3


def test_a_reader_moves_past_segments_deleted_by_retention(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    append_each(log, _payloads(12))
    log.sync()
    reader = SegmentLog(tmp_path)
    assert reader.read(0, 2) == list(zip(range(2), _payloads(2), strict=True))
    bases = log.segment_bases()
    log.delete_before(bases[1])
    assert reader.read(2, 2) == [(bases[1], _payloads(12)[bases[1]]), (bases[1] + 1, _payloads(12)[bases[1] + 1])]
    first, payloads = reader.read_payloads(0, 100)
    assert first == bases[1] and list(payloads) == _payloads(12)[bases[1]:bases[2]]  # one segment at most


def test_payloads_index_slice_and_hand_on_the_frames_as_on_disk(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_sized(30))
    log.sync()
    first, payloads = SegmentLog(tmp_path).read_payloads(0, 30)
    assert first == 0 and len(payloads) == 30 and list(payloads) == _sized(30)
    assert (payloads[0], payloads[-1], payloads[7]) == (_sized(30)[0], _sized(30)[-1], _sized(30)[7])
    with pytest.raises(IndexError):
        payloads[30]
    middle = payloads[5:9]
    assert list(middle) == _sized(30)[5:9] and list(payloads[28:50]) == _sized(30)[28:] and not payloads[9:5]
    assert payloads.framed() == _segment(tmp_path).read_bytes()
    assert middle.framed() == b"".join(struct.pack("<II", len(p), zlib.crc32(p)) + p for p in _sized(30)[5:9])
    assert payloads[1:2].all_start_with(b"b") and not payloads.all_start_with(b"a")
    with pytest.raises(ValueError, match="consecutive"):
        payloads[::2]
    short = SegmentLog(tmp_path / "short", writable=True)
    short.append([b"ab", b"cd"])
    short.sync()
    assert not short.read_payloads(0, 2)[1].all_start_with(b"abc")  # never "ab" + the next frame's bytes


def test_a_zero_filled_tail_is_no_records_and_is_cut(tmp_path: Path) -> None:
    # A crash can leave a file's new length on disk without its data: the tail reads as zeros,
    # whose "frames" (length 0, CRC32 0) pass the checksum of an empty payload.
    segment = _closed_log(tmp_path, 3)
    intact = segment.stat().st_size
    with segment.open("ab") as handle:
        handle.write(bytes(4096))
    reader = SegmentLog(tmp_path)
    assert reader.end_offset() == 3
    assert [frame.offset for frame in reader.frames()] == [0, 1, 2]
    reopened = SegmentLog(tmp_path, writable=True)
    assert reopened.end_offset() == 3
    assert segment.stat().st_size == intact
    assert reopened.append([b"after crash"]) == 3


def test_an_empty_record_is_refused(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    with pytest.raises(ValueError, match="empty"):
        log.append([b"one", b""])
    assert log.end_offset() == 0


def test_a_segment_that_could_not_be_created_is_created_by_the_next_append(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog(tmp_path / "log", segment_bytes=100, writable=True)
    log.append(_payloads(3))  # the segment is full: the next append starts a new one
    real_open = os.open

    def no_descriptor_left(path: object, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".seg"):
            raise OSError(24, "Too many open files")
        return real_open(path, flags, mode)

    monkeypatch.setattr(segment_log.os, "open", no_descriptor_left)
    with pytest.raises(OSError, match="Too many open files"):
        log.append(_payloads(1))
    monkeypatch.setattr(segment_log.os, "open", real_open)
    unrelated = os.open(tmp_path / "unrelated", os.O_WRONLY | os.O_CREAT, 0o600)  # may reuse a freed number
    try:
        assert log.append(_payloads(1)) == 3
        log.sync()
        # still open on its own file: the log closed only its own descriptors
        assert os.fstat(unrelated).st_ino == (tmp_path / "unrelated").stat().st_ino
    finally:
        os.close(unrelated)
    assert [offset for offset, _ in SegmentLog(tmp_path / "log").read(0, 10)] == [0, 1, 2, 3]


def test_a_new_log_folder_is_made_durable_in_its_parents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[Path] = []
    monkeypatch.setattr(segment_log, "sync_folder", synced.append)
    SegmentLog(tmp_path / "audit" / "log", writable=True).close()
    assert synced == [tmp_path, tmp_path / "audit"]  # each folder created, in the folder above it
    synced.clear()
    SegmentLog(tmp_path / "audit" / "log", writable=True).close()
    assert synced == []  # nothing created, nothing to sync


def test_a_batch_stays_whole_in_one_segment_and_the_next_append_rolls(tmp_path: Path) -> None:
    # Across a boundary, a batch was split over two segments, rolled in the middle of the append:
    # the roll's fsync ran where the spool appends, on the event loop, every call waiting on it.
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    assert log.append(_payloads(12)) == 0  # more than a segment holds
    assert log.segment_bases() == [0] and log.full
    assert log.append(_payloads(1)) == 12
    log.sync()
    assert log.segment_bases() == SegmentLog(tmp_path).segment_bases() == [0, 12] and not log.full


def test_an_append_whose_new_segment_cannot_be_made_leaves_nothing_and_the_log_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = SegmentLog(tmp_path, segment_bytes=200, writable=True)
    log.append(_payloads(5))  # past 200 bytes: the next append rolls
    real_open = os.open

    def no_new_segment(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".seg"):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, mode)

    monkeypatch.setattr(segment_log.os, "open", no_new_segment)
    with pytest.raises(OSError, match="No space left"):
        log.append(_payloads(2))
    assert log.end_offset() == 5
    monkeypatch.undo()
    assert log.append(_payloads(2)) == 5  # the log goes on where it was
    log.sync()
    assert SegmentLog(tmp_path).end_offset() == 7
