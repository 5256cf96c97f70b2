"""WallClockSteps: a step of the wall clock told from time passing."""

from __future__ import annotations

from keytrail.clock import WallClockSteps


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
