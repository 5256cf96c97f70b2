"""Alarm Avro form, the dispatcher's isolation of slow or failing hooks, the runner's bookkeeping."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import itertools
import json
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, RequestTimedOutError
from tests.support.fifo import outcome_beside_a_fifo
from tests.support.waits import eventually
from tests.unit.detect.records import T0, denied, key_arn, user

from keytrail.detect.alarms import Alarm
from keytrail.detect.avro import ALARM_SCHEMA, decode_alarm, encode_alarm
from keytrail.detect.engine import Detector
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks import Dispatcher
from keytrail.detect.sinks.jsonl import JsonlSink, read_alarms

SCHEMA_FILE = Path(__file__).parents[3] / "schemas" / "alarm.avsc"


def sample_alarm() -> Alarm:
    detector = Detector()
    detector.process([denied("Decrypt", T0, key_arn(1), user("eve"))])
    return detector.alarms()[0]


def test_schema_file_matches_the_code() -> None:
    assert json.loads(SCHEMA_FILE.read_text()) == ALARM_SCHEMA


def test_avro_single_object_round_trip() -> None:
    alarm = sample_alarm()
    data = encode_alarm(alarm)
    assert data[:2] == b"\xc3\x01"
    assert decode_alarm(data) == alarm


class Stuck:
    async def deliver(self, alarm: Alarm) -> None:
        await asyncio.Event().wait()


class StuckUntil:
    """A hook that takes the connection and answers nothing until `freed` is set."""

    def __init__(self, freed: asyncio.Event) -> None:
        self.freed = freed
        self.alarms: list[Alarm] = []

    async def deliver(self, alarm: Alarm) -> None:
        await self.freed.wait()
        self.alarms.append(alarm)


class Broken:
    async def deliver(self, alarm: Alarm) -> None:
        raise RuntimeError("hook down")


class Recorder:
    def __init__(self) -> None:
        self.alarms: list[Alarm] = []

    async def deliver(self, alarm: Alarm) -> None:
        self.alarms.append(alarm)


async def test_a_stuck_or_broken_hook_delays_and_stops_nothing() -> None:
    recorder = Recorder()
    dispatcher = Dispatcher([Stuck(), Broken(), recorder], queue_size=2)
    alarm = sample_alarm()
    for _ in range(5):
        dispatcher.publish(alarm)  # returns at once even though Stuck never finishes
        await asyncio.sleep(0)  # healthy hooks keep up
    await dispatcher.close(timeout=0.5)
    assert len(recorder.alarms) == 5
    assert dispatcher.failed == 5 and dispatcher.dropped >= 2  # Stuck's queue overflowed


async def test_alarms_a_hook_still_holds_after_the_close_drain_are_counted_in_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder()
    dispatcher = Dispatcher([Stuck(), recorder])
    for _ in range(4):
        dispatcher.publish(sample_alarm())
    await asyncio.sleep(0)  # Stuck has taken the first one and hangs on it
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        await dispatcher.close(timeout=0.2)
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "4 alarm(s) not delivered" in line and "Stuck" in line and "Recorder" not in line
    assert len(recorder.alarms) == 4


async def test_runner_does_not_resend_alarms_already_in_alarms_jsonl(tmp_path: Path) -> None:
    records = [denied("Decrypt", T0 + timedelta(seconds=i), key_arn(1), user("eve")) for i in range(3)]
    for _ in range(2):  # the same events twice, as after a restart that re-reads the topic
        runner = DetectorRunner.open(tmp_path)
        await runner.feed(records)
        await runner.close()
    lines = (tmp_path / "alarms.jsonl").read_text().splitlines()
    assert [json.loads(line)["count"] for line in lines] == [1, 3]
    [latest] = read_alarms(tmp_path / "alarms.jsonl").values()
    assert latest.count == 3


def test_a_line_nested_too_deeply_in_alarms_jsonl_or_an_outbox_is_skipped_not_a_failed_start(tmp_path: Path) -> None:
    # json's reader raised RecursionError, past what either reader skipped: the detector could not start.
    from keytrail.detect.sinks.outbox import Outbox

    alarm, deep = sample_alarm(), "[" * 5000 + "]" * 5000
    (tmp_path / "alarms.jsonl").write_text(f"{deep}\n{json.dumps(alarm.to_json())}\n")
    assert list(read_alarms(tmp_path / "alarms.jsonl").values()) == [alarm]
    (tmp_path / "outbox.jsonl").write_text(f"{deep}\n{json.dumps({'queued': alarm.to_json()})}\n")
    assert Outbox(tmp_path / "outbox.jsonl").owed == [alarm]


async def test_jsonl_sink_appends(tmp_path: Path) -> None:
    sink, alarm = JsonlSink(tmp_path / "a" / "alarms.jsonl"), sample_alarm()
    await sink.deliver(alarm)
    await sink.aclose()
    assert list(read_alarms(tmp_path / "a" / "alarms.jsonl").values()) == [alarm]


async def test_jsonl_sink_retries_a_failed_write_until_the_line_is_whole(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "alarms.jsonl"
    sink, alarm = JsonlSink(path, backoff=(0.01, 0.02)), sample_alarm()
    real_write, calls = os.write, []

    def full_disk(fd: int, data: bytes) -> int:  # a short write, two refusals, then space again
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data)[:10])
        if len(calls) <= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    await sink.deliver(alarm)
    await sink.aclose()
    assert len(calls) == 4 and calls[1] == calls[0] - 10  # the rest of the line, not all of it again
    assert list(read_alarms(path).values()) == [alarm]


async def test_a_line_cut_short_by_a_crash_is_skipped_and_the_next_alarm_starts_its_own(tmp_path: Path) -> None:
    path, alarm = tmp_path / "alarms.jsonl", sample_alarm()
    line = json.dumps(alarm.to_json())
    path.write_text(line + "\n" + line[:40])  # the process died in the middle of a line
    sink = JsonlSink(path)
    await sink.deliver(alarm)
    await sink.aclose()
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and lines[1] == line[:40]
    assert list(read_alarms(path).values()) == [alarm]


@pytest.mark.parametrize(("field", "value"), [
    ("firstSeen", 1767225600000),  # epoch milliseconds, as the Avro form (Kafka) carries times
    ("lastSeen", None), ("summary", 5), ("keyArn", ["k"]), ("eventIds", "e1"), ("details", {"keyCount": 3}),
])
def test_a_line_that_is_no_alarm_is_skipped_not_the_start_stopped(tmp_path: Path, field: str, value: Any) -> None:
    # A line whose field had the wrong type (hand-edited, or alarms decoded from Kafka's Avro written
    # back) raised at the start, so the detector, restarted again and again, sent no alarm at all.
    path, alarm = tmp_path / "alarms.jsonl", sample_alarm()
    line = json.dumps(alarm.to_json())
    path.write_text(json.dumps(alarm.to_json() | {"alarmId": "other", field: value}) + "\n" + line + "\n")
    assert list(read_alarms(path).values()) == [alarm]


def test_lines_that_are_no_json_object_are_skipped(tmp_path: Path) -> None:
    path, alarm = tmp_path / "alarms.jsonl", sample_alarm()
    junk = ("true", "5", "[]", '"text"', "null")
    path.write_text("".join(f"{line}\n" for line in junk) + json.dumps(alarm.to_json()))
    assert list(read_alarms(path).values()) == [alarm]


@pytest.mark.parametrize("away", ["moved", "deleted"])
async def test_alarms_jsonl_moved_or_deleted_while_running_is_written_again(tmp_path: Path, away: str) -> None:
    # An operator rotating or clearing the file (logrotate, mv, rm) while the detector runs: the
    # next alarms went on into the moved file (or, deleted, nowhere), none where `tail -f` and the
    # next start read them.
    path, alarm = tmp_path / "alarms.jsonl", sample_alarm()
    sink = JsonlSink(path)
    await sink.deliver(alarm)
    if away == "moved":
        path.rename(tmp_path / "alarms.jsonl.1")
    else:
        path.unlink()
    later = dataclasses.replace(alarm, count=2)
    await sink.deliver(later)
    await sink.aclose()
    assert list(read_alarms(path).values()) == [later]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if away == "moved":
        assert list(read_alarms(tmp_path / "alarms.jsonl.1").values()) == [alarm]


def test_a_fifo_in_place_of_alarms_jsonl_is_named_not_waited_on(tmp_path: Path) -> None:
    # Opened as it came, a FIFO (whoever can write the data dir can make one) kept serve's start,
    # which reads what the detector delivered, and the detector's, waiting for a writer forever.
    path = tmp_path / "alarms.jsonl"
    os.mkfifo(path)
    outcome = [*outcome_beside_a_fifo(path, lambda: read_alarms(path)),
               *outcome_beside_a_fifo(path, lambda: JsonlSink(path))]
    assert [(exc.filename, exc.strerror) for exc in outcome if isinstance(exc, OSError)] == [
        (str(path), "not a regular file (a FIFO, a device or a socket in a file's place)")] * 2


def test_kafka_decoder_skips_what_it_cannot_read_and_keeps_the_rest() -> None:
    from keytrail.detect.sources import default_decoder

    values = [b'{"eventName": "Decrypt"}', b"\xc3\x01 not avro", b"not json", b'{"eventName": "Encrypt"}']
    assert [r["eventName"] for r in default_decoder()(values)] == ["Decrypt", "Encrypt"]


async def test_runner_ticks_on_the_injected_clock_as_serve_dev_clock_does(tmp_path: Path) -> None:
    from tests.unit.detect.records import create_key

    from keytrail.clock import ManualClock

    clock = ManualClock(T0)
    runner = DetectorRunner.open(tmp_path, clock=clock)
    await runner.feed([create_key(T0, key_arn(9))])
    assert await runner.tick() == []
    clock.advance(timedelta(days=91).total_seconds())
    [alarm] = await runner.tick()
    await runner.close()
    assert (alarm.rule, alarm.key_arn) == ("unused-key", key_arn(9))
    assert list(read_alarms(tmp_path / "alarms.jsonl")) == [alarm.alarm_id]


def _spells(keys: int) -> list[dict[str, Any]]:
    """Three denied Decrypts on each of `keys` keys, two hours apart: one unauthorized-decrypt
    alarm per key (count 3), each window (1 h) closed before the next key's starts."""
    return [denied("Decrypt", T0 + timedelta(hours=2 * n, minutes=i), key_arn(100 + n), user("eve"))
            for n in range(keys) for i in range(3)]


def _lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "alarms.jsonl").read_text().splitlines()


END = T0 + timedelta(days=2)  # past every window of _spells(20)


async def test_a_long_running_runner_remembers_only_the_alarms_it_still_holds(tmp_path: Path) -> None:
    runner = DetectorRunner.open(tmp_path)
    runner.caught_up()
    records = _spells(40)
    for start in range(0, len(records), 3):  # a tick after each key's spell, as serve's detector ticks
        await runner.feed(records[start : start + 3])
        await runner.tick(T0 + timedelta(hours=2 * (start // 3) + 1, minutes=30))
        assert runner.remembered() <= 1
    await runner.close()
    assert len(_lines(tmp_path)) == 80  # each alarm raised (count 1), then its count 3 at the tick


async def test_a_restart_resends_nothing_and_then_remembers_only_what_the_detector_holds(tmp_path: Path) -> None:
    records = _spells(20)
    first = DetectorRunner.open(tmp_path)
    await first.feed(records)
    first.caught_up()
    await first.tick(END)
    await first.close()
    delivered = _lines(tmp_path)
    second = DetectorRunner.open(tmp_path)  # the replay: the same events again
    assert second.remembered() == 20
    await second.feed(records[:30])
    await second.tick(T0 + timedelta(hours=20, minutes=30))  # the dev clock may tick mid-replay
    await second.feed(records[30:])
    second.caught_up()
    await second.tick(END)
    assert second.remembered() == 0  # every window closed, its latest state delivered (by the first run)
    await second.close()
    assert _lines(tmp_path) == delivered


async def test_alarms_the_replay_no_longer_sees_are_forgotten_once_it_is_over(tmp_path: Path) -> None:
    records = _spells(20)
    first = DetectorRunner.open(tmp_path)
    await first.feed(records)
    await first.close()
    delivered = _lines(tmp_path)
    second = DetectorRunner.open(tmp_path)
    await second.feed(records[30:])  # retention deleted the events of the first ten keys
    await second.tick(END)
    assert second.remembered() == 10  # before the replay is over, the first ten keys' alarms may still come
    second.caught_up()
    await second.tick(END)
    assert second.remembered() == 0
    await second.close()
    assert _lines(tmp_path) == delivered


async def test_a_time_rule_alarm_is_not_resent_after_a_restart(tmp_path: Path) -> None:
    from tests.unit.detect.records import create_key

    records, later = [create_key(T0, key_arn(9))], T0 + timedelta(days=91)
    for run in range(2):
        runner = DetectorRunner.open(tmp_path)
        await runner.feed(records)
        runner.caught_up()
        raised = await runner.tick(later)
        await runner.close()
        assert [alarm.rule for alarm in raised] == (["unused-key"] if run == 0 else [])
    assert len(_lines(tmp_path)) == 1


def _runner(tmp_path: Path, hook: Any) -> DetectorRunner:
    """A runner as `DetectorRunner.open` makes one, with `hook` for its one hook besides alarms.jsonl."""
    from keytrail.detect.sinks.outbox import Outbox

    return DetectorRunner(Detector(), [JsonlSink(tmp_path / "alarms.jsonl"), hook],
                          read_alarms(tmp_path / "alarms.jsonl"), [None, Outbox(tmp_path / "alarm-outbox-hook.jsonl")])


async def _killed(runner: DetectorRunner) -> None:
    """What kill -9 leaves: nothing of the runner runs on, nothing is drained or closed."""
    for worker in runner.dispatcher._workers:
        worker.cancel()
    await asyncio.gather(*runner.dispatcher._workers, return_exceptions=True)


async def test_an_alarm_a_hook_had_not_taken_when_the_detector_was_killed_reaches_it_after_the_restart(
    tmp_path: Path,
) -> None:
    records = [denied("Decrypt", T0 + timedelta(seconds=i), key_arn(1), user("eve")) for i in range(3)]
    first = _runner(tmp_path, Stuck())  # the broker is down: the hook holds the alarm, retrying
    [raised] = await first.feed(records)
    await eventually(lambda: _lines(tmp_path), what="the alarm in alarms.jsonl")  # a restart announces it no more
    await _killed(first)
    hook = Recorder()
    second = _runner(tmp_path, hook)
    assert await second.feed(records) == []  # the replay raises it again, and alarms.jsonl says it went out
    await second.close()  # sends the alarm's latest count, which the first run had not announced
    assert hook.alarms[0] == raised and [(a.alarm_id, a.count) for a in hook.alarms[1:]] == [(raised.alarm_id, 3)]
    assert [json.loads(line)["count"] for line in _lines(tmp_path)] == [1, 3]


async def test_a_hook_that_took_everything_is_owed_nothing_after_a_restart(tmp_path: Path) -> None:
    records = [denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(1), user("eve")) for i in range(3)]
    first, hook = _runner(tmp_path, Recorder()), Recorder()
    await first.feed(records)
    await first.close()
    assert (tmp_path / "alarm-outbox-hook.jsonl").read_text() == ""  # holds what is in flight, not the history
    second = _runner(tmp_path, hook)
    await second.feed(records)
    await second.close()
    assert hook.alarms == []


async def test_alarms_left_by_the_close_drain_are_sent_at_the_next_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = [denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve")) for i in range(3)]
    first = _runner(tmp_path, Stuck())
    raised = await first.feed(records)
    await asyncio.sleep(0.05)
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        await first.dispatcher.close(timeout=0.2)
    assert "Stuck (kept for the next start) 3" in caplog.text
    hook = Recorder()
    await _runner(tmp_path, hook).close()  # no event read yet: what is owed goes first
    assert hook.alarms == raised


def test_reading_alarms_jsonl_at_start_holds_the_latest_states_not_the_file(tmp_path: Path) -> None:
    """An alarm open for months adds a line at each tick its count changed: the file grows without
    bound, and the detector's start read it whole (twice its size in memory)."""
    import dataclasses
    import tracemalloc

    path, alarm = tmp_path / "alarms.jsonl", sample_alarm()
    with path.open("w") as file:
        for count in range(1, 20_001):
            file.write(json.dumps(dataclasses.replace(alarm, count=count).to_json()) + "\n")
    tracemalloc.start()
    try:
        latest = read_alarms(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [(a.alarm_id, a.count) for a in latest.values()] == [(alarm.alarm_id, 20_000)]
    assert peak < path.stat().st_size / 10, (peak, path.stat().st_size)


class Outage:
    """A hook that is down until `up` is set: every delivery raises HookDown, as the real ones do
    once their attempts have found no broker or receiver."""

    def __init__(self, *, reached: bool = True) -> None:
        self.up, self.reached = False, reached  # reached: it answers (a 503), rather than refusing connections
        self.calls = 0
        self.alarms: list[Alarm] = []
        self.tried: list[str] = []

    async def deliver(self, alarm: Alarm) -> None:
        from keytrail.detect.sinks import HookDown

        self.calls += 1
        self.tried.append(alarm.alarm_id)
        if not self.up:
            raise HookDown("HTTP 503", reached=self.reached)
        self.alarms.append(alarm)


def _alarms(count: int) -> list[Alarm]:
    return Detector().process([denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve"))
                               for i in range(count)])


async def test_a_hook_that_is_down_holds_its_alarms_within_the_queue_bound_and_probes_with_backoff(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hook, alarms = Outage(), _alarms(8)
    # The probes of the head only: the tries of the alarms behind it are the next tests'.
    dispatcher = Dispatcher([hook], queue_size=5, pause=(0.01, 0.04), send_ahead_after=10**9)
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        for alarm in alarms:
            dispatcher.publish(alarm)
        await asyncio.sleep(0.3)
        probes = hook.calls
        assert 4 <= probes <= 12  # backoff up to 0.04 s, not a call per alarm or a busy loop
        hook.up = True
        await dispatcher.close(timeout=2)
    # the five the queue took (all published before its worker took one), in order; three dropped
    assert hook.alarms == alarms[:5] and dispatcher.dropped == 3 and dispatcher.failed == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is down" in m for m in messages) == 1 and sum("Outage is back" in m for m in messages) == 1
    assert sum("is full" in m for m in messages) == 1  # one line per overflow, not one per alarm dropped


class Choking(Outage):
    """A hook that is up but fails on the alarms in `chokes_on` as being down, as a receiver that
    answers 503 to one payload (or a broker that hangs up on it) does."""

    def __init__(self, chokes_on: set[str]) -> None:
        super().__init__()
        self.up, self.chokes_on = True, chokes_on

    async def deliver(self, alarm: Alarm) -> None:
        from keytrail.detect.sinks import HookDown

        if alarm.alarm_id in self.chokes_on:
            self.tried.append(alarm.alarm_id)
            raise HookDown(f"HTTP 503; alarm {alarm.alarm_id} not delivered", reached=True)
        await super().deliver(alarm)


async def test_an_alarm_a_hook_that_is_up_fails_on_as_down_is_given_up_on_and_the_rest_go_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    alarms = _alarms(4)
    hook = Choking({alarms[1].alarm_id})
    dispatcher = Dispatcher([hook], pause=(0.01, 0.02), send_ahead_after=2)
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        for alarm in alarms:
            dispatcher.publish(alarm)
        await dispatcher.close(timeout=5)
    assert hook.alarms == [alarms[0], alarms[2], alarms[3]] and dispatcher.failed == 1
    # its attempt, two probes, the second followed by a try of the one behind it, which goes out;
    # the head once more, failing (one strike), the next one behind at once, taken; the head once
    # more, failing again (the second strike): given up on, and the two taken ahead not sent twice
    ids = [a.alarm_id for a in alarms]
    assert hook.tried == [ids[0], ids[1], ids[1], ids[1], ids[2], ids[1], ids[3], ids[1]]
    [line] = [r.getMessage() for r in caplog.records if "given up on" in r.getMessage()]
    assert f"took alarm {ids[3]} but keeps failing on alarm {ids[1]}" in line


class Flapping(Outage):
    """A receiver behind a load balancer in a rolling restart: up, but every delivery in `fails`
    (counted from 1) answered 503, whatever the alarm."""

    def __init__(self, fails: set[int]) -> None:
        super().__init__()
        self.up, self.fails = True, fails

    async def deliver(self, alarm: Alarm) -> None:
        from keytrail.detect.sinks import HookDown

        if self.calls + 1 in self.fails:
            self.calls += 1
            self.tried.append(alarm.alarm_id)
            raise HookDown("HTTP 503", reached=True)
        await super().deliver(alarm)


async def test_a_flapping_receiver_that_fails_the_head_once_after_taking_an_alarm_behind_loses_nothing() -> None:
    """The head fails its attempt and probes, the alarm behind is taken, the head's next try gets
    another 503 (the instance it hit restarting): one strike only. The one behind that is taken,
    and the head's next try gets through: delivered, nothing given up, nothing sent twice."""
    alarms = _alarms(4)
    hook = Flapping({1, 2, 3, 5})  # the head's attempt and two probes; the head's try after one taken
    dispatcher = Dispatcher([hook], pause=(0.01, 0.02), send_ahead_after=2)
    for alarm in alarms:
        dispatcher.publish(alarm)
    await dispatcher.close(timeout=5)
    assert dispatcher.failed == 0
    assert hook.alarms == [alarms[1], alarms[2], alarms[0], alarms[3]]


async def test_a_head_struck_once_with_nothing_more_behind_waits_and_is_given_up_once_another_alarm_comes(
) -> None:
    """One alarm behind the head, taken ahead, and the head fails again: one strike, not enough. It
    waits (probed as when down) until a new alarm comes, which is taken ahead; the head failing
    once more is then given up on."""
    head, behind, new = _alarms(3)
    hook = Choking({head.alarm_id})
    dispatcher = Dispatcher([hook], pause=(0.01, 0.02), send_ahead_after=0)
    dispatcher.publish(head)
    dispatcher.publish(behind)
    # struck once, then probed: not given up (a regression giving it up tries it no more: it fails here)
    await eventually(lambda: hook.tried.count(head.alarm_id) >= 6, what="six tries of the head")
    assert hook.alarms == [behind] and dispatcher.failed == 0
    dispatcher.publish(new)
    await dispatcher.close(timeout=5)
    assert hook.alarms == [behind, new] and dispatcher.failed == 1


@pytest.mark.parametrize("reached", [True, False])
async def test_a_hook_really_down_gives_nothing_up_and_keeps_the_order(reached: bool) -> None:
    hook, alarms = Outage(reached=reached), _alarms(6)
    dispatcher = Dispatcher([hook], pause=(0.01, 0.02), send_ahead_after=0)
    for alarm in alarms:
        dispatcher.publish(alarm)
    # ten rounds of the head and the three behind it, or forty probes of the head
    await eventually(lambda: hook.calls >= 40, what="forty deliveries tried at the hook that is down")
    hook.up = True
    await dispatcher.close(timeout=5)
    assert hook.alarms == alarms and dispatcher.failed == 0
    # Only a hook that answers (503) may fail on one alarm alone: one refusing connections has
    # nothing behind its head tried, as every alarm would fail the same way.
    assert set(hook.tried[:40]) == ({a.alarm_id for a in alarms[:4]} if reached else {alarms[0].alarm_id})


async def test_a_hook_gone_out_of_reach_after_taking_the_alarm_behind_gives_the_head_nothing_up() -> None:
    """The head's second chance found the hook out of reach (its connection refused): that is the
    hook down, not an alarm it fails on, and the head is not given up."""
    from keytrail.detect.sinks import HookDown

    head, behind, last = _alarms(3)

    class GoneAfterOne(Choking):
        refused = 0

        async def deliver(self, alarm: Alarm) -> None:
            if self.alarms and not self.up:
                self.refused += 1
                raise HookDown("connection refused", reached=False)
            await super().deliver(alarm)
            if alarm is behind:
                self.up, self.chokes_on = False, set()  # gone, and fine with the head once back

    hook = GoneAfterOne({head.alarm_id})
    dispatcher = Dispatcher([hook], pause=(0.01, 0.02), send_ahead_after=0)
    for alarm in (head, behind, last):
        dispatcher.publish(alarm)
    # the head's second chance, then probes, the hook out of reach
    await eventually(lambda: hook.refused >= 3, what="three deliveries refused by the hook gone out of reach")
    hook.up = True
    await dispatcher.close(timeout=5)
    assert hook.alarms == [behind, head, last] and dispatcher.failed == 0


async def test_an_alarm_taken_ahead_is_not_sent_again_but_a_later_state_of_it_is(tmp_path: Path) -> None:
    import dataclasses

    from keytrail.detect.sinks.outbox import Outbox

    head, behind, other = _alarms(3)  # two behind the head: it is given up on after both were taken
    hook = Choking({head.alarm_id})
    dispatcher = Dispatcher([hook], outboxes=[Outbox(tmp_path / "outbox.jsonl")], pause=(0.01, 0.02),
                            send_ahead_after=0)
    for alarm in (head, behind, other):
        dispatcher.publish(alarm)
    await eventually(lambda: behind in hook.alarms, what="the alarm behind the head taken ahead of it")
    later = dataclasses.replace(behind, count=behind.count + 1)
    dispatcher.publish(later)  # the next tick's count, while the first state is still queued
    await dispatcher.close(timeout=5)
    assert hook.alarms == [behind, other, later] and dispatcher.failed == 1
    assert Outbox(tmp_path / "outbox.jsonl").owed == []  # both handled: nothing owed after a restart


async def test_an_alarm_taken_ahead_is_not_owed_to_the_hook_after_a_restart_before_its_turn(
    tmp_path: Path,
) -> None:
    """The node is stopped while the head still holds the hook: the alarm taken ahead of it is
    recorded as handled in the outbox, so the next start sends the head (still owed) and the one
    behind the taken one, not the taken one again."""
    from keytrail.detect.sinks.outbox import Outbox

    head, behind, last = _alarms(3)
    hook = Choking({head.alarm_id, last.alarm_id})  # the third fails too: the head is struck once only
    dispatcher = Dispatcher([hook], outboxes=[Outbox(tmp_path / "outbox.jsonl")], pause=(0.01, 30.0),
                            send_ahead_after=0)
    for alarm in (head, behind, last):
        dispatcher.publish(alarm)
    await eventually(lambda: behind in hook.alarms and hook.tried.count(head.alarm_id) >= 3,
                     what="the alarm behind the head taken ahead of it, and the head struck")
    await dispatcher.close(timeout=0.05)  # the drain cut off: the head and the last still owed
    assert hook.alarms == [behind] and dispatcher.failed == 0
    reopened = Outbox(tmp_path / "outbox.jsonl")
    assert [a.alarm_id for a in reopened.owed] == [head.alarm_id, last.alarm_id]
    reopened.close()
    hook = Recorder()
    restarted = Dispatcher([hook], outboxes=[Outbox(tmp_path / "outbox.jsonl")])
    await restarted.close(timeout=5)
    assert [a.alarm_id for a in hook.alarms] == [head.alarm_id, last.alarm_id]  # behind: not sent twice


async def test_closing_with_a_hook_down_ends_at_the_drain_timeout_and_its_outbox_keeps_the_alarms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from keytrail.detect import sinks
    from keytrail.detect.sinks.outbox import Outbox

    monkeypatch.setattr(sinks, "DRAIN_STALLED_SECONDS", 3600.0)  # the drain timeout ends it, not a stall
    alarms, outage = _alarms(3), Outage()
    dispatcher = Dispatcher([outage], outboxes=[Outbox(tmp_path / "outbox.jsonl")], pause=(30.0, 30.0))
    for alarm in alarms:
        dispatcher.publish(alarm)
    await eventually(lambda: outage.calls, what="the first delivery")  # down, and pausing 30 s before its next probe
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        await dispatcher.close(timeout=0.3)
    assert outage.calls == 1  # the close did not wait out the pause for the next probe
    assert "Outage (down; kept for the next start) 3" in caplog.text
    hook = Recorder()
    await Dispatcher([hook], outboxes=[Outbox(tmp_path / "outbox.jsonl")]).close()
    assert hook.alarms == alarms


async def test_the_close_counts_alarms_not_states_of_a_hook_down_as_the_next_start_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A later state of the alarm being tried (its count at a tick) waits behind it: it was counted
    as one more alarm at the close, which said 2 where the next start said the outbox holds 1."""
    from keytrail.detect import sinks
    from keytrail.detect.sinks.outbox import Outbox, warn_of_stale

    monkeypatch.setattr(sinks, "DRAIN_STALLED_SECONDS", 3600.0)
    [alarm], outage = _alarms(1), Outage()
    dispatcher = Dispatcher([outage], outboxes=[Outbox(tmp_path / "alarm-outbox-x.jsonl")], pause=(30.0, 30.0))
    dispatcher.publish(alarm)
    await eventually(lambda: outage.calls, what="the first delivery")
    dispatcher.publish(dataclasses.replace(alarm, count=alarm.count + 1))
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        await dispatcher.close(timeout=0.3)
        warn_of_stale(tmp_path, [])
    assert "1 alarm(s) not delivered" in caplog.text and "Outage (down; kept for the next start) 1" in caplog.text
    assert "holds 1 alarm(s) owed to hook x" in caplog.text


class Slow:
    """A hook that is up and takes each alarm after `seconds`."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.alarms: list[Alarm] = []

    async def deliver(self, alarm: Alarm) -> None:
        await asyncio.sleep(self.seconds)
        self.alarms.append(alarm)


async def test_closing_ends_the_drain_of_a_hook_that_takes_nothing_and_its_outbox_keeps_the_alarms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that takes the connection and never answers: the hook's first delivery is still
    inside its attempts, so it is not known to be down, and `serve`'s stop waited the whole drain."""
    from keytrail.detect import sinks
    from keytrail.detect.sinks.outbox import Outbox

    monkeypatch.setattr(sinks, "DRAIN_STALLED_SECONDS", 0.2)
    alarms, slow, freed = _alarms(6), Slow(0.05), asyncio.Event()
    asyncio.get_running_loop().call_later(30, freed.set)  # a close waiting past the stall sees it take them all
    outboxes = [Outbox(tmp_path / "stuck.jsonl"), Outbox(tmp_path / "slow.jsonl")]
    dispatcher = Dispatcher([StuckUntil(freed), slow], outboxes=outboxes)
    for alarm in alarms:
        dispatcher.publish(alarm)
    with caplog.at_level("WARNING", logger="keytrail.detect.sinks"):
        await dispatcher.close(timeout=60)
    assert slow.alarms == alarms  # 0.3 s in all, past the stall time: a hook taking alarms is waited for
    assert "StuckUntil (kept for the next start) 6" in caplog.text and "Slow" not in caplog.text
    hook = Recorder()
    await Dispatcher([hook], outboxes=[Outbox(tmp_path / "stuck.jsonl")]).close()
    assert hook.alarms == alarms


def test_an_outbox_whose_queue_never_empties_stays_bounded(tmp_path: Path) -> None:
    """Emptied only when the hook's queue is: a hook back from an outage while alarms keep coming
    never drains, and the file took a line for every alarm queued and handled since."""
    import dataclasses

    from keytrail.detect.sinks.outbox import COMPACT_LINES, Outbox

    path, alarm = tmp_path / "outbox.jsonl", sample_alarm()
    outbox = Outbox(path)
    states = [dataclasses.replace(alarm, alarm_id=f"alarm-{n}", count=n + 1) for n in range(5 * COMPACT_LINES)]
    outbox.queued(states[0])
    for previous, state in itertools.pairwise(states):  # one queued behind the one being handled, always
        outbox.queued(state)
        outbox.handled(previous, drained=False)
        assert len(path.read_text().splitlines()) <= COMPACT_LINES + 1
    outbox.queued(dataclasses.replace(states[-1], count=10**6))  # a later state of the last one
    outbox.close()
    assert [(a.alarm_id, a.count) for a in Outbox(path).owed] == [(states[-1].alarm_id, 10**6)]


async def test_updates_of_an_alarm_waiting_for_a_hook_that_is_down_take_no_more_room(tmp_path: Path) -> None:
    """An open alarm's count changes at every tick: during an outage each update took a place in the
    hook's queue and a line in its outbox, and after a while the queue had no room for new alarms."""
    import dataclasses

    from keytrail.detect.sinks.outbox import COMPACT_LINES, Outbox

    hook, path = Outage(), tmp_path / "outbox.jsonl"
    head, first, second = _alarms(3)
    dispatcher = Dispatcher([hook], queue_size=2, outboxes=[Outbox(path)], pause=(0.01, 0.02))
    dispatcher.publish(head)  # the one the worker holds, probing the hook with it
    await asyncio.sleep(0.05)
    dispatcher.publish(first)
    dispatcher.publish(second)
    updates = [dataclasses.replace(first, count=count) for count in range(2, 3 * COMPACT_LINES)]
    for update in updates:  # a tick's update each
        dispatcher.publish(update)
    assert dispatcher.dropped == 0 and len(path.read_text().splitlines()) <= COMPACT_LINES + 1
    hook.up = True
    await dispatcher.close(timeout=2)
    assert hook.alarms == [head, updates[-1], second]  # the latest state, in the first one's place


async def test_the_head_a_hook_that_was_down_gets_is_its_latest_state_once(tmp_path: Path) -> None:
    """Updates of the alarm the worker held, probing the hook with it, were queued behind: the hook
    back got the head in the state it was taken in, then again in its latest (docs: each waiting
    alarm once, in its latest state)."""
    import dataclasses

    from keytrail.detect.sinks.outbox import Outbox

    hook, path = Outage(), tmp_path / "outbox.jsonl"
    head, other = _alarms(2)
    dispatcher = Dispatcher([hook], outboxes=[Outbox(path)], pause=(0.01, 0.02))
    dispatcher.publish(head)
    await asyncio.sleep(0.05)  # the worker holds it, probing
    updates = [dataclasses.replace(head, count=count) for count in (2, 3)]
    for update in updates:
        dispatcher.publish(update)
    dispatcher.publish(other)
    await asyncio.sleep(0.05)
    hook.up = True
    await asyncio.sleep(0.1)
    dispatcher.publish(later := dataclasses.replace(head, count=4))  # after it went out: sent as ever
    await dispatcher.close(timeout=2)
    assert hook.alarms == [updates[-1], other, later]
    assert Outbox(path).owed == []


class StuckOn(Outage):
    """Down until `up` is set; then takes every alarm but those of `stuck`, on which it hangs."""

    def __init__(self, stuck: set[str]) -> None:
        super().__init__()
        self.stuck = stuck

    async def deliver(self, alarm: Alarm) -> None:
        if self.up and alarm.alarm_id in self.stuck:
            await asyncio.Event().wait()
        await super().deliver(alarm)


async def test_the_latest_state_a_hook_back_got_as_its_head_is_not_owed_to_it_after_a_restart(
    tmp_path: Path,
) -> None:
    """The hook back from an outage got the head in its latest state (queued behind another alarm);
    the node stopped before that state's turn (the drain cut off on the other one). The outbox said
    only the head's first state was handled, so the next start sent the latest state again."""
    import dataclasses

    from keytrail.detect.sinks.outbox import Outbox

    head, other = _alarms(2)
    hook, path = StuckOn({other.alarm_id}), tmp_path / "outbox.jsonl"
    dispatcher = Dispatcher([hook], outboxes=[Outbox(path)], pause=(0.01, 0.02))
    dispatcher.publish(head)
    await asyncio.sleep(0.05)  # the worker holds it, probing
    dispatcher.publish(other)
    dispatcher.publish(update := dataclasses.replace(head, count=2))  # a tick's count, queued behind the other
    hook.up = True
    await eventually(lambda: hook.alarms == [update], what="the head delivered in its latest state")
    await dispatcher.close(timeout=0.1)  # stuck on the other: the drain cut off before the update's turn
    assert [(a.alarm_id, a.count) for a in Outbox(path).owed] == [(other.alarm_id, other.count)]


async def test_the_outbox_of_a_hook_no_longer_configured_is_warned_of_once_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook removed from the settings (or a detector started without serve's --mqtt) left its
    outbox unread and unsaid: the alarms it was owed were never sent, and nobody knew."""
    from keytrail.detect.sinks.outbox import Outbox

    stale, empty = tmp_path / "alarm-outbox-mqtt.jsonl", tmp_path / "alarm-outbox-webhook-0123456789abcdef.jsonl"
    outbox = Outbox(stale)
    for alarm in _alarms(2):
        outbox.queued(alarm)
    outbox.close()
    Outbox(empty).close()  # a hook removed with nothing owed
    with caplog.at_level("WARNING"):
        runner = DetectorRunner.open(tmp_path, hooks=HooksConfig(kafka="127.0.0.1:1"))  # kafka's is its own
        await runner.dispatcher.close(timeout=0)
    [line] = [r.getMessage() for r in caplog.records if "no longer configured" in r.getMessage()]
    assert line.startswith(f"{stale} holds 2 alarm(s) owed to hook mqtt, which is no longer configured")
    assert len(Outbox(stale).owed) == 2  # left as it was: configured again, the hook gets them


async def test_a_fifo_named_as_an_outbox_is_warned_of_not_waited_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Read as it came, a FIFO named as an outbox (whoever can write the data dir can make one)
    held the detector's start, in serve's process under --dev-clock, for a writer forever."""
    from keytrail.detect.sinks.outbox import Outbox

    fifo = tmp_path / "alarm-outbox-mqtt.jsonl"
    os.mkfifo(fifo)

    async def open_and_close() -> None:  # warns of the outbox of a hook not configured
        await DetectorRunner.open(tmp_path).dispatcher.close(timeout=0)

    with caplog.at_level("WARNING"):
        outcome = [*outcome_beside_a_fifo(fifo, lambda: asyncio.run(open_and_close())),
                   *outcome_beside_a_fifo(fifo, lambda: Outbox(fifo))]
    refused = "not a regular file (a FIFO, a device or a socket in a file's place)"
    [warning] = [r.getMessage() for r in caplog.records if "no longer configured" in r.getMessage()]
    assert warning.startswith(f"{fifo}: the outbox of a hook no longer configured, unreadable (") and refused in warning
    assert [(exc.filename, exc.strerror) for exc in outcome if isinstance(exc, OSError)] == [(str(fifo), refused)]


def test_a_fifo_in_place_of_a_dead_letter_file_is_named_not_written_into(tmp_path: Path) -> None:
    # Written into, a FIFO (whoever can write the data dir can make one) held the hook, and every
    # alarm queued behind, for a reader forever.
    from keytrail.detect.sinks.dead_letter import DeadLetters

    path = tmp_path / "alarm-dead-letter-kafka.jsonl"
    os.mkfifo(path)
    outcome = outcome_beside_a_fifo(path, lambda: DeadLetters(path, "Kafka").add(sample_alarm(), "refused", 3))
    assert [(exc.filename, exc.strerror) for exc in outcome if isinstance(exc, OSError)] == [
        (str(path), "not a regular file (a FIFO, a device or a socket in a file's place)")]
    path.unlink()
    alarm = sample_alarm()
    DeadLetters(path, "Kafka").add(alarm, "refused", 3)
    assert json.loads(path.read_text())["alarmId"] == alarm.alarm_id


class FakeProducer:
    """aiokafka's producer, connected: `start` succeeds (unless `unreachable`) and each record's
    send future resolves, or raises `timeout` for a record in `times_out` (the broker never
    acknowledging it): RequestTimedOutError, as aiokafka fails a produce request left unanswered
    (tests/integration/test_detect_kafka.py has it through a proxy), or KafkaTimeoutError, a batch
    expiring unsent."""

    times_out: set[bytes] = set()
    timeout: type[Exception] = Exception
    unreachable = False
    sent: list[bytes] = []

    def __init__(self, **_: object) -> None:
        pass

    async def start(self) -> None:
        from aiokafka.errors import KafkaConnectionError

        if FakeProducer.unreachable:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")

    async def stop(self) -> None:
        pass

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if value in FakeProducer.times_out:
            future.set_exception(FakeProducer.timeout())
        else:
            future.set_result(None)
            FakeProducer.sent.append(value)
        await future


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    monkeypatch.setattr("keytrail.detect.sinks.kafka.AIOKafkaProducer", FakeProducer)
    monkeypatch.setattr(FakeProducer, "times_out", set())
    monkeypatch.setattr(FakeProducer, "sent", [])
    monkeypatch.setattr(FakeProducer, "unreachable", False)
    monkeypatch.setattr(FakeProducer, "timeout", RequestTimedOutError)
    return FakeProducer


@pytest.mark.parametrize("timeout", [RequestTimedOutError, KafkaTimeoutError])
async def test_a_kafka_record_timing_out_alone_while_the_broker_takes_the_others_is_dead_lettered(
    fake_producer: type[FakeProducer], tmp_path: Path, timeout: type[Exception],
) -> None:
    """A record that times out by itself on a connected producer is the Kafka hook down, reached:
    once the broker took two alarms behind it and it timed out again after each, it is given up
    on (dead-lettered by alarmId), and the others go out once each, in order."""
    from keytrail.detect.sinks.kafka import KafkaSink

    alarms = _alarms(4)
    fake_producer.times_out, fake_producer.timeout = {encode_alarm(alarms[1])}, timeout
    sink = KafkaSink("127.0.0.1:9092", attempts=2, backoff=0.001, dead_letter=tmp_path / "dead.jsonl")
    dispatcher = Dispatcher([sink], pause=(0.01, 0.02), send_ahead_after=1)
    for alarm in alarms:
        dispatcher.publish(alarm)
    await dispatcher.close(timeout=5)
    assert fake_producer.sent == [encode_alarm(alarms[i]) for i in (0, 2, 3)] and dispatcher.failed == 1
    [letter] = [json.loads(line) for line in (tmp_path / "dead.jsonl").read_text().splitlines()]
    assert letter["alarmId"] == alarms[1].alarm_id and letter["hook"] == "Kafka"


@pytest.mark.parametrize("unreachable", [False, True])
async def test_a_kafka_broker_timing_out_every_record_or_out_of_reach_gives_nothing_up(
    fake_producer: type[FakeProducer], tmp_path: Path, unreachable: bool,
) -> None:
    """Every record timing out (a broker that takes nothing), or no broker at all: the alarms
    behind the head fail too, so nothing is given up; once the broker is back, all go out in order."""
    from keytrail.detect.sinks.kafka import KafkaSink

    alarms = _alarms(5)
    fake_producer.times_out = set() if unreachable else {encode_alarm(a) for a in alarms}
    fake_producer.unreachable = unreachable
    sink = KafkaSink("127.0.0.1:9092", attempts=2, backoff=0.001, dead_letter=tmp_path / "dead.jsonl")
    dispatcher = Dispatcher([sink], pause=(0.01, 0.02), send_ahead_after=0)
    for alarm in alarms:
        dispatcher.publish(alarm)
    for _ in range(30):  # probes of the head, each (when reached) followed by tries of those behind
        await asyncio.sleep(0.01)
    fake_producer.times_out, fake_producer.unreachable = set(), False
    await dispatcher.close(timeout=5)
    assert fake_producer.sent == [encode_alarm(a) for a in alarms] and dispatcher.failed == 0
    assert not (tmp_path / "dead.jsonl").exists()


async def test_an_open_alarm_whose_first_events_retention_deleted_is_not_paged_again_after_a_restart(
        tmp_path: Path) -> None:
    records = [denied("Decrypt", T0 + timedelta(minutes=i), key_arn(7), user("eve")) for i in range(3)]
    first = DetectorRunner.open(tmp_path)
    [raised] = await first.feed(records)
    await first.close()
    second = DetectorRunner.open(tmp_path)
    assert await second.feed(records[1:]) == []  # the replay: retention deleted the first event
    later = denied("Decrypt", T0 + timedelta(minutes=10), key_arn(7), user("eve"))
    await second.feed([later])
    second.caught_up()
    await second.tick(T0 + timedelta(minutes=11))
    await second.close()
    alarms = read_alarms(tmp_path / "alarms.jsonl")
    assert list(alarms) == [raised.alarm_id]  # the same incident, told under its first id only
    assert alarms[raised.alarm_id].count == 4  # the three the first run counted, and the new one
    assert alarms[raised.alarm_id].first_seen == T0


def test_a_rewrite_of_an_outbox_killed_midway_leaves_no_temp_file_once_old(tmp_path: Path) -> None:
    """The outbox is rewritten whole through a temp file named for the detector's pid: a kill -9
    mid-rewrite left it beside the outbox for good, one per kill. The detector's next start
    removes it once 10 minutes old (younger, it may be being renamed)."""
    from keytrail.detect.sinks.outbox import Outbox

    path = tmp_path / "alarm-outbox-hook.jsonl"
    Outbox(path).close()
    killed, writing = tmp_path / f".{path.name}.4242.tmp", tmp_path / f".{path.name}.4343.tmp"
    for temp in (killed, writing):
        temp.write_bytes(b'{"queued":')
    os.utime(killed, (0, 0))
    Outbox(path).close()  # the next start
    assert (killed.exists(), writing.exists()) == (False, True)


async def test_calls_of_the_second_a_killed_run_announced_are_counted_by_the_replay_after_the_restart(
        tmp_path: Path) -> None:
    """CloudTrail times have whole seconds: fifteen denials in one second were counted as the
    previous run's (`counted_until`, its alarm's lastSeen) though it had announced only the first
    before kill -9 took its pending count, and the alarm stayed at count 1 for good."""
    records = [denied("Decrypt", T0, key_arn(7), user("eve")) for _ in range(15)]
    first = DetectorRunner.open(tmp_path)
    [raised] = await first.feed(records[:1])  # announced at its first call
    await eventually(lambda: read_alarms(tmp_path / "alarms.jsonl"), what="the alarm in alarms.jsonl")
    await first.feed(records[1:])  # counted; the new count waits for the next tick
    await _killed(first)
    second = DetectorRunner.open(tmp_path)
    await second.feed(records)  # the replay
    second.caught_up()
    await second.tick(T0 + timedelta(hours=1))  # the window closed while the node was down
    await second.close()
    alarm = read_alarms(tmp_path / "alarms.jsonl")[raised.alarm_id]
    assert (alarm.count, len(alarm.event_ids)) == (15, 15)
