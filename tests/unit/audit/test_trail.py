"""AuditTrail and its spool: durable before answering, group commit, the size cap, restarts."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.records import to_cloudtrail
from keytrail.audit.spool import FSYNC_BUCKETS, GATHER_YIELDS, SpoolError
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.clock import STEP_HOLD_SECONDS, ForwardStepHold
from keytrail.kms.model import CallsInProgress
from tests.support.audit_records import encrypt_call, failed_trail, fill_trail_async
from tests.support.mounts import filled, small_filesystem
from tests.support.waits import eventually


def _thread_synced(data_dir: Path) -> AuditSettings:
    """Settings whose fsyncs run in the spool's writer thread, where a test can slow or fail them
    (`os.fsync`, `trail.log.sync`); tests/unit/audit/test_syncer.py covers the helper process."""
    return AuditSettings(data_dir=data_dir, fsync_helper=False)


async def test_concurrent_records_share_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    async with AuditTrail.open(_thread_synced(tmp_path)) as trail:
        before = len(synced)
        await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(200)))
        during = len(synced) - before
        commits = trail.spool.fsyncs
    assert commits < 50, commits  # 200 concurrent callers, far fewer commits
    assert during <= 2 * commits  # one log fsync per commit (+ directory/digest syncs)


async def test_commit_stats_time_every_fsync_and_count_its_records(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (time.sleep(0.003), real_fsync(fd))[1])  # a slow disk: ≥ 3 ms
    async with AuditTrail.open(_thread_synced(tmp_path)) as trail:
        await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(40)))
        stats = trail.spool.stats
        assert stats.records == 40 and stats.fsyncs == trail.spool.fsyncs == sum(stats.buckets)
        slow = FSYNC_BUCKETS.index(0.005)  # the (2 ms, 5 ms] bucket and above
        assert sum(stats.buckets[slow:]) == stats.fsyncs and stats.fsync_seconds >= 0.003 * stats.fsyncs


async def test_record_returns_only_once_the_event_is_on_disk(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(1))
        stored = [e for _, e in iter_events(tmp_path)]  # another reader, straight from the files
        assert stored == [to_cloudtrail(encrypt_call(1))]


async def test_events_survive_a_restart_and_keep_their_order(tmp_path: Path) -> None:
    await fill_trail_async(tmp_path, 5)
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        for i in range(5, 8):
            await trail.record(encrypt_call(i))
    ids = [e["eventID"] for _, e in iter_events(tmp_path)]
    assert sorted(ids[:5]) == sorted(encrypt_call(i).event_id for i in range(5))
    assert ids[5:] == [encrypt_call(i).event_id for i in range(5, 8)]


async def test_size_cap_refuses_records_when_shipping_is_stuck(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    # A bootstrap nobody listens on: nothing ships, the unshipped bytes grow past the cap.
    settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", max_unshipped_bytes=3000)
    async with AuditTrail.open(settings) as trail:
        with pytest.raises(SpoolError, match="audit spool"):
            for i in range(100):
                await trail.record(encrypt_call(i))
        assert 2 < trail.spool.durable_end < 100
        for i in range(5):
            with pytest.raises(SpoolError):
                await trail.record(encrypt_call(100 + i))
    assert sum("over its cap" in r.message for r in caplog.records) == 1  # the outage, not each call


async def test_disk_full_fails_the_call_and_the_spool_recovers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        real_write = os.pwrite
        monkeypatch.setattr(os, "pwrite", lambda fd, data, at: (_ for _ in ()).throw(OSError(28, "No space left")))
        for i in range(3):
            with pytest.raises(SpoolError, match="No space left"):
                await trail.record(encrypt_call(10 + i))
        monkeypatch.setattr(os, "pwrite", real_write)
        await trail.record(encrypt_call(2))  # space is back: the spool carries on, no torn frame
    assert [r.message.split(":")[0] for r in caplog.records if r.name == "keytrail.audit.spool"] == [
        "audit spool write failed", "audit spool writes again, after refusing 3 records"]
    ids = [e["eventID"] for _, e in iter_events(tmp_path)]
    assert ids == [encrypt_call(0).event_id, encrypt_call(2).event_id]
    from keytrail.audit.integrity import verify

    assert verify(tmp_path) == []


async def test_a_state_change_is_refused_before_it_is_made_while_writes_would_still_fail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a refused write, `ready()` (asked before a state change) refuses while the disk has no
    room, or, after another write error, for a moment: made first, the change stood while its
    caller was answered a retryable error, and each SDK retry made it again."""
    from keytrail.audit import spool as spool_module

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        trail.ready()
        real_write, real_statvfs = os.pwrite, os.statvfs
        full = os.statvfs_result((4096, 4096, 1000, 0, 0, 100, 0, 0, 0, 255))  # no block free
        for error in (OSError(28, "No space left"), OSError(5, "Input/output error")):
            monkeypatch.setattr(os, "pwrite", lambda fd, data, at, error=error: (_ for _ in ()).throw(error))
            with pytest.raises(SpoolError):
                await trail.record(encrypt_call(1))
            monkeypatch.setattr(os, "pwrite", real_write)
            monkeypatch.setattr(os, "statvfs", lambda path: full)
            with pytest.raises(SpoolError, match="cannot write"):
                trail.ready()  # a full disk still full, or another error a moment ago
            monkeypatch.setattr(os, "statvfs", real_statvfs)
            monkeypatch.setattr(spool_module, "REFUSED_RETRY_SECONDS", 0.0)
            trail.ready()  # room again, or a while since: the next change tries, and its write tells
            await trail.record(encrypt_call(2))
            monkeypatch.setattr(spool_module, "REFUSED_RETRY_SECONDS", 1.0)


async def test_a_full_disk_under_the_integrity_sidecar_fails_no_call(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    # The records were in the log when the hashes sidecar (audit/integrity/hashes.bin) had no room
    # for their hashes: the spool failed for good, refusing every call until a restart, space or not.
    (tmp_path / "audit").mkdir(mode=0o700)
    with small_filesystem(tmp_path / "audit" / "integrity", "1m") as integrity:
        async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
            filler = filled(integrity)
            for i in range(400):  # hashes of a few KB: the sidecar is written to, and refuses them
                await trail.record(encrypt_call(i))
            assert trail.problem() is None
            filler.unlink()
            await trail.record(encrypt_call(400))
        assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(401)]
        from keytrail.audit.integrity import verify

        assert verify(tmp_path) == []
    assert not [r for r in caplog.records if r.name == "keytrail.audit.spool"]


async def test_a_disk_that_fills_as_a_batch_rolls_to_a_new_segment_refuses_it_until_space_is_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A batch once spanned segments, and the records before the boundary stayed in the log when
    # the new segment had no room for the rest: the spool refused every record until a restart,
    # space or not. Now a batch stays whole in one segment, refused whole when none can be made.
    with small_filesystem(tmp_path / "disk", "2m") as disk:
        settings = AuditSettings(data_dir=disk / "node", segment_bytes=3000, fsync_helper=False)
        async with AuditTrail.open(settings) as trail:
            await trail.record(encrypt_call(0))
            filler = filled(disk)
            for batch in range(1, 4):  # each batch fills a segment or more: the disk fills at a roll
                outcomes = await asyncio.gather(*(trail.record(encrypt_call(100 * batch + i)) for i in range(30)),
                                                return_exceptions=True)
                assert all(isinstance(outcome, SpoolError) for outcome in outcomes)
            filler.unlink()
            await trail.record(encrypt_call(1))
            assert trail.problem() is None
        ids = [e["eventID"] for _, e in iter_events(disk / "node")]
        assert ids[0] == encrypt_call(0).event_id and ids[-1] == encrypt_call(1).event_id
        from keytrail.audit.integrity import verify

        assert verify(disk / "node") == []
    assert "until restarted" not in caplog.text


async def test_a_full_segment_is_rolled_in_the_writer_thread_not_on_the_event_loop(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A roll fsyncs the segment it closes. Done by the loop's append, every call in flight waited on
    # that fsync, once a segment (0.2-63 ms measured on a loaded VM, 3,400 Encrypts a second).
    loop_thread = threading.get_ident()
    on_the_loop: list[int] = []
    real_fsync = os.fsync

    def watched(fd: int) -> None:
        if threading.get_ident() == loop_thread:
            on_the_loop.append(fd)
        real_fsync(fd)

    async with AuditTrail.open(AuditSettings(data_dir=tmp_path, segment_bytes=2000)) as trail:
        monkeypatch.setattr(os, "fsync", watched)
        for call in range(30):
            await trail.record(encrypt_call(call))
        segments = trail.log.segment_bases()
        monkeypatch.undo()  # the close syncs on the loop, as the start did
    assert len(segments) >= 5 and on_the_loop == []
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(call).event_id for call in range(30)]


async def test_a_write_that_left_bytes_it_could_not_cut_fails_every_later_call(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.transport import segment_log

    async with failed_trail(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        real_write = os.pwrite

        def half_then_full(fd: int, data: bytes, at: int) -> int:
            real_write(fd, bytes(data)[: len(data) // 2], at)
            raise OSError(28, "No space left")

        monkeypatch.setattr(os, "pwrite", half_then_full)
        monkeypatch.setattr(segment_log.os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(5, "I/O")))
        with pytest.raises(SpoolError, match="could not be cut off"):
            await trail.record(encrypt_call(1))
        monkeypatch.undo()
        with pytest.raises(SpoolError, match="refuses records"):  # behind junk, no record is safe
            await trail.record(encrypt_call(2))
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(0).event_id]


async def test_failed_fsync_fails_the_call_and_every_later_one(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    async with failed_trail(_thread_synced(tmp_path)) as trail:
        monkeypatch.setattr(trail.log, "sync", lambda: (_ for _ in ()).throw(OSError(5, "I/O error")))
        with pytest.raises(SpoolError, match="I/O error"):
            await trail.record(encrypt_call(1))
        with pytest.raises(SpoolError):  # after a failed fsync nothing is trusted: no crypto without audit
            await trail.record(encrypt_call(2))


async def test_failed_fsync_fails_every_record_of_its_batch(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    async with failed_trail(_thread_synced(tmp_path)) as trail:
        monkeypatch.setattr(trail.log, "sync", lambda: (_ for _ in ()).throw(OSError(5, "I/O error")))
        results = await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(12)),
                                       return_exceptions=True)
        assert all(isinstance(result, SpoolError) for result in results), results
        assert trail.spool.fsyncs == 0 and trail.spool.durable_end == 0


async def test_concurrent_records_get_consecutive_offsets_in_call_order(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        offsets = await asyncio.gather(*(trail.append_event(to_cloudtrail(encrypt_call(i))) for i in range(40)))
        assert trail.spool.fsyncs < 40  # they did share commits
    assert offsets == list(range(40))
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(40)]


async def test_size_cap_counts_unshipped_records_found_on_open(tmp_path: Path) -> None:
    await fill_trail_async(tmp_path, 10)  # about 10 KB that Kafka never acknowledged
    settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", max_unshipped_bytes=5000)
    async with AuditTrail.open(settings) as trail:
        with pytest.raises(SpoolError, match="not yet shipped"):
            await trail.record(encrypt_call(10))


async def test_idle_node_writes_its_periodic_digest(tmp_path: Path) -> None:
    from keytrail.audit.trail import audit_paths

    settings = AuditSettings(data_dir=tmp_path, digest_interval_s=0.05)
    async with AuditTrail.open(settings) as trail:
        await trail.record(encrypt_call(1))
        digests = audit_paths(tmp_path)[1].digests

        def signing_the_record() -> list[Path]:  # not the genesis digest, nor the empty ones after it
            return [p for p in digests.glob("*.json")
                    if (json.loads(p.read_text())["startOffset"], json.loads(p.read_text())["endOffset"]) == (0, 1)]

        for _ in range(200):
            if signing_the_record():
                break
            await asyncio.sleep(0.01)
        assert len(signing_the_record()) == 1


async def _closed_segments_after_calls(trail: AuditTrail, calls: int = 20) -> list[Path]:
    """The closed segments once `calls` records are durable (with 2,000-byte segments, several)."""
    for i in range(calls):
        await trail.record(encrypt_call(i))
    return sorted(trail.log.directory.glob("*.seg"))[:-1]


def _backdate(segments: list[Path], seconds: int) -> None:
    """As if each segment had last been written `seconds` earlier."""
    for segment in segments:
        os.utime(segment, (segment.stat().st_atime - seconds, segment.stat().st_mtime - seconds))


async def test_retention_deletes_old_segments(tmp_path: Path) -> None:
    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_bytes=5000, reader_grace_s=0)
    async with AuditTrail.open(settings) as trail:
        for i in range(60):
            await trail.record(encrypt_call(i))
        assert trail.log.start_offset() > 0
    from keytrail.audit.integrity import verify

    assert verify(tmp_path) == []


async def test_retention_leaves_a_segment_to_the_node_s_readers_for_a_minute_after_it_closed(tmp_path: Path) -> None:
    # A byte budget below one segment deleted each segment as it closed, before the node's
    # consumer child had read its last records (never counted in usage, cost or /metrics).
    from keytrail.audit.integrity import verify

    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_bytes=1, digest_interval_s=0.2)
    async with AuditTrail.open(settings) as trail:
        closed = await _closed_segments_after_calls(trail)
        assert closed and trail.log.start_offset() == 0  # all kept: closed under a minute ago
        await asyncio.sleep(0.5)  # digests meanwhile: retention ran again, and kept them
        assert all(segment.exists() for segment in closed)
        _backdate(closed, 120)  # as if closed two minutes ago
        await eventually(lambda: not any(segment.exists() for segment in closed), what="the segments deleted")
        assert trail.log.start_offset() > 0
    assert verify(tmp_path) == []


async def test_retention_by_age_deletes_old_closed_segments(tmp_path: Path) -> None:
    from keytrail.audit.integrity import verify

    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_hours=24)
    async with AuditTrail.open(settings) as trail:
        for i in range(20):
            await trail.record(encrypt_call(i))
        old_segments = sorted(trail.log.directory.glob("*.seg"))
        _backdate(old_segments, 172800)  # two days old
        kept_from = trail.log.end_offset()
        for i in range(20, 40):  # the next segment roll applies retention
            await trail.record(encrypt_call(i))
        assert trail.log.start_offset() >= kept_from - 5
        assert not any(segment.exists() for segment in old_segments[:-1])
    assert verify(tmp_path) == []


class _SteppableClocks:
    """A wall clock `ahead` of the real one, and a clock no step moves, run on by hand."""

    def __init__(self) -> None:
        self.ahead = 0.0
        self.running_at = 1000.0
        self._real = time.time

    def wall(self) -> float:
        return self._real() + self.ahead

    def running(self) -> float:
        return self.running_at


async def test_retention_by_age_holds_the_segments_a_step_ahead_of_the_wall_clock_aged(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A wall clock set two days ahead by mistake deleted at the next segment roll, for good, every
    # closed segment of a node keeping 24 hours, though none had been written a day before.
    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_hours=24, reader_grace_s=0)
    clocks = _SteppableClocks()
    monkeypatch.setattr(time, "time", clocks.wall)  # the process's wall clock, as a real step moves it
    async with AuditTrail.open(settings) as trail:
        trail.step_hold = ForwardStepHold(wall=clocks.wall, running=clocks.running)
        closed = await _closed_segments_after_calls(trail)
        clocks.ahead = 172800.0
        for i in range(20, 40):  # segments roll: retention runs, judged by the clock less the step
            await trail.record(encrypt_call(i))
        assert all(segment.exists() for segment in closed)
        clocks.running_at += STEP_HOLD_SECONDS  # the hold's hour ran out: the new time is taken as right
        for i in range(40, 60):
            await trail.record(encrypt_call(i))
        assert not any(segment.exists() for segment in closed)


async def test_retention_by_age_runs_at_each_digest_on_a_quiet_node(tmp_path: Path) -> None:
    # No segment closes after the old ones aged: the digest interval's timer applies retention.
    from keytrail.audit.integrity import verify

    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_hours=24, digest_interval_s=0.2)
    async with AuditTrail.open(settings) as trail:
        closed = await _closed_segments_after_calls(trail)
        assert closed
        _backdate(closed, 172800)  # two days old
        end = trail.log.end_offset()
        await eventually(lambda: not any(segment.exists() for segment in closed), what="the aged segments deleted")
        assert trail.log.end_offset() == end  # no record was written meanwhile
        assert trail.log.start_offset() > 0
    assert verify(tmp_path) == []


async def test_retention_that_cannot_delete_is_logged_and_the_spool_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from keytrail.transport.segment_log import SegmentLog

    def refused(self: SegmentLog, offset: int) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(SegmentLog, "delete_before", refused)
    settings = AuditSettings(data_dir=tmp_path, segment_bytes=2000, retention_bytes=1, reader_grace_s=0)
    async with AuditTrail.open(settings) as trail:
        for i in range(40):  # segments close, retention fails each time
            await trail.record(encrypt_call(i))
        assert trail.problem() is None
    assert "audit log retention failed: [Errno 13] Permission denied" in caplog.text


class _HeldSync:
    """Replaces `SegmentLog.sync`: the first fsync waits (in the writer thread) until released,
    then succeeds or raises `error`; later ones pass straight through."""

    def __init__(self, real: Callable[[], None], error: OSError | None = None) -> None:
        self.real, self.error = real, error
        self.entered, self.released = threading.Event(), threading.Event()

    def __call__(self) -> None:
        if not self.entered.is_set():
            self.entered.set()
            self.released.wait(10)
            if self.error is not None:
                raise self.error
        self.real()

    async def wait_entered(self) -> None:
        await eventually(self.entered.is_set, what="the fsync entered", interval=0.001)


async def test_records_queued_during_an_fsync_share_the_next_one(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    async with AuditTrail.open(_thread_synced(tmp_path)) as trail:
        held = _HeldSync(trail.log.sync)
        monkeypatch.setattr(trail.log, "sync", held)
        first = asyncio.create_task(trail.record(encrypt_call(0)))
        await held.wait_entered()
        queued = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(1, 11)]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(task.done() for task in queued)  # none durable yet
        held.released.set()
        await asyncio.gather(first, *queued)
        assert trail.spool.fsyncs == 2  # one for the first record, one for the ten behind it
    ids = [e["eventID"] for _, e in iter_events(tmp_path)]
    assert ids == [encrypt_call(i).event_id for i in range(11)]


async def test_failed_fsync_fails_the_records_queued_behind_it(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    async with failed_trail(_thread_synced(tmp_path)) as trail:
        held = _HeldSync(trail.log.sync, OSError(5, "I/O error"))
        monkeypatch.setattr(trail.log, "sync", held)
        first = asyncio.create_task(trail.record(encrypt_call(0)))
        await held.wait_entered()
        queued = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        held.released.set()
        results = await asyncio.gather(first, *queued, return_exceptions=True)
        assert all(isinstance(result, SpoolError) for result in results), results
        assert trail.spool.durable_end == 0


async def test_a_cancelled_caller_leaves_the_rest_of_its_batch_durable(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    async with AuditTrail.open(_thread_synced(tmp_path)) as trail:
        held = _HeldSync(trail.log.sync)
        monkeypatch.setattr(trail.log, "sync", held)
        records = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(6)]
        await held.wait_entered()
        records[2].cancel()
        await asyncio.sleep(0.01)
        held.released.set()
        results = await asyncio.gather(*records, return_exceptions=True)
        assert isinstance(results[2], asyncio.CancelledError)
        assert [r for i, r in enumerate(results) if i != 2] == [None] * 5
        assert trail.spool.durable_end == 6  # its record was written with the batch all the same


async def test_close_commits_records_queued_during_an_fsync(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trail = AuditTrail.open(_thread_synced(tmp_path))
    await trail.start()
    held = _HeldSync(trail.log.sync)
    monkeypatch.setattr(trail.log, "sync", held)
    records = [asyncio.create_task(trail.record(encrypt_call(0)))]
    await held.wait_entered()
    records += [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(1, 5)]
    await asyncio.sleep(0.01)
    closing = asyncio.create_task(trail.close())
    await asyncio.sleep(0.01)
    assert not closing.done()  # close waits for the fsync in flight and the group behind it
    held.released.set()
    await asyncio.gather(closing, *records)
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(5)]
    from keytrail.audit.integrity import verify

    assert verify(tmp_path) == []


@pytest.mark.parametrize("left_by_a_crash", ["", "12\x00\x00", "garbage"])
def test_a_shipped_offset_file_a_crash_emptied_means_resending_not_a_crash(
        tmp_path: Path, left_by_a_crash: str, caplog: pytest.LogCaptureFixture) -> None:
    from keytrail.audit.shipper import ShippedOffset

    (tmp_path / "shipped-offset").write_text(left_by_a_crash)
    offset = ShippedOffset(tmp_path / "shipped-offset")
    assert offset.value == 0  # from the oldest record kept: at least once, never a gap
    assert "shipping starts again from the oldest record kept" in caplog.text
    offset.advance(42)
    assert ShippedOffset(tmp_path / "shipped-offset").value == 42


async def _ticks(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


async def test_a_lone_call_is_written_at_once_not_after_the_gather_ticks(tmp_path: Path) -> None:
    in_progress = CallsInProgress()
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path), in_progress=in_progress) as trail:
        in_progress.count = 1  # the one call the service is serving
        task = asyncio.create_task(trail.record(encrypt_call(0)))
        await _ticks(1)
        assert trail.log.end_offset() == 1  # written (page cache) in the call's own loop step
        await task


async def test_a_batch_goes_out_once_it_holds_half_the_calls_in_progress(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    in_progress = CallsInProgress()
    async with AuditTrail.open(_thread_synced(tmp_path), in_progress=in_progress) as trail:
        held = _HeldSync(trail.log.sync)
        monkeypatch.setattr(trail.log, "sync", held)
        in_progress.count = 16  # no fsync timed yet: sending early costs the calls on their way nothing
        first = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(4)]
        await _ticks(3)
        assert trail.log.end_offset() == 0  # 4 queued, 12 more on their way: worth waiting for
        in_progress.count = 10
        more = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(4, 6)]
        await _ticks(2)
        assert trail.log.end_offset() == 6  # 6 queued, 4 on their way: sent, its fsync overlaps them
        await held.wait_entered()
        last = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(6, 8)]
        await _ticks(GATHER_YIELDS + 2)
        assert trail.log.end_offset() == 6 and not any(t.done() for t in first + more + last)  # one fsync at a time
        held.released.set()
        await asyncio.gather(*first, *more, *last)
        assert trail.spool.fsyncs == 2 and trail.spool.stats.records == 8


async def test_without_a_count_of_calls_a_batch_waits_the_gather_ticks(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        task = asyncio.create_task(trail.record(encrypt_call(0)))
        await _ticks(GATHER_YIELDS - 1)
        assert trail.log.end_offset() == 0
        await _ticks(3)
        assert trail.log.end_offset() == 1
        await task


async def test_on_a_slow_disk_a_batch_waits_for_every_call_on_its_way(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    in_progress = CallsInProgress()
    async with AuditTrail.open(_thread_synced(tmp_path), in_progress=in_progress) as trail:
        real_sync = trail.log.sync
        monkeypatch.setattr(trail.log, "sync", lambda: (time.sleep(0.1), real_sync())[1])
        in_progress.count = 1
        for i in range(3):  # lone calls: their fsyncs are timed at ≥ 100 ms
            await trail.record(encrypt_call(i))
        in_progress.count = 16
        half = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(3, 11)]
        await _ticks(3)
        # 8 queued, 8 on their way: their work on the loop would not hide a 100 ms fsync, and
        # sent now they would wait for it and then for their own
        assert trail.log.end_offset() == 3
        rest = [asyncio.create_task(trail.record(encrypt_call(i))) for i in range(11, 19)]
        await _ticks(2)
        assert trail.log.end_offset() == 19
        await asyncio.gather(*half, *rest)
        assert trail.spool.fsyncs == 4


class _Crash(BaseException):
    """Stands for the process dying at this point (what the files hold then is what a crash leaves)."""


def _retaining(data_dir: Path) -> AuditSettings:
    """Small segments and a byte budget, so that retention deletes some within a few dozen calls."""
    return AuditSettings(data_dir=data_dir, segment_bytes=2000, retention_bytes=5000, fsync_helper=False,
                         reader_grace_s=0)


async def _record_until_refused(trail: AuditTrail, calls: int = 60) -> None:
    """Record calls until the spool refuses one (a simulated crash fails the group it hit)."""
    for i in range(calls):
        try:
            await trail.record(encrypt_call(i))
        except SpoolError:
            return


async def test_a_crash_between_retention_deleting_segments_and_noting_the_floor_is_no_tamper(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.audit.integrity import verify
    from keytrail.transport.segment_log import SegmentLog

    real_delete = SegmentLog.delete_before

    def delete_then_crash(self: SegmentLog, offset: int) -> int:
        deleted = real_delete(self, offset)
        if deleted:
            raise _Crash  # the segments are gone; whatever retention writes after this is not
        return deleted

    async with failed_trail(_retaining(tmp_path)) as trail:
        monkeypatch.setattr(SegmentLog, "delete_before", delete_then_crash)
        await _record_until_refused(trail)
        assert trail.log.start_offset() > 0
    assert verify(tmp_path) == []


async def test_a_crash_while_noting_the_retention_floor_keeps_a_whole_floor(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.audit.integrity import verify

    def emptied_then_crash(self: Path, *args: object, **kwargs: object) -> int:
        self.open("w").close()  # opening for writing truncated it; the crash came before the data
        raise _Crash

    async with AuditTrail.open(_retaining(tmp_path)) as trail:
        monkeypatch.setattr(Path, "write_text", emptied_then_crash)
        await _record_until_refused(trail)
    monkeypatch.undo()
    assert verify(tmp_path) == []


async def test_problem_tells_the_health_check_why_records_are_refused(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.audit import spool as spool_module
    from keytrail.transport import segment_log

    async with failed_trail(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        assert trail.problem() is None
        real_write = os.pwrite
        monkeypatch.setattr(os, "pwrite", lambda fd, data, at: (_ for _ in ()).throw(OSError(28, "No space left")))
        with pytest.raises(SpoolError):
            await trail.record(encrypt_call(1))
        assert "cannot write" in (trail.problem() or "") and "No space left" in (trail.problem() or "")
        monkeypatch.setattr(spool_module, "REFUSAL_SHOWN_SECONDS", 0.0)  # no call since: maybe space is back
        assert trail.problem() is None
        monkeypatch.setattr(os, "pwrite", real_write)
        await trail.record(encrypt_call(2))
        monkeypatch.undo()
        assert trail.problem() is None

        def half_then_full(fd: int, data: bytes, at: int) -> int:
            real_write(fd, bytes(data)[: len(data) // 2], at)
            raise OSError(28, "No space left")

        monkeypatch.setattr(os, "pwrite", half_then_full)
        monkeypatch.setattr(segment_log.os, "ftruncate", lambda fd, size: (_ for _ in ()).throw(OSError(5, "I/O")))
        with pytest.raises(SpoolError):
            await trail.record(encrypt_call(3))
        monkeypatch.undo()
        assert "until restarted" in (trail.problem() or "")  # for good: no wait clears it


async def test_problem_names_the_shipping_cap(tmp_path: Path) -> None:
    settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", max_unshipped_bytes=3000)
    async with AuditTrail.open(settings) as trail:
        with pytest.raises(SpoolError):
            for i in range(100):
                await trail.record(encrypt_call(i))
        assert "over its cap" in (trail.problem() or "")


async def test_a_digest_that_cannot_be_written_at_a_segment_roll_is_left_to_the_next(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The records are durable before the digest is signed; a digest failing there (no file
    # descriptor left: a flood of connections) failed the spool for good, every call refused.
    from keytrail.audit import integrity

    real_write = integrity._write_atomic
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path, segment_bytes=300, fsync_helper=False)) as trail:
        await trail.record(encrypt_call(0))
        monkeypatch.setattr(integrity, "_write_atomic",
                            lambda *args: (_ for _ in ()).throw(OSError(24, "Too many open files")))
        for i in range(1, 6):  # past a segment's 300 bytes: a roll, whose digest fails
            await trail.record(encrypt_call(i))
        monkeypatch.setattr(integrity, "_write_atomic", real_write)
        for i in range(6, 12):  # the next roll's digest signs them all
            await trail.record(encrypt_call(i))
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(12)]
    assert integrity.verify(tmp_path) == []


@pytest.mark.parametrize(("fsync_helper", "segment_bytes"), [(True, 64 << 20), (False, 64 << 20), (True, 300)])
async def test_an_audit_folder_moved_away_while_running_refuses_every_later_record(
        tmp_path: Path, fsync_helper: bool, segment_bytes: int) -> None:
    # `mv audit audit.old; mkdir -p audit/log` (or rm -r) under a running node: its records went on
    # into the moved (or deleted) files, every call answered as audited, none where a reader looks;
    # at the next segment a new log began in the new folder at the old one's offset.
    settings = AuditSettings(data_dir=tmp_path, fsync_helper=fsync_helper, segment_bytes=segment_bytes)
    async with failed_trail(settings) as trail:
        await trail.record(encrypt_call(0))
        (tmp_path / "audit").rename(tmp_path / "audit.old")
        (tmp_path / "audit" / "log").mkdir(parents=True)
        with pytest.raises(SpoolError, match="is no longer the file this node writes its audit records to"):
            await trail.record(encrypt_call(1))
        with pytest.raises(SpoolError, match="refuses records"):
            await trail.record(encrypt_call(2))
        assert "until restarted" in (trail.problem() or "")
    assert list((tmp_path / "audit" / "log").iterdir()) == []
