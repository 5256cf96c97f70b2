"""keytrail_alarms_total counts alarms raised and escalated, not every state a detector announces."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.unit.detect.records import T0, denied, key_arn, user

from keytrail.detect.alarm_tally import AlarmTally
from keytrail.detect.engine import Detector
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.severity import Severity


def test_an_alarm_counts_once_raised_and_not_for_its_updates() -> None:
    tally = AlarmTally()
    for _ in range(5):  # raised, then its count and lastSeen at each tick
        tally.add("a-1", "unauthorized-decrypt", Severity.MEDIUM)
    assert tally.counts == {("unauthorized-decrypt", "MEDIUM"): 1}


def test_each_escalation_counts_at_its_new_severity() -> None:
    tally = AlarmTally()
    for severity in (Severity.MEDIUM, Severity.HIGH, Severity.HIGH, Severity.CRITICAL, Severity.CRITICAL):
        tally.add("a-1", "unauthorized-decrypt", severity)
    assert tally.counts == {("unauthorized-decrypt", "MEDIUM"): 1, ("unauthorized-decrypt", "HIGH"): 1,
                            ("unauthorized-decrypt", "CRITICAL"): 1}


def test_a_state_less_severe_than_one_counted_is_no_escalation() -> None:
    tally = AlarmTally()  # a hook's late copy of an earlier state must not count again
    tally.add("a-1", "usage-spike", Severity.HIGH)
    tally.add("a-1", "usage-spike", Severity.MEDIUM)
    tally.add("a-1", "usage-spike", Severity.HIGH)
    assert tally.counts == {("usage-spike", "HIGH"): 1}


def test_distinct_alarms_of_one_rule_each_count() -> None:
    tally = AlarmTally()
    tally.add("a-1", "unused-key", Severity.LOW)
    tally.add("a-2", "unused-key", Severity.LOW)
    assert tally.counts == {("unused-key", "LOW"): 2}


def test_the_tally_remembers_a_bounded_number_of_alarms() -> None:
    tally = AlarmTally(remembered=2)
    for alarm_id in ("a-1", "a-2", "a-3"):
        tally.add(alarm_id, "unused-key", Severity.LOW)
    tally.add("a-3", "unused-key", Severity.LOW)  # remembered: an update
    tally.add("a-1", "unused-key", Severity.LOW)  # forgotten, the oldest: counted as raised again
    assert tally.counts == {("unused-key", "LOW"): 4}


def test_a_detector_s_announcements_count_the_alarm_raised_not_its_tick_update() -> None:
    detector, tally = Detector(), AlarmTally()
    tally.add_alarms(detector.process([denied("Decrypt", T0, key_arn(1), user("eve"))]))
    tally.add_alarms(detector.process([denied("Decrypt", T0 + timedelta(seconds=1), key_arn(1), user("eve"))]))
    tally.add_alarms(announced := detector.tick(T0 + timedelta(seconds=2)))
    assert [alarm.count for alarm in announced] == [2]  # the update went out to the hooks
    assert sum(tally.counts.values()) == 1


async def test_an_alarm_delivered_before_a_restart_counts_again_only_if_it_escalates(tmp_path: Path) -> None:
    # Counted afresh at each start, an alarm open across a restart counted as raised again at its
    # first update after it: "Alarms (24h)" showed two, and the HIGH alert fired again.
    first = [denied("Decrypt", T0 + timedelta(seconds=n), key_arn(1), user("eve")) for n in range(2)]
    async with DetectorRunner.open(tmp_path) as before:
        await before.feed(first)
        await before.tick()
    tally = AlarmTally()
    async with DetectorRunner.open(tmp_path) as runner:
        tally.remember(runner.delivered_ranks())
        tally.add_alarms(await runner.feed(first))  # the replay
        tally.add_alarms(await runner.feed([denied("Decrypt", T0 + timedelta(seconds=5), key_arn(1), user("eve"))]))
        tally.add_alarms(updated := await runner.tick())
        assert [alarm.count for alarm in updated] == [3]
        assert tally.counts == {}
        escalating = [denied("Decrypt", T0 + timedelta(seconds=10 + n), key_arn(1), user("eve")) for n in range(47)]
        tally.add_alarms(await runner.feed(escalating))
    assert tally.counts == {("unauthorized-decrypt", "CRITICAL"): 1}
