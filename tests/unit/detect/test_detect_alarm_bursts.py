"""A burst of alarms past the hooks' queue bound: alarms.jsonl, the record, takes every one; a hook
that drops its overflow says how many, whether or not an alarm follows."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest
from tests.support.waits import eventually
from tests.unit.detect.records import T0, create_key, denied, key_arn, user

from keytrail.detect.alarms import Alarm
from keytrail.detect.engine import Detector
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks import Dispatcher, HookDown
from keytrail.detect.sinks.jsonl import JsonlSink, read_alarms

LOGGER = "keytrail.detect.sinks"


class Recorder:
    def __init__(self) -> None:
        self.alarms: list[Alarm] = []

    async def deliver(self, alarm: Alarm) -> None:
        self.alarms.append(alarm)


class Down:
    """A hook out of reach for good: every delivery (the dispatcher's probes) fails as down."""

    async def deliver(self, alarm: Alarm) -> None:
        raise HookDown("connection refused")


def _alarms(count: int) -> list[Alarm]:
    return Detector().process([denied("Decrypt", T0 + timedelta(hours=2 * i), key_arn(i), user("eve"))
                               for i in range(count)])


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]


async def test_a_tick_raising_more_alarms_than_a_hook_queue_holds_writes_every_one_to_alarms_jsonl(
    tmp_path: Path,
) -> None:
    """unused-key raises one alarm per idle key in one tick: over 10,000 keys, the ones past the
    hooks' queue bound never reached alarms.jsonl, which the docs call the record of last resort."""
    keys = 10_500
    runner = DetectorRunner.open(tmp_path)
    await runner.feed([create_key(T0, key_arn(n)) for n in range(keys)])
    raised = await runner.tick(T0 + timedelta(days=91))
    await runner.close()
    assert len(raised) == keys
    assert set(read_alarms(tmp_path / "alarms.jsonl")) == {alarm.alarm_id for alarm in raised}
    assert runner.dispatcher.dropped == 0


async def test_the_record_takes_a_burst_past_the_bound_that_a_hook_drops(tmp_path: Path) -> None:
    alarms, hook = _alarms(8), Recorder()
    dispatcher = Dispatcher([JsonlSink(tmp_path / "alarms.jsonl"), hook], queue_size=5)
    for alarm in alarms:  # one synchronous loop, as a tick publishes what it raised
        dispatcher.publish(alarm)
    await dispatcher.close(timeout=5)
    assert list(read_alarms(tmp_path / "alarms.jsonl").values()) == alarms
    assert hook.alarms == alarms[:5] and dispatcher.dropped == 3


async def test_a_hook_that_dropped_alarms_says_how_many_once_it_has_room_though_no_alarm_follows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The count was logged by the next alarm the queue took: after a last burst, never."""
    hook = Recorder()
    dispatcher = Dispatcher([hook], queue_size=3)
    with caplog.at_level("WARNING", logger=LOGGER):
        for alarm in _alarms(5):
            dispatcher.publish(alarm)
        await eventually(lambda: any("has room again" in line for line in _warnings(caplog)),
                         what="the line counting the drops", timeout=5)
        await dispatcher.close(timeout=5)
    [full, room] = _warnings(caplog)
    assert "alarm queue of Recorder is full (3)" in full
    assert room == "alarm queue of Recorder has room again: 2 alarm(s) dropped"
    assert len(hook.alarms) == 3


async def test_the_drops_of_a_hook_whose_queue_is_full_until_the_close_are_counted_at_the_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    head, *behind = _alarms(6)
    dispatcher = Dispatcher([Down()], queue_size=2, pause=(30.0, 30.0))
    dispatcher.publish(head)
    await asyncio.sleep(0)  # the worker takes the head and probes the hook with it: down
    with caplog.at_level("WARNING", logger=LOGGER):
        for alarm in behind:  # two fill the queue, three are dropped
            dispatcher.publish(alarm)
        await dispatcher.close(timeout=0.2)
    assert dispatcher.dropped == 3
    assert "alarm queue of Down was full until the hooks closed: 3 alarm(s) dropped" in _warnings(caplog)
