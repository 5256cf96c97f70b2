"""The fsync helper process (audit/syncer.py), alone and under the spool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.spool import SpoolError
from keytrail.audit.syncer import SyncHelper, SyncHelperGone
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.kms.model import CallsInProgress
from keytrail.transport.segment_log import SegmentLog
from tests.support.audit_records import encrypt_call, failed_trail


async def _sync(helper: SyncHelper, path: Path) -> tuple[OSError | None, float]:
    answer: asyncio.Future[tuple[OSError | None, float]] = asyncio.get_running_loop().create_future()
    helper.sync(path, lambda error, seconds: answer.set_result((error, seconds)))
    return await asyncio.wait_for(answer, 10)


async def test_the_helper_fsyncs_each_file_it_is_asked_for(tmp_path: Path) -> None:
    helper = SyncHelper.start(asyncio.get_running_loop())
    try:
        for name in ("a.log", "b.log", "a.log"):
            (tmp_path / name).write_bytes(b"record")
            error, seconds = await _sync(helper, tmp_path / name)
            assert error is None and 0 <= seconds < 10
    finally:
        helper.close()


async def test_the_helper_reports_the_errno_of_a_failed_fsync(tmp_path: Path) -> None:
    helper = SyncHelper.start(asyncio.get_running_loop())
    try:
        error, _ = await _sync(helper, tmp_path / "missing.log")
        assert isinstance(error, OSError) and not isinstance(error, SyncHelperGone)
        assert error.errno == 2  # ENOENT, as the helper's open found it
        (tmp_path / "there.log").write_bytes(b"x")
        assert (await _sync(helper, tmp_path / "there.log"))[0] is None  # it keeps answering
    finally:
        helper.close()


async def test_the_helper_answers_at_once_for_a_fifo_in_the_segments_place(tmp_path: Path) -> None:
    # It opened the path as it came: a FIFO (whoever can write the data dir can make one) kept it
    # waiting for a writer until it was given up as gone, every call waiting meanwhile.
    os.mkfifo(tmp_path / "a.log")
    helper = SyncHelper.start(asyncio.get_running_loop())
    try:
        error, _ = await _sync(helper, tmp_path / "a.log")
        assert isinstance(error, OSError) and not isinstance(error, SyncHelperGone), error
    finally:
        helper.close()


async def test_a_fifo_put_in_place_of_the_active_segment_refuses_the_next_record_at_once(tmp_path: Path) -> None:
    async with failed_trail(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        trail.spool.segments.active_path.unlink()
        os.mkfifo(trail.spool.segments.active_path)
        with pytest.raises(SpoolError, match="is no longer the file this node writes its audit records to"):
            await trail.record(encrypt_call(1))
        assert trail.spool.helper_restarts == 0  # answered, not given up as gone


async def test_a_helper_that_died_answers_that_it_is_gone(tmp_path: Path) -> None:
    helper = SyncHelper.start(asyncio.get_running_loop())
    os.kill(helper.pid, signal.SIGKILL)
    (tmp_path / "a.log").write_bytes(b"x")
    error, _ = await _sync(helper, tmp_path / "a.log")
    assert isinstance(error, SyncHelperGone)
    helper.close()


async def test_a_helper_whose_stdout_closed_is_gone_even_while_its_stdin_takes_requests(tmp_path: Path) -> None:
    # A dying process's files close in no set order: its answers' pipe can reach end of file while
    # its stdin still takes a request that nobody will read. Here one that closes stdout and waits.
    process = subprocess.Popen([sys.executable, "-c", "import os, time; os.close(1); time.sleep(30)"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    helper = SyncHelper(process, asyncio.get_running_loop())
    try:
        await asyncio.sleep(1.0)  # it starts and closes stdout; the loop reads the end of file
        error, _ = await _sync(helper, tmp_path / "a.log")  # without the fix: no answer, ever
        assert isinstance(error, SyncHelperGone)
    finally:
        process.kill()
        helper.close()


async def test_the_helper_exits_when_the_serving_process_is_gone() -> None:
    # The kernel closes a dead process's pipes: the helper reads end of file and exits.
    helper = SyncHelper.start(asyncio.get_running_loop())
    process = helper._process
    assert process.stdin is not None
    process.stdin.close()
    assert process.wait(10) == 0
    helper.close()


def test_the_helper_exits_quietly_when_the_serving_process_died_before_its_answer(tmp_path: Path) -> None:
    # serve killed (kill -9) while a group's fsync was asked for: the helper's answer met a closed
    # pipe, and its BrokenPipeError traceback went to serve's log, among the next start's lines.
    (tmp_path / "a.log").write_bytes(b"record")
    path = str(tmp_path / "a.log").encode()
    process = subprocess.Popen([sys.executable, "-m", "keytrail.audit.syncer"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
    assert process.stdin is not None and process.stdout is not None
    process.stdout.close()  # the serving process is gone: no one reads the answer
    _, errors = process.communicate(len(path).to_bytes(4, "big") + path, timeout=30)
    assert errors == b""
    assert process.returncode == 0


async def test_records_are_durable_through_the_helper(tmp_path: Path) -> None:
    in_progress = CallsInProgress()
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path), in_progress=in_progress) as trail:
        assert trail.spool.fsync_helper_pid is not None
        in_progress.count = 8
        await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(8)))  # the new segment: the thread
        for batch in range(3):
            await asyncio.gather(*(trail.record(encrypt_call(8 + 8 * batch + i)) for i in range(8)))
        stats = trail.spool.stats
        assert stats.records == 32 and 2 <= stats.fsyncs <= 8  # they shared fsyncs, the helper timed them
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(32)]


async def test_a_failed_fsync_in_the_helper_fails_the_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with failed_trail(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))  # the segment's first fsync (and its directory's)
        # The helper is asked for a file it cannot open: its fsync fails as a bad disk's would.
        monkeypatch.setattr(SegmentLog, "active_path", property(lambda log: tmp_path / "gone"))
        with pytest.raises(SpoolError, match="No such file"):
            await trail.record(encrypt_call(1))
        with pytest.raises(SpoolError):  # after a failed fsync the spool takes nothing more
            await trail.record(encrypt_call(2))


async def test_when_the_helper_dies_the_writer_thread_takes_over(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "keytrail.audit.spool")
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        helper = trail.spool.fsync_helper_pid
        assert helper is not None
        os.kill(helper, signal.SIGKILL)
        for i in range(1, 4):
            await trail.record(encrypt_call(i))
        assert trail.spool.fsync_helper_pid is None and trail.spool.durable_end == 4  # a new one comes in 1 s
    assert sum("fsync helper exited" in r.message for r in caplog.records) == 1
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(4)]


async def test_the_helper_is_reaped_on_close(tmp_path: Path) -> None:
    trail = AuditTrail.open(AuditSettings(data_dir=tmp_path))
    await trail.start()
    helper = trail.spool.fsync_helper_pid
    assert helper is not None
    await trail.record(encrypt_call(0))
    await trail.close()
    with pytest.raises(ChildProcessError):  # it exited at the end of its stdin, and was waited for
        os.waitpid(helper, os.WNOHANG)


async def test_a_new_helper_starts_after_the_pause(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "keytrail.audit.spool")
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        trail.spool.helper_restart_seconds = 0.2
        await trail.record(encrypt_call(0))
        first = trail.spool.fsync_helper_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await trail.record(encrypt_call(1))  # the writer thread syncs it
        assert "a new helper starts in 0.2 s" in caplog.text
        for _ in range(300):
            if trail.spool.fsync_helper_pid not in (None, first):
                break
            await asyncio.sleep(0.01)
        second = trail.spool.fsync_helper_pid
        assert second not in (None, first)
        assert trail.spool.helper_restart_seconds == 0.4  # doubled: the first helper died young
        fsyncs = trail.spool.fsyncs
        await trail.record(encrypt_call(2))
        assert trail.spool.fsyncs == fsyncs + 1 and trail.spool.fsync_helper_pid == second
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(3)]


async def test_a_helper_that_does_not_answer_is_killed_and_reported_gone(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A stopped helper (SIGSTOP, a debugger, a frozen cgroup) never answers, yet never exits either:
    # without a deadline every audited call waited on it, and serve's stop too, for as long as it stayed so.
    monkeypatch.setattr("keytrail.audit.syncer.ANSWER_SECONDS", 0.5)
    helper = SyncHelper.start(asyncio.get_running_loop())
    os.kill(helper.pid, signal.SIGSTOP)
    try:
        (tmp_path / "a.log").write_bytes(b"x")
        error, _ = await _sync(helper, tmp_path / "a.log")
        assert isinstance(error, SyncHelperGone) and "did not answer within 0.5 s" in str(error)
        helper.close()
    finally:
        _kill(helper.pid)  # a stopped helper would not even see the end of its stdin
    for _ in range(500):  # killed, and reaped without the loop waiting on it
        if helper._process.poll() is not None:
            break
        await asyncio.sleep(0.01)
    assert helper._process.returncode == -signal.SIGKILL


async def test_when_the_helper_hangs_the_writer_thread_takes_over(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "keytrail.audit.spool")
    monkeypatch.setattr("keytrail.audit.syncer.ANSWER_SECONDS", 0.5)
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await trail.record(encrypt_call(0))
        helper = trail.spool.fsync_helper_pid
        assert helper is not None
        os.kill(helper, signal.SIGSTOP)
        try:
            await asyncio.wait_for(trail.record(encrypt_call(1)), 5)  # without the fix: waits until SIGCONT
        except TimeoutError:
            _kill(helper)  # else the trail's close waits on it too
            raise
        assert trail.spool.fsync_helper_pid is None and trail.spool.durable_end == 2
    assert "the audit fsync helper did not answer within 0.5 s" in caplog.text
    assert [e["eventID"] for _, e in iter_events(tmp_path)] == [encrypt_call(i).event_id for i in range(2)]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
