"""WallClockSteps: a step of the wall clock told from time passing."""

from __future__ import annotations

from keytrail.clock import ForwardStepHold, WallClockSteps


class _Clocks:
    def __init__(self) -> None:
        self.wall, self.running = 1_000_000.0, 50.0

    def passes(self, seconds: float) -> None:
        self.wall += seconds
        self.running += seconds


def test_time_passing_is_no_step_and_a_step_is_told_once_ahead_or_back() -> None:
    clocks = _Clocks()
    steps = WallClockSteps(wall=lambda: clocks.wall, running=lambda: clocks.running)
    assert steps.step() == (0.0, 0.0)  # the first reading has nothing to go by
    clocks.passes(30)
    assert steps.step() == (0.0, 30.0)
    clocks.passes(30)
    clocks.wall += 7200  # NTP set it two hours ahead
    assert steps.step() == (7200.0, 30.0)
    clocks.passes(30)
    assert steps.step() == (0.0, 30.0)
    clocks.wall -= 900
    clocks.passes(30)
    assert steps.step() == (-900.0, 30.0)


def test_routine_corrections_under_the_threshold_are_no_step() -> None:
    clocks = _Clocks()
    steps = WallClockSteps(threshold=60.0, wall=lambda: clocks.wall, running=lambda: clocks.running)
    steps.step()
    clocks.passes(30)
    clocks.wall += 59.5
    assert steps.step() == (0.0, 30.0)


def _hold(clocks: _Clocks) -> ForwardStepHold:
    return ForwardStepHold(grace=3600.0, wall=lambda: clocks.wall, running=lambda: clocks.running)


def test_a_step_ahead_is_held_for_the_grace_period_of_running_time_and_time_passing_never() -> None:
    clocks = _Clocks()
    hold = _hold(clocks)
    clocks.passes(8 * 86400)  # days of real time (the node up, or suspended and counted): no step
    assert hold.ahead() == 0.0
    clocks.wall += 8 * 86400  # a VM restored with its RTC 8 days ahead
    clocks.passes(1)
    assert hold.ahead() == 8 * 86400 and hold.left() == 3600
    clocks.passes(3599)
    assert hold.ahead() == 8 * 86400 and hold.left() == 1
    clocks.passes(1)  # the grace is over: the new time is taken as the right one
    assert hold.ahead() == 0.0 and hold.left() == 0.0 and not hold.set_back


def test_a_clock_set_back_ends_the_hold_and_a_new_step_ahead_starts_it_again() -> None:
    clocks = _Clocks()
    hold = _hold(clocks)
    clocks.wall += 2 * 86400
    assert hold.ahead() == 2 * 86400
    clocks.passes(600)
    clocks.wall -= 86400  # half corrected
    assert hold.ahead() == 86400 and not hold.set_back
    clocks.passes(600)
    clocks.wall -= 86400 - 30  # set right, but for less than a step (a clock set by hand)
    assert hold.ahead() == 0.0 and hold.set_back
    clocks.passes(600)
    clocks.wall -= 3600  # a step back with nothing held holds nothing
    assert hold.ahead() == 0.0
    clocks.wall += 7200
    clocks.passes(1800)
    assert hold.ahead() == 7200
    clocks.wall += 7200  # a second step ahead within the first's grace: held the sum, its grace anew
    clocks.passes(1800)
    assert hold.ahead() == 14400 and hold.left() == 3600
