"""The in-process detector's follower: every value of the event log once, in order, across
segments the writer starts while it follows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.schema import encode
from keytrail.cli import tail
from keytrail.cli.tail import detect_live, follow_event_log
from keytrail.clock import SystemClock
from keytrail.detect.alarms import Alarm
from keytrail.detect.runner import DetectorRunner
from keytrail.transport.segment_log import SegmentLog, event_log_dir
from tests.support.audit_records import append_each
from tests.unit.detect.records import create_key, denied, event, key_arn, user


def _small_segment_log(data_dir: Path) -> SegmentLog:
    """A writable event log whose segments roll after a few values."""
    directory = event_log_dir(data_dir)
    directory.mkdir(parents=True)
    return SegmentLog(directory, segment_bytes=400, writable=True)


def _values(start: int, stop: int) -> list[bytes]:
    return [f"value-{n:03d}".encode() * 4 for n in range(start, stop)]


async def test_follow_reads_every_value_once_across_new_segments(tmp_path: Path) -> None:
    log = _small_segment_log(tmp_path)
    append_each(log, _values(0, 25))
    log.sync()
    seen: list[bytes] = []
    idle_polls = 0
    async for values, _ in follow_event_log(tmp_path, start=3, batch=7, idle_seconds=0.01):
        seen.extend(values)
        idle_polls += not values
        if len(seen) == 22:  # caught up: the writer goes on into new segments
            append_each(log, _values(25, 70))
            log.sync()
        if len(seen) == 67 or idle_polls > 50:
            break
    log.close()
    assert len(log.segment_bases()) > 5
    assert seen == _values(3, 70)


async def test_a_batch_comes_short_only_at_the_log_s_end_not_at_a_segment_s(tmp_path: Path) -> None:
    # The detector takes a short batch for the log's end (caught up, nothing waiting).
    log = _small_segment_log(tmp_path)
    append_each(log, _values(0, 40))  # every segment ends after a few values
    log.sync()
    log.close()
    sizes = []
    async for values, offset in follow_event_log(tmp_path, batch=7, idle_seconds=0.01):
        sizes.append(len(values))
        if offset == 40:
            break
    assert len(log.segment_bases()) == 4  # of ten values each
    assert sizes == [7, 7, 7, 7, 7, 5]



async def test_records_retention_deletes_before_the_follower_reads_them_are_said_once_with_their_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A detector stopped or behind for longer than the node's reader grace, which retention does not
    wait for, passed over the calls it never judged in silence: alarms they raise were missed."""
    log = _small_segment_log(tmp_path)
    append_each(log, _values(0, 10))
    log.sync()
    seen: list[bytes] = []
    with caplog.at_level("WARNING", logger="keytrail.cli.tail"):
        async for values, _ in follow_event_log(tmp_path, batch=7, idle_seconds=0.01):
            seen.extend(values)
            if len(seen) == 10:  # caught up; then the writer goes on and retention deletes what follows
                append_each(log, _values(10, 50))
                log.sync()
                deleted_to = log.kept_from(35)
                assert log.delete_before(deleted_to) > 0 and deleted_to > 10
            if seen[-1:] == _values(49, 50):
                break
    log.close()
    assert seen == _values(0, 10) + _values(deleted_to, 50)
    warnings = [r.getMessage() for r in caplog.records]
    gone = deleted_to - 10
    assert len(warnings) == 1
    assert f"no longer holds the {gone} records at offsets 10..{deleted_to - 1}: retention deleted" in warnings[0]


async def test_a_replay_that_begins_where_retention_left_the_log_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # serve's detector reads the log from 0 at each start: the oldest record kept is where it begins.
    log = _small_segment_log(tmp_path)
    append_each(log, _values(0, 30))
    log.sync()
    log.delete_before(log.kept_from(15))
    start = log.start_offset()
    log.close()
    seen: list[bytes] = []
    with caplog.at_level("WARNING", logger="keytrail.cli.tail"):
        async for values, offset in follow_event_log(tmp_path, batch=7, idle_seconds=0.01):
            seen.extend(values)
            if offset == 30:
                break
    assert start > 0 and seen == _values(start, 30) and caplog.records == []

async def test_a_follower_held_at_a_deleted_segment_says_so_once_naming_the_records_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """serve's detector waited in front of a segment deleted by hand for good, judging no call
    after it, and no line said why."""
    log = _small_segment_log(tmp_path)
    append_each(log, _values(0, 30))
    log.sync()
    log.close()
    middle = sorted(event_log_dir(tmp_path).glob("*.seg"))[1]
    middle.unlink()
    seen: list[bytes] = []
    idle_polls = 0
    with caplog.at_level("WARNING", logger="keytrail.transport.segment_reader"):
        async for values, _ in follow_event_log(tmp_path, batch=7, idle_seconds=0.01):
            seen.extend(values)
            idle_polls += not values
            if idle_polls == 30:  # held there, poll after poll
                break
    assert seen == _values(0, int(middle.stem))
    [line] = [r.getMessage() for r in caplog.records]
    held = f"the detector reads the event log in {event_log_dir(tmp_path)} no further than offset {int(middle.stem)}"
    assert held in line
    assert "are missing (a segment file deleted" in line and "the calls from there on not judged" in line


def _write_log(data_dir: Path, records: list[dict[str, Any]], segment_bytes: int = 64 << 20) -> None:
    directory = event_log_dir(data_dir)
    directory.mkdir(parents=True)
    log = SegmentLog(directory, segment_bytes=segment_bytes, writable=True)
    append_each(log, map(encode, records))
    log.sync()
    log.close()


async def test_the_live_detector_tells_the_offset_of_the_log_it_has_judged_up_to(tmp_path: Path) -> None:
    # serve's /metrics tells the detector's lag from it (the log's end less this offset).
    now = datetime.now(UTC)
    _write_log(tmp_path, [event("DescribeKey", now - timedelta(seconds=n), key_arn(1)) for n in range(9, 0, -1)])
    runner, judged = DetectorRunner.open(tmp_path, clock=SystemClock()), []
    live = asyncio.create_task(detect_live(tmp_path, runner, lambda alarms: None, judged.append))
    for _ in range(500):
        if judged and judged[-1] == 9:
            break
        await asyncio.sleep(0.01)
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    await runner.close()
    assert judged[-1] == 9 and judged == sorted(judged)


async def _detect_until_read(data_dir: Path, runner: DetectorRunner, last_event_id: str) -> list[Alarm]:
    announced: list[Alarm] = []
    live = asyncio.create_task(detect_live(data_dir, runner, announced.extend))
    for _ in range(500):
        if last_event_id in runner.detector._seen:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # a tick after the log's end
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    await runner.close()
    return announced


def _thief_and_a_key_in_use() -> list[dict[str, Any]]:
    """A key made long ago and used a day ago (not unused), and two denied Decrypts by a thief
    three days ago, ten minutes apart, with eight metadata reads between them: one alarm of 2."""
    now = datetime.now(UTC)
    key, thief = key_arn(1), user("thief")
    return [
        create_key(now - timedelta(days=200), key),
        denied("Decrypt", now - timedelta(days=3), key, thief),
        *[event("DescribeKey", now - timedelta(days=3, seconds=-n), key) for n in range(1, 9)],
        denied("Decrypt", now - timedelta(days=3, minutes=-10), key, thief),
        event("Decrypt", now - timedelta(days=1), key),
    ]


async def test_a_restarted_detector_judges_time_rules_on_the_whole_log_not_on_half_of_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Restart: the log is read again from its start in batches, and ticks as of the wall clock
    while it is being read saw keys and alarms without their later events."""
    monkeypatch.setattr(tail, "DETECTOR_BATCH", 4)  # many batches, a tick after each
    monkeypatch.setattr(tail, "DETECTOR_TICK_SECONDS", 0.0)
    records = _thief_and_a_key_in_use()
    _write_log(tmp_path, records)
    runner = DetectorRunner.open(tmp_path, clock=SystemClock())
    announced = await _detect_until_read(tmp_path, runner, records[-1]["eventID"])
    latest = {a.alarm_id: a for a in announced}  # each alarm's last announced state
    assert [(a.rule, a.count) for a in latest.values()] == [("unauthorized-decrypt", 2)]


async def test_a_detector_replaying_a_log_of_many_segments_ticks_only_at_the_log_s_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each segment's end (64 MiB) came as a short batch, which the detector took for the log's
    end: caught up mid-replay, it ticked as of the wall clock on half the log, raising unused-key
    for a key whose use was in a later segment, letting go of the thief's open alarm between its
    two denials ten minutes apart (the second paged again), and a restart paged them all again."""
    monkeypatch.setattr(tail, "DETECTOR_TICK_SECONDS", 0.0)
    records = _thief_and_a_key_in_use()
    _write_log(tmp_path, records, segment_bytes=2000)
    assert len(SegmentLog(event_log_dir(tmp_path)).segment_bases()) > 3
    for run in range(2):
        runner = DetectorRunner.open(tmp_path, clock=SystemClock())
        announced = await _detect_until_read(tmp_path, runner, records[-1]["eventID"])
        latest = {a.alarm_id: a for a in announced}
        assert [(a.rule, a.count) for a in latest.values()] == ([("unauthorized-decrypt", 2)] if run == 0 else [])


async def test_a_live_detector_that_falls_behind_keeps_one_alarm_for_calls_of_one_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Caught up, then fed a backlog three days old (full batches: more waits), a tick as of the
    wall clock let go of the thief's open alarm between its two denials ten minutes apart, and
    the second paged again as a new alarm."""
    monkeypatch.setattr(tail, "DETECTOR_BATCH", 4)
    monkeypatch.setattr(tail, "DETECTOR_TICK_SECONDS", 0.0)
    then = datetime.now(UTC) - timedelta(days=3)
    key, thief = key_arn(1), user("thief")
    _write_log(tmp_path, [create_key(then - timedelta(hours=1), key)])
    backlog = [
        denied("Decrypt", then, key, thief),
        *[event("DescribeKey", then + timedelta(seconds=n), key) for n in range(1, 9)],
        denied("Decrypt", then + timedelta(minutes=10), key, thief),
    ]
    runner = DetectorRunner.open(tmp_path, clock=SystemClock())
    announced: list[Alarm] = []
    live = asyncio.create_task(detect_live(tmp_path, runner, announced.extend))
    await asyncio.sleep(0.3)  # the first batch came short: caught up
    log = SegmentLog(event_log_dir(tmp_path), writable=True)
    log.append([encode(record) for record in backlog])
    log.sync()
    log.close()
    for _ in range(500):
        if backlog[-1]["eventID"] in runner.detector._seen:
            break
        await asyncio.sleep(0.01)
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    await runner.close()
    assert len({a.alarm_id for a in announced if a.rule == "unauthorized-decrypt"}) == 1


async def test_one_damaged_value_in_the_event_log_costs_that_value_not_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A value with a sound frame (length, CRC) over an Avro body that is no record failed the
    columnar read of its whole batch (up to 4,000 events), which was passed over; it is read as
    the audit topic's values are: the damaged value is skipped, the rest judged."""
    now = datetime.now(UTC)
    key, thief = key_arn(1), user("thief")
    records = [denied("Decrypt", now - timedelta(minutes=30, seconds=-n), key, thief) for n in range(6)]
    values = [encode(record) for record in records]
    damaged = values[0][:10] + b"\xff" * 40  # a known writer's header over a body that is no record
    directory = event_log_dir(tmp_path)
    directory.mkdir(parents=True)
    log = SegmentLog(directory, writable=True)
    log.append([*values[:3], damaged, *values[3:]])  # one batch: the log holds fewer than DETECTOR_BATCH
    log.sync()
    log.close()
    runner = DetectorRunner.open(tmp_path, clock=SystemClock())
    with caplog.at_level("WARNING"):
        [raised] = await _detect_until_read(tmp_path, runner, records[-1]["eventID"])
    assert [(a.alarm_id, a.count) for a in runner.alarms()] == [(raised.alarm_id, 6)]  # the six good ones
    assert "passed over" not in caplog.text


async def test_a_dev_clock_move_ticks_once_the_detector_has_read_the_calls_before_it(tmp_path: Path) -> None:
    """serve --dev-clock ticked its detector as soon as the clock moved, before it had read the
    last denied call answered: the tick closed the thief's alarm as of the new time, and that
    call, a second after the first, paged again as a new alarm."""
    from types import SimpleNamespace
    from typing import cast

    from keytrail.cli import node as node_module
    from keytrail.clock import ManualClock
    from keytrail.detect.alarm_tally import AlarmTally
    from keytrail.detect.sinks.jsonl import read_alarms

    clock = ManualClock(datetime.now(UTC))
    key, thief = key_arn(1), user("thief")
    calls = [denied("Decrypt", clock.now() + timedelta(seconds=n), key, thief) for n in range(2)]
    _write_log(tmp_path, [create_key(clock.now() - timedelta(hours=1), key), calls[0]])
    log = SegmentLog(event_log_dir(tmp_path), writable=True)
    runner = DetectorRunner.open(tmp_path, clock=clock)
    node = SimpleNamespace(detector=runner, audit=SimpleNamespace(log=log), detector_judged=0,
                           alarm_tally=AlarmTally())
    live = asyncio.create_task(detect_live(tmp_path, runner, lambda alarms: None,
                                           lambda offset: setattr(node, "detector_judged", offset)))
    for _ in range(500):
        if calls[0]["eventID"] in runner.detector._seen:
            break
        await asyncio.sleep(0.01)
    log.append([encode(calls[1])])  # answered, then the clock moves at once
    log.sync()
    clock.advance(2 * 3600)
    await node_module._detector_catch_up(cast(node_module.Node, node))
    for _ in range(500):
        if calls[1]["eventID"] in runner.detector._seen:
            break
        await asyncio.sleep(0.01)
    live.cancel()
    await asyncio.gather(live, return_exceptions=True)
    await runner.close()
    log.close()
    delivered = read_alarms(tmp_path / "alarms.jsonl")  # each alarm's latest state delivered
    assert [alarm.count for alarm in delivered.values()] == [2]


async def test_history_audit_import_added_is_judged_as_of_its_end_as_detect_cloudtrail_judges_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Last year's CloudTrail imported: its keys' later calls were never logged here. Judged as of
    the clock, every key of it was idle for months and raised unused-key, the one in use until the
    history ends too; judged as of the history's end, serve raises what `detect --cloudtrail`
    raises over the same files: the key idle for 100 days by then, and a live key idle since."""
    import json

    from keytrail.audit.cloudtrail_files import import_cloudtrail
    from keytrail.cli.detect import run_offline
    from keytrail.clock import ManualClock
    from keytrail.detect import RuleSet

    monkeypatch.setattr(tail, "DETECTOR_TICK_SECONDS", 0.0)
    start, in_use, idle = datetime(2025, 1, 1, tzinfo=UTC), key_arn(31), key_arn(32)
    history = [create_key(start, in_use), create_key(start, idle), event("Decrypt", start, idle),
               *[event("Decrypt", start + timedelta(days=day), in_use) for day in range(0, 200, 5)]]
    trail = tmp_path / "trail.json"
    trail.write_text(json.dumps({"Records": history}))
    data_dir = tmp_path / "node"
    await import_cloudtrail(data_dir, [trail])
    live_key, now = key_arn(33), datetime(2026, 12, 3, tzinfo=UTC)
    answered = create_key(now - timedelta(days=120), live_key)
    log = SegmentLog(event_log_dir(data_dir), writable=True)  # then a call this node answered
    log.append([encode(answered)])
    log.sync()
    log.close()
    runner = DetectorRunner.open(data_dir, clock=ManualClock(now))
    raised = await _detect_until_read(data_dir, runner, answered["eventID"])
    offline = run_offline([trail], RuleSet(), None).alarms
    assert {a.key_arn for a in offline if a.rule == "unused-key"} == {idle}
    assert sorted(a.key_arn or "" for a in raised if a.rule == "unused-key") == sorted([idle, live_key])
