"""The embedded event log: offsets, segments, torn tails, retention, the writer lock."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keytrail.transport.segment_log import LogLockedError, SegmentLog


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
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(10))
    log.sync()
    log.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
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
    log = SegmentLog(tmp_path, writable=True)
    log.append(_payloads(3))
    log.sync()
    log.close()
    segment = sorted(tmp_path.glob("*.seg"))[-1]
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF  # last record's payload no longer matches its CRC
    segment.write_bytes(bytes(data))
    assert SegmentLog(tmp_path, writable=True).end_offset() == 2


def test_retention_deletes_whole_closed_segments_only(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=100, writable=True)
    log.append(_payloads(10))
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
