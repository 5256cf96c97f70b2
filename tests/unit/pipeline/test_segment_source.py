"""The embedded-log source: every record once, in order, one segment per batch, and the end offset."""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from keytrail.pipeline.runner import Batch
from keytrail.pipeline.segment_source import SEGMENT_LOG_PARTITION, SegmentLogSource
from keytrail.transport import segment_log
from keytrail.transport.segment_log import SegmentLog
from keytrail.transport.segment_reader import StallWatch
from tests.support.audit_records import append_each, flip_bit, overwrite


def _records(start: int, stop: int) -> list[bytes]:
    return [f"record-{n:03d}".encode() * 4 for n in range(start, stop)]


async def _batches(directory: Path, start: int) -> list[Batch]:
    source = SegmentLogSource(directory, max_records=7)
    return [batch async for batch in source.batches(lambda partition: start)]


async def test_batches_cover_the_log_once_and_never_span_two_segments(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=400, writable=True)
    for start in range(0, 100, 10):
        log.append(_records(start, start + 10))
    log.sync()
    bases = log.segment_bases()
    log.close()
    assert len(bases) > 5

    batches = await _batches(tmp_path, 3)
    assert [o for b in batches for o in b.offsets] == list(range(3, 100))
    assert [v for b in batches for v in b.values] == _records(3, 100)
    for batch in batches:
        assert batch.partition == SEGMENT_LOG_PARTITION and batch.source_end == 100
        assert len(batch.offsets) <= 7
        assert len({max(b for b in bases if b <= offset) for offset in batch.offsets}) == 1


async def test_a_following_source_reads_segments_the_writer_starts_meanwhile(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, segment_bytes=400, writable=True)
    log.append(_records(0, 20))
    log.sync()
    source = SegmentLogSource(tmp_path, max_records=7, follow=True, poll_seconds=0.01)
    offsets: list[int] = []
    ends: list[int | None] = []
    async for batch in source.batches(lambda partition: 0):
        offsets.extend(batch.offsets)
        ends.append(batch.source_end)
        if offsets[-1] == 19:  # caught up: the server writes on, into new segments
            log.append(_records(20, 60))
            log.sync()
        if offsets[-1] == 59:
            source.stop.set()
    log.close()
    assert offsets == list(range(60))
    assert ends[0] == 20 and ends[-1] == 60


async def test_a_following_source_waits_for_a_partly_written_record(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 3))
    log.sync()
    log.close()
    late = _records(3, 4)[0]
    frame = struct.pack("<II", len(late), zlib.crc32(late)) + late
    source = SegmentLogSource(tmp_path, max_records=7, follow=True, poll_seconds=0.01)
    values: list[bytes] = []
    written: list[int] = []

    async def write_the_rest_later() -> None:
        await asyncio.sleep(0.1)  # meanwhile the source polls and finds only the partial frame
        handle.write(frame[10:])
        written.append(len(values))

    with sorted(tmp_path.glob("*.seg"))[-1].open("ab", buffering=0) as handle:
        async for batch in source.batches(lambda partition: 0):
            values.extend(batch.values)
            if len(values) == 3:  # caught up: a writer is in the middle of its next record
                handle.write(frame[:10])
                rest = asyncio.create_task(write_the_rest_later())
            if len(values) == 4:
                source.stop.set()
        await rest
    assert values == _records(0, 4) and written == [3]  # nothing delivered until the record was whole


async def test_a_following_source_lets_live_records_gather_into_one_batch(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 2))
    log.sync()
    source = SegmentLogSource(tmp_path, max_records=100, follow=True, poll_seconds=0.01, gather_seconds=1.0)

    async def write_a_few_calls_apart() -> None:
        for start in range(2, 10, 2):  # four writes, far less than gather_seconds apart in total
            await asyncio.sleep(0.02)
            log.append(_records(start, start + 2))
            log.sync()

    sizes: list[int] = []
    writer: asyncio.Task[None] | None = None
    async for batch in source.batches(lambda partition: 0):
        sizes.append(len(batch.offsets))
        writer = writer or asyncio.create_task(write_a_few_calls_apart())
        if batch.offsets[-1] == 9:
            source.stop.set()
    assert writer is not None
    await writer
    log.close()
    assert sizes == [2, 8]  # polled every 0.01 s, the writes would have come in four batches


async def test_stopping_a_following_source_ends_it_without_waiting_out_the_gather(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 2))
    log.sync()
    log.close()
    source = SegmentLogSource(tmp_path, follow=True, gather_seconds=3600)

    async def read_until_stopped() -> list[int]:
        offsets: list[int] = []
        async for batch in source.batches(lambda partition: 0):
            offsets.extend(batch.offsets)
            source.stop.set()  # the source is now in its hour-long gather
        return offsets

    assert await asyncio.wait_for(read_until_stopped(), timeout=30) == [0, 1]


async def test_a_stopped_following_source_reads_once_more_what_was_written_before_the_stop(tmp_path: Path) -> None:
    """serve stops: the calls answered just before it were in the log, unread, and the state was
    checkpointed without them (`keytrail usage` after the stop missed them)."""
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 2))
    log.sync()
    source = SegmentLogSource(tmp_path, max_records=3, follow=True, gather_seconds=3600)
    offsets: list[int] = []
    async for batch in source.batches(lambda partition: 0):
        offsets.extend(batch.offsets)
        if len(offsets) == 2:  # the source is now in its gather; two calls, then the stop
            log.append(_records(2, 7))
            log.sync()
            source.stop.set()
    log.close()
    assert offsets == [0, 1, 2, 3, 4]  # one read more: a consumer far behind still stops at once


async def test_its_lag_is_known_from_its_first_read_when_nothing_is_left_to_read(tmp_path: Path) -> None:
    # A consumer restarted caught up had no lag figure until a batch came: a blank panel.
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 10))
    log.sync()
    source = SegmentLogSource(tmp_path)
    assert source.lag() == {}  # nothing read yet: no figure rather than a made-up 0
    assert await _batches_of(source, start=10) == []
    assert source.lag() == {SEGMENT_LOG_PARTITION: 0}
    log.append(_records(10, 13))  # written after its last read: lag as of that read until it reads again
    log.close()
    batches = await _batches_of(source, start=5)
    assert [b.offsets for b in batches] == [range(5, 13)]
    assert source.lag() == {SEGMENT_LOG_PARTITION: 8}  # read, not yet checkpointed (test_segment_source_lag.py)
    await source.commit(batches[0])
    assert source.lag() == {SEGMENT_LOG_PARTITION: 0}


async def _batches_of(source: SegmentLogSource, start: int) -> list[Batch]:
    return [batch async for batch in source.batches(lambda partition: start)]


async def test_a_log_that_ends_below_the_start_offset_is_read_from_its_start(tmp_path: Path) -> None:
    # A new trail (the audit folder moved aside) numbers its records from 0 again, below the offset
    # the metrics state covers: read from there, it was never counted.
    log = SegmentLog(tmp_path, segment_bytes=400, writable=True)
    log.append(_records(0, 10))
    log.sync()
    log.close()

    batches = await _batches(tmp_path, 25)
    assert [o for b in batches for o in b.offsets] == list(range(10))
    assert [b.began_again for b in batches] == [True] + [False] * (len(batches) - 1)
    assert await _batches(tmp_path, 10) == []  # read up to its end: nothing again, nothing began again


async def test_records_retention_deleted_before_they_were_read_are_said_once_with_their_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A consumer stopped or failing for longer than the node's reader grace, which retention does
    # not wait for: the calls it never read are in no figure, and that went unsaid.
    log = SegmentLog(tmp_path, segment_bytes=400, writable=True)
    append_each(log, _records(0, 40))
    log.sync()
    deleted_to = log.kept_from(25)
    log.delete_before(deleted_to)
    log.close()
    with caplog.at_level("WARNING", logger="keytrail.pipeline.segment_source"):
        batches = await _batches(tmp_path, 5)
    assert 5 < deleted_to <= 25
    assert [o for b in batches for o in b.offsets] == list(range(deleted_to, 40))
    [warning] = [r.getMessage() for r in caplog.records]
    assert f"no longer holds the {deleted_to - 5} records at offsets 5..{deleted_to - 1}: retention deleted" in warning


def _three_segments(directory: Path) -> list[Path]:
    """A log of 30 records in three closed segments and an empty active one; the segment files."""
    log = SegmentLog(directory, segment_bytes=400, writable=True)
    for start in range(0, 30, 10):
        log.append(_records(start, start + 10))
    log.sync()
    log.close()
    segments = sorted(directory.glob("*.seg"))
    assert len(segments) >= 3
    return segments


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


async def _follow_until_held(source: SegmentLogSource,
                             caplog: pytest.LogCaptureFixture) -> tuple[asyncio.Task[None], list[int]]:
    """Start following `source` (the task, and the offsets it reads as it reads them); return once
    a line said it is held and some 30 polls more were each held at the same record."""
    offsets: list[int] = []

    async def follow() -> None:
        async for batch in source.batches(lambda partition: 0):
            offsets.extend(batch.offsets)

    task = asyncio.create_task(follow())
    await _until(lambda: bool(caplog.records))
    await asyncio.sleep(0.3)
    return task, offsets


async def test_a_following_source_held_at_a_damaged_record_says_so_once_and_reads_on_once_it_is_repaired(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """serve's consumer waited in front of a damaged record of a closed segment for good, its calls
    uncounted, and no line said why."""
    middle = _three_segments(tmp_path)[1]
    intact = middle.read_bytes()
    middle.write_bytes(intact[:20] + bytes([intact[20] ^ 1]) + intact[21:])  # a bit of its first record flipped
    damaged_at = int(middle.stem)
    told: list[int | None] = []  # for keytrail_event_log_reader_held
    source = SegmentLogSource(tmp_path, max_records=7, follow=True, poll_seconds=0.01, on_held=told.append)
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        task, offsets = await _follow_until_held(source, caplog)
        held = [r.getMessage() for r in caplog.records]
        assert told == [damaged_at]
        middle.write_bytes(intact)  # the operator restores the segment
        await _until(lambda: offsets[-1:] == [29])
        source.stop.set()
        await task
    assert offsets == list(range(30)) and told == [damaged_at, None]
    [line] = held
    assert f"the consumer reads the event log in {tmp_path} no further than offset {damaged_at}" in line
    assert f"the record at offset {damaged_at} is damaged" in line and "the calls from there on not counted" in line
    assert [r.getMessage() for r in caplog.records][1:] == [
        f"the consumer reads the event log in {tmp_path} again (it was held at offset {damaged_at})"]


def _flip_a_bit(active: Path, record_at: int) -> Callable[[], None]:
    """Flip a bit in the payload of the record at file position `record_at`; return its repair."""
    flip_bit(active, record_at + 9)
    return lambda: flip_bit(active, record_at + 9)  # flipped again, restored


def _zero_its_header(active: Path, record_at: int) -> Callable[[], None]:
    """Write zeros over the header of the record at file position `record_at`; return its repair."""
    header = overwrite(active, record_at, bytes(8))

    def restore() -> None:
        overwrite(active, record_at, header)

    return restore


@pytest.mark.parametrize(("damage", "said"), [
    (_flip_a_bit, "the record at offset 5 is damaged; readers stop there, and the writer appends its records after"),
    # A header of zeros looked like the writer's batch in progress, for good.
    (_zero_its_header, "the record at offset 5 is a hole of zeros (not a write in progress: it stayed over 0.05 s)"),
])
async def test_a_following_source_held_at_damage_in_the_writers_segment_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    damage: Callable[[Path, int], Callable[[], None]], said: str,
) -> None:
    """Damage in the segment the writer appends to held the consumer where the end looked to be:
    no line, no held gauge, a lag of 0, and the writer's records after it never counted."""
    monkeypatch.setattr(segment_log, "HOLE_SECONDS", 0.05)
    log = SegmentLog(tmp_path, writable=True)
    log.append(_records(0, 10))
    log.sync()
    [active] = sorted(tmp_path.glob("*.seg"))
    restore = damage(active, 5 * (8 + len(_records(0, 1)[0])))  # record 5
    log.append(_records(10, 12))
    log.sync()
    told: list[int | None] = []
    source = SegmentLogSource(tmp_path, max_records=7, follow=True, poll_seconds=0.01, on_held=told.append)
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        task, offsets = await _follow_until_held(source, caplog)
        held = [r.getMessage() for r in caplog.records]
        assert offsets == list(range(5)) and told == [5]
        restore()  # the operator restores the record's bytes
        await _until(lambda: offsets[-1:] == [11])
        source.stop.set()
        await task
    log.close()
    assert offsets == list(range(12)) and told == [5, None]
    [line] = held
    assert f"the consumer reads the event log in {tmp_path} no further than offset 5, at least 1 record before" in line
    assert said in line


async def test_a_following_source_held_at_a_deleted_segment_names_the_records_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    middle = _three_segments(tmp_path)[1]
    middle.unlink()  # deleted by hand, not by retention (which deletes the oldest)
    source = SegmentLogSource(tmp_path, max_records=7, follow=True, poll_seconds=0.01)
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        task, offsets = await _follow_until_held(source, caplog)
        source.stop.set()
        await task
    assert offsets == list(range(int(middle.stem)))
    [line] = [r.getMessage() for r in caplog.records]
    assert f"no further than offset {middle.stem.lstrip('0')}, " in line and "are missing" in line


async def test_a_source_that_does_not_follow_ends_at_the_damage_without_a_stall_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `consume --no-follow` names the damage itself, after its count, and exits 1.
    middle = _three_segments(tmp_path)[1]
    middle.unlink()
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        assert [o for b in await _batches(tmp_path, 0) for o in b.offsets] == list(range(int(middle.stem)))
    assert caplog.records == []


async def test_polls_racing_the_writer_are_not_taken_for_a_stall(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A read that finds nothing, the writer appending before the end is read: the end is past the
    # offset once, and the next poll reads those records.
    watch = StallWatch(tmp_path, "consumer", "counted")
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        for offset in (30, 32, 35):
            await watch.polled(offset, offset + 2, 0)
        assert caplog.records == []
        await watch.polled(35, 37, 0)  # the same offset again, the end still past it: a stall
        await watch.polled(35, 40, 0)
        await watch.polled(35, 41, 0)
    [line] = [r.getMessage() for r in caplog.records]  # once per stall, not once per poll
    assert "the consumer reads the event log" in line and "no further than offset 35, at least 2 records before" in line

