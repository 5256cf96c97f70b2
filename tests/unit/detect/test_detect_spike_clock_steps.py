"""usage-spike over a live stream whose node's clock stepped back: calls dated in minutes the pair
has had already count in those minutes, not all in its latest one."""

from __future__ import annotations

from collections import deque
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st
from tests.unit.detect.records import T0, event, key_arn, role, steady_traffic

from keytrail.detect import Detector
from keytrail.detect.checks.spike import _Rate

KEY = key_arn(1)
APP = role("app")


def test_a_steady_pair_whose_node_clock_stepped_back_an_hour_raises_no_spike() -> None:
    """Two hours at 5 calls a minute, then the node's clock set back an hour and the same 5 calls a
    minute for the next hour and a half: every call of the repeated hour went to the minute before
    the step, 300 calls in it, a HIGH spike (10x and 50x the baseline of 5) though nothing changed."""
    detector = Detector()
    before = steady_traffic(KEY, APP, T0, minutes=120, per_minute=5)
    after = steady_traffic(KEY, APP, T0 + timedelta(minutes=60), minutes=90, per_minute=5)
    detector.process(before + after)  # in the order the node logged them, as a live detector reads
    assert [a for a in detector.alarms() if a.rule == "usage-spike"] == []


def test_a_pair_stepped_back_still_fires_at_a_real_spike_once_its_clock_is_past_the_step() -> None:
    """The calls of the repeated hour count in their own minutes (10 a minute there now), so the
    baseline is the average of every call over the history; those of the two minutes before the
    step's (a call that late still counts in the latest minute) went to its minute, the busiest."""
    detector = Detector()
    records = steady_traffic(KEY, APP, T0, minutes=120, per_minute=5)
    records += steady_traffic(KEY, APP, T0 + timedelta(minutes=60), minutes=70, per_minute=5)
    records += [event("Decrypt", T0 + timedelta(minutes=130, milliseconds=100 * i), KEY, APP) for i in range(200)]
    detector.process(records)
    [alarm] = [a for a in detector.alarms() if a.rule == "usage-spike"]
    assert alarm.details["baselinePeakRate"] == "20"  # minute 119: its 5, then 117's, 118's and its own again
    assert alarm.details["baselineDurationMinutes"] == "130"
    # (120 x 5 + 70 x 5) / 130 minutes = 7.31 a minute: fired at min_calls (100; 10 x 7.31 is 74), not HIGH
    assert (alarm.severity, alarm.details["baselineAverage"], alarm.details["observedRate"]) == (
        "MEDIUM", "7.3077", "100")


def test_a_call_a_minute_late_still_counts_in_the_current_minute() -> None:
    """Calls of several nodes come a little out of order: those dated a minute before the pair's
    latest count in it, as before."""
    detector = Detector()
    detector.process(steady_traffic(KEY, APP, T0, minutes=120, per_minute=5)
                     + [event("Decrypt", T0 + timedelta(minutes=120, seconds=i), KEY, APP) for i in range(60)]
                     + [event("Decrypt", T0 + timedelta(minutes=119, seconds=i), KEY, APP) for i in range(60)])
    [alarm] = [a for a in detector.alarms() if a.rule == "usage-spike"]
    assert alarm.details["observedRate"] == "100"  # 60 of minute 120, then 40 of minute 119 with them


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=120))
def test_late_calls_keep_the_peak_the_busiest_minute_of_the_window(steps: list[tuple[bool, int]]) -> None:
    """After any mix of calls in the latest minute, in later minutes and in earlier ones, `peak()`
    is the busiest minute of the horizon before the latest, `total` their calls, `past` them."""
    horizon = 20
    rate, counts = _Rate(first_minute=0, minute=0), dict[int, int]()
    for forward, minutes in steps:
        if forward:
            if minutes:
                rate.roll(rate.minute + minutes, horizon)
            rate.count += 1
            called = rate.minute
        else:
            called = rate.minute - minutes - 1
            rate.count_late(called, horizon)
        counts[called] = counts.get(called, 0) + 1
    window = {m: c for m, c in counts.items() if rate.minute - horizon <= m < rate.minute}
    assert rate.peak() == max(window.values(), default=0)
    assert rate.total == sum(window.values())
    assert list(rate.past or deque()) == sorted(window.items())
    assert rate.count == counts.get(rate.minute, 0)
