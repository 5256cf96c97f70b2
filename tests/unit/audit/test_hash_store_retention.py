"""Retention drops the stored hashes of the records it deleted: `audit/integrity/hashes.bin` kept
32 bytes for every record ever written (276 MB a day at 100 calls/s, whatever the retention), and
`audit verify` still checks every record kept, crashes in between included."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from keytrail.audit.integrity import HASH_SIZE, HashStoreStart, IntegrityFileUnusable, IntegrityPaths, verify
from keytrail.audit.schema import decode, encode
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.transport.segment_log import SegmentLog
from tests.support.audit_records import encrypt_call, failed_trail, fill_trail, fill_trail_async, rewrite_segment


class _Crash(BaseException):
    """Stands for the process dying at this point (what the files hold then is what a crash leaves)."""


def _retaining(data_dir: Path) -> AuditSettings:
    """Small segments (3 records) and a byte budget of about two of them, so that retention moves
    the floor every few calls."""
    return AuditSettings(data_dir=data_dir, segment_bytes=2000, retention_bytes=5000, fsync_helper=False,
                         reader_grace_s=0)


async def _record(data_dir: Path, first: int, count: int, settings: AuditSettings | None = None) -> tuple[int, int]:
    """Record calls `first`.. one at a time (a digest at each segment closed), under retention unless
    other `settings` are given, each trim's copy done before the next call; the log's (start, end)
    offsets once closed."""
    with pytest.MonkeyPatch.context() as patch:
        _copies_done_at_once(patch)
        async with AuditTrail.open(settings or _retaining(data_dir)) as trail:
            for i in range(first, first + count):
                await trail.record(encrypt_call(i))
            assert verify(data_dir) == []  # on the running node too
            return trail.log.start_offset(), trail.log.end_offset()


def _copies_done_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each hash store trim's bulk copy finished as it begins, as on an idle machine: the bound on
    the hashes held (`_assert_holds_about_the_kept_range`) counts on it. On a loaded one a copy can
    outlast several retentions, and the trim then ends at a later one, or is cancelled by the close
    (by design: the old store keeps every hash); a CI run saw 27 hashes held for 4 records kept."""
    from keytrail.audit import integrity

    real_begin = integrity._HashCopy.begin

    def begin(temporary: Path, source: int, start: HashStoreStart, span: tuple[int, int]) -> integrity._HashCopy:
        copy = real_begin(temporary, source, start, span)
        while copy.copying():
            time.sleep(0.001)
        return copy

    monkeypatch.setattr(integrity._HashCopy, "begin", staticmethod(begin))


async def _record_until_refused(trail: AuditTrail, calls: int) -> None:
    """Record calls until the spool refuses one (a simulated crash fails the group it hit)."""
    from keytrail.audit.spool import SpoolError

    for i in range(calls):
        try:
            await trail.record(encrypt_call(i))
        except SpoolError:
            return


def _held(paths: IntegrityPaths) -> range:
    """The offsets whose record hashes hashes.bin holds."""
    from keytrail.audit.integrity import hash_store_start

    fd = os.open(paths.hashes, os.O_RDONLY)
    try:
        start = hash_store_start(fd)
        return range(start.base, start.end(os.fstat(fd).st_size))
    finally:
        os.close(fd)


def _assert_holds_about_the_kept_range(paths: IntegrityPaths, start: int, end: int) -> None:
    """The hashes held run to the log's end from at most the kept records' count (again, rewritten
    only once as many are to drop as to keep) and one digest's records (3 here) before its start."""
    held = _held(paths)
    assert held.stop == end, (held, end)
    assert 0 < held.start <= start, (held, start)
    assert len(held) <= 2 * (end - start) + 6, (held, start, end)


async def test_retention_drops_the_hashes_of_the_records_it_deleted(tmp_path: Path) -> None:
    start, end = await _record(tmp_path, 0, 300)
    _, paths = audit_paths(tmp_path)
    assert start > 250
    assert paths.hashes.stat().st_size < 32 * 40  # it was 9,600 bytes: 32 for each of the 300 records
    _assert_holds_about_the_kept_range(paths, start, end)
    assert verify(tmp_path) == []


def _altered(index: int) -> object:
    def alter(records: list[bytes]) -> list[bytes]:
        event = decode(records[index])
        event["sourceIPAddress"] = "203.0.113.66"
        return [*records[:index], encode(event), *records[index + 1:]]
    return alter


async def test_a_kept_record_altered_after_the_hashes_were_dropped_is_named(tmp_path: Path) -> None:
    start, _ = await _record(tmp_path, 0, 300)
    rewrite_segment(tmp_path, _altered(1))
    problems = verify(tmp_path)
    assert any(f"offset {start + 1} was altered" in problem for problem in problems), problems


async def test_a_kept_record_altered_with_its_stored_hash_breaks_the_signed_chain(tmp_path: Path) -> None:
    start, _ = await _record(tmp_path, 0, 300)
    altered: list[bytes] = []

    def alter(records: list[bytes]) -> list[bytes]:
        edited = _altered(1)(records)  # type: ignore[operator]
        altered.append(edited[1])
        return edited  # type: ignore[no-any-return]

    rewrite_segment(tmp_path, alter)
    _, paths = audit_paths(tmp_path)
    with paths.hashes.open("r+b") as hashes:  # the hash store edited to match, past its header
        hashes.seek(paths.hashes.stat().st_size - HASH_SIZE * (_held(paths).stop - start - 1))
        hashes.write(hashlib.sha256(altered[0]).digest())
    problems = verify(tmp_path)
    assert any("do not match the signed chain" in problem for problem in problems), problems


async def test_a_hash_store_written_before_retention_dropped_hashes_verifies_and_is_trimmed(tmp_path: Path) -> None:
    await fill_trail_async(tmp_path, 60, segment_bytes=2000)  # no retention: the hash store as keytrail always wrote it
    _, paths = audit_paths(tmp_path)
    assert paths.hashes.stat().st_size == 32 * 60
    assert verify(tmp_path) == []
    start, end = await _record(tmp_path, 60, 240)
    _assert_holds_about_the_kept_range(paths, start, end)
    assert verify(tmp_path) == []


def _crash_at_the_rename(paths: IntegrityPaths, monkeypatch: pytest.MonkeyPatch, *, before: bool) -> list[bool]:
    """Crash when the rewritten hash store is renamed over the old one: `before` it, with the new
    one cut short (a kill while it was written), or right after it."""
    real_replace = os.replace
    crashed: list[bool] = []

    def replace(source: str | Path, target: str | Path) -> None:
        if Path(target) == paths.hashes and not crashed:
            crashed.append(True)
            if before:
                os.truncate(source, os.stat(source).st_size // 2)
                raise _Crash
            real_replace(source, target)
            raise _Crash
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    return crashed


@pytest.mark.parametrize("before", [True, False], ids=["before the rename", "after the rename"])
async def test_a_crash_while_the_hashes_are_dropped_leaves_a_trail_that_verifies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, before: bool) -> None:
    _, paths = audit_paths(tmp_path)
    async with failed_trail(_retaining(tmp_path)) as trail:
        crashed = _crash_at_the_rename(paths, monkeypatch, before=before)
        await _record_until_refused(trail, 300)
    monkeypatch.undo()
    assert crashed
    assert verify(tmp_path) == []
    start, end = await _record(tmp_path, 1000, 120)  # the next open signs on, and drops hashes again
    _assert_holds_about_the_kept_range(paths, start, end)
    assert verify(tmp_path) == []


async def test_a_rewrite_that_fails_keeps_the_old_store_and_the_calls_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from keytrail.audit import integrity

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(integrity, "_copy", disk_full)
    _, paths = audit_paths(tmp_path)
    async with AuditTrail.open(_retaining(tmp_path)) as trail:
        for i in range(60):
            await trail.record(encrypt_call(i))
        assert trail.problem() is None
    assert f"audit log retention failed: [Errno 28] No space left on device: '{paths.hashes}.tmp'" in caplog.text
    assert not paths.hashes.with_suffix(".bin.tmp").exists()  # what the copy took is given back
    assert paths.hashes.stat().st_size == 32 * 60
    assert verify(tmp_path) == []
    monkeypatch.undo()
    start, end = await _record(tmp_path, 60, 60)
    _assert_holds_about_the_kept_range(paths, start, end)


async def test_hashes_dropped_past_the_retention_floor_are_named(tmp_path: Path) -> None:
    # Only retention drops hashes, below the floor it signs: a hash store rewritten to begin later
    # would leave the records before it unchecked.
    await _record(tmp_path, 0, 30, AuditSettings(data_dir=tmp_path, segment_bytes=2000))
    _, paths = audit_paths(tmp_path)
    digest = json.loads(sorted(paths.digests.glob("*.json"))[3].read_text())
    base = digest["endOffset"]
    hashes = paths.hashes.read_bytes()
    paths.hashes.write_bytes(b"keytrail hash store v2\0\0" + base.to_bytes(8, "big") + hashes[32 * base:])
    problems = verify(tmp_path)
    assert f"{paths.hashes} begins at offset {base}, past the retention floor 0: the hashes of the records " \
        f"0..{base - 1} were dropped outside retention" in problems, problems
    assert f"records at offsets 0..{base - 1} cannot be checked: the hash store begins at offset {base} (retention " \
        "dropped the hashes before it)" in problems, problems


def test_a_hash_store_that_begins_after_the_newest_digest_is_refused(tmp_path: Path) -> None:
    fill_trail(tmp_path, 20)
    _, paths = audit_paths(tmp_path)
    paths.hashes.write_bytes(b"keytrail hash store v2\0\0" + (10**6).to_bytes(8, "big"))
    with pytest.raises(IntegrityFileUnusable, match="begins at offset 1000000, after the newest digest's end 20"):
        AuditTrail.open(AuditSettings(data_dir=tmp_path))


class _HeldCopy:
    """Holds the bulk copy of a hash store trim, made off the spool's writer thread, when it starts:
    `held` is set once it waits; it goes on once `release` is set or, `until_cancelled`, once the
    trail's close cancels it. `copies`: the bulk copies begun (the writer thread copies only the tail)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, until_cancelled: bool = False) -> None:
        from keytrail.audit import integrity

        self.held, self.release, self.copies = threading.Event(), threading.Event(), 0
        real_copy = integrity._copy

        def holding(source: int, first: int, stop: int, target: int, *rest: threading.Event) -> None:
            if threading.current_thread().name != "audit-spool-writer":
                self.copies += 1
                self.held.set()
                (rest[0] if until_cancelled else self.release).wait()
            real_copy(source, first, stop, target, *rest)

        monkeypatch.setattr(integrity, "_copy", holding)


async def _record_until_held(trail: AuditTrail, copy: _HeldCopy, calls: int = 300) -> int:
    """Record calls until retention begins a trim whose bulk copy is held; how many were recorded."""
    for i in range(calls):
        if copy.held.is_set():
            return i
        await trail.record(encrypt_call(i))
    raise AssertionError(f"no hash store trim copied the kept hashes off the writer thread in {calls} calls")


def _assert_every_hash_is_right(data_dir: Path) -> None:
    """hashes.bin holds, at its offset, the SHA-256 of each record of the log (closed: every hash stored)."""
    log_dir, paths = audit_paths(data_dir)
    held = _held(paths)
    stored = paths.hashes.read_bytes()[-len(held) * HASH_SIZE:]
    log = SegmentLog(log_dir)
    try:
        start, end = log.start_offset(), log.end_offset()
        records = log.read(start, end - start)
    finally:
        log.close()
    assert held.start <= start and held.stop == end and len(records) == end - start, (held, start, end)
    for offset, payload in records:
        at = (offset - held.start) * HASH_SIZE
        assert stored[at:at + HASH_SIZE] == hashlib.sha256(payload).digest(), offset


async def test_calls_go_on_while_the_kept_hashes_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The copy of the kept hashes (gigabytes on a busy node) ran on the spool's writer thread: every
    # call waited for it. Held here, the calls go on, appended to the old store, which it then takes.
    copy = _HeldCopy(monkeypatch)
    _, paths = audit_paths(tmp_path)
    async with AuditTrail.open(_retaining(tmp_path)) as trail:
        calls = await _record_until_held(trail, copy)
        untrimmed, while_held = _held(paths).start, calls
        for i in range(calls, calls + 60):  # 20 segments closed, each a digest and a retention
            await trail.record(encrypt_call(i))
        assert verify(tmp_path) == []
        assert (_held(paths).start, copy.copies) == (untrimmed, 1)  # one trim at a time, not done yet
        copy.release.set()
        calls += 60
        while _held(paths).start == untrimmed:  # done at a retention after the copy (a segment closed)
            await trail.record(encrypt_call(calls))
            calls += 1
            assert calls < 1000, "the trim never took its last step"
        end = trail.log.end_offset()
        assert verify(tmp_path) == []
    assert not paths.hashes.with_suffix(".bin.tmp").exists()
    assert untrimmed < _held(paths).start <= while_held < end  # the calls made while it copied are kept
    assert verify(tmp_path) == []
    _assert_every_hash_is_right(tmp_path)


async def test_a_stop_while_the_kept_hashes_are_copied_keeps_the_old_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    copy = _HeldCopy(monkeypatch, until_cancelled=True)
    _, paths = audit_paths(tmp_path)
    async with AuditTrail.open(_retaining(tmp_path)) as trail:
        calls = await _record_until_held(trail, copy)
        for i in range(calls, calls + 30):
            await trail.record(encrypt_call(i))
        untrimmed, end = _held(paths).start, trail.log.end_offset()
    # The close cancelled the copy: the old store holds every hash, the new one is removed.
    assert not paths.hashes.with_suffix(".bin.tmp").exists()
    assert _held(paths) == range(untrimmed, end)
    assert verify(tmp_path) == []
    _assert_every_hash_is_right(tmp_path)
    monkeypatch.undo()
    start, end = await _record(tmp_path, 1000, 120)  # the next open trims it
    _assert_holds_about_the_kept_range(paths, start, end)
    _assert_every_hash_is_right(tmp_path)


async def test_a_last_step_that_fails_keeps_the_old_store_and_the_calls_go_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from keytrail.audit import integrity

    real_copy = integrity._copy

    def disk_full_on_the_writer_thread(*args: object) -> None:  # the bulk copied, the hashes since not
        if threading.current_thread().name == "audit-spool-writer":
            raise OSError(28, "No space left on device")
        real_copy(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(integrity, "_copy", disk_full_on_the_writer_thread)
    _, paths = audit_paths(tmp_path)
    async with AuditTrail.open(_retaining(tmp_path)) as trail:
        for i in range(60):
            await trail.record(encrypt_call(i))
        assert trail.problem() is None
    assert f"audit log retention failed: [Errno 28] No space left on device: '{paths.hashes}.tmp'" in caplog.text
    assert not paths.hashes.with_suffix(".bin.tmp").exists()
    assert paths.hashes.stat().st_size == 32 * 60
    assert verify(tmp_path) == []
    _assert_every_hash_is_right(tmp_path)
