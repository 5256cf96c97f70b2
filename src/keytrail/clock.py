"""The one time source of keytrail: every scheduled behaviour reads time from a `Clock`."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

__all__ = [
    "DEV_CLOCK_FILE", "STEP_HOLD_SECONDS", "Clock", "ForwardStepHold", "ManualClock", "SystemClock", "WallClockSteps",
    "as_utc", "data_dir_now",
    "dev_clock_ahead", "running_seconds", "shifted", "utc_now",
]

#: In a data dir: how far `serve --dev-clock` has moved ahead of the wall clock, `{"aheadSeconds": N}`
#: (written by cli/node.py), so that what reads the data dir later knows the node's now.
DEV_CLOCK_FILE = "dev-clock.json"


def utc_now() -> datetime:
    """The wall clock as an aware UTC datetime."""
    return datetime.now(UTC)


def running_seconds() -> float:
    """Seconds on a clock that no step of the wall clock moves (an NTP step, a date set by hand),
    time suspended included where the system counts it (CLOCK_BOOTTIME): how long a process really
    ran between two of its moments."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic()


class WallClockSteps:
    """Tells a step of the wall clock (an NTP step, a date set by hand) between two readings: how
    much further it moved than a clock no step moves (`running_seconds`), ahead or back. Steps
    under `threshold` seconds (NTP's routine corrections) are none."""

    def __init__(self, threshold: float = 60.0, wall: Callable[[], float] = time.time,
                 running: Callable[[], float] = running_seconds) -> None:
        self._threshold, self._wall, self._running = threshold, wall, running
        self._last: tuple[float, float] | None = None

    def wall(self) -> float:
        """The wall clock read, in seconds since the epoch."""
        return self._wall()

    def step(self) -> tuple[float, float]:
        """(seconds the wall clock stepped since the last reading, ahead > 0, back < 0, or 0;
        seconds that really passed since then)."""
        wall, running = self._wall(), self._running()
        last, self._last = self._last, (wall, running)
        if last is None:
            return 0.0, 0.0
        passed = running - last[1]
        stepped = (wall - last[0]) - passed
        return (stepped if abs(stepped) >= self._threshold else 0.0), passed


#: How long (running time) irreversible work that only a step ahead of the wall clock made due is held.
STEP_HOLD_SECONDS = 3600.0


class ForwardStepHold:
    """How far back to judge irreversible work (a key's deletion, imported material's expiry) from
    the node's now: by the steps ahead of the wall clock seen in the last `grace` seconds of running
    time (`running_seconds`), less any step back since. A clock stepped days ahead by mistake (a VM
    restored with a wrong RTC, a bad NTP source) otherwise deleted at once the keys whose waiting
    period it jumped over, for good. Time that really passes moves the judged time on as it moves
    the clock, so what falls due by it is never held; after `grace`, or once the clock is set back,
    nothing is. Reads the wall clock itself, not a `Clock`: `serve --dev-clock` advances are the
    clock moving on purpose and are not held."""

    def __init__(self, grace: float = STEP_HOLD_SECONDS, threshold: float = 60.0,
                 wall: Callable[[], float] = time.time, running: Callable[[], float] = running_seconds) -> None:
        self._steps = WallClockSteps(threshold, wall, running)
        self._running, self._grace, self._threshold = running, grace, threshold
        self._ahead, self._until = 0.0, 0.0
        self.set_back = False  # whether the last hold ended by a step back, not by its grace running out
        self._steps.step()

    def ahead(self) -> float:
        """Seconds to take off the node's now for irreversible work (0: none held)."""
        stepped, _ = self._steps.step()
        running = self._running()
        if stepped > 0:
            self._ahead += stepped
            self._until = running + self._grace
        elif stepped < 0 and self._ahead:
            left = self._ahead + stepped  # what is left under a step's size is a clock set right
            self._ahead = left if left >= self._threshold else 0.0
            self.set_back = not self._ahead
        if running >= self._until and self._ahead:
            self._ahead, self.set_back = 0.0, False
        return self._ahead

    def judged_now(self) -> float:
        """The wall clock's now, in seconds since the epoch, less the steps ahead held (`ahead`)."""
        held = self.ahead()
        return self._steps.wall() - held

    def left(self) -> float:
        """Seconds of running time until the hold ends (0: none held)."""
        return max(0.0, self._until - self._running()) if self._ahead else 0.0


def as_utc(moment: datetime) -> datetime:
    """`moment`, taken as UTC where it names no zone (a store's or a state's naive times are UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Clock(Protocol):
    """Anything that can tell the current time (aware, UTC)."""

    def now(self) -> datetime: ...


class SystemClock:
    """The wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that only moves when told to: tests, and `serve --dev-clock`.

    With `follow_wall=True` it runs with the wall clock and `advance` adds an offset, so a
    development server keeps a sensible eventTime while tests can still jump ahead.
    """

    def __init__(self, start: datetime | None = None, *, follow_wall: bool = False) -> None:
        self._follow_wall = follow_wall
        self._base = start or datetime.now(UTC)
        self._offset = timedelta()
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._at(self._offset)

    def advance(self, seconds: float) -> datetime:
        """Move time forward by `seconds` (never backward) and return the new time; OverflowError,
        and no move, if that is past the year 9999."""
        if seconds < 0:
            raise ValueError("a clock only moves forward")
        with self._lock:
            offset = self._offset + timedelta(seconds=seconds)
            moved = self._at(offset)  # raises before the move: a clock past 9999 would fail every now()
            self._offset = offset
        return moved

    def _at(self, offset: timedelta) -> datetime:
        return (datetime.now(UTC) if self._follow_wall else self._base) + offset


def data_dir_now(data_dir: Path) -> datetime:
    """Now for the events of `data_dir`: the wall clock, moved ahead as far as its dev clock went."""
    try:
        return utc_now() + timedelta(seconds=dev_clock_ahead(data_dir))
    except OverflowError:  # a record reaching past the year 9999, which no dev clock reaches
        return datetime.max.replace(tzinfo=UTC)


def dev_clock_ahead(data_dir: Path) -> float:
    """Seconds the data dir's dev clock went ahead of the wall clock; 0 without a readable record
    (no dev clock ever moved there: the wall clock is the node's). Opened without waiting, a regular
    file only: read as it came, a FIFO in its place (whoever can write the data dir can make one)
    held `audit verify`, the metrics queries and `serve --dev-clock`'s start, and its event loop
    when the clock moved, for a writer forever."""
    try:
        with open(os.open(data_dir / DEV_CLOCK_FILE, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return 0.0
            ahead = json.loads(file.read(4096))["aheadSeconds"]  # `{"aheadSeconds": N}`: what is past is not it
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0
    return float(ahead) if isinstance(ahead, int | float) and 0 < ahead < 1e12 else 0.0


def shifted(moment: datetime, delta: timedelta) -> datetime:
    """`moment + delta`, held at the calendar's ends (year 1, year 9999): CloudTrail records may be
    dated at either end, and a window or a bound reaching past it is no error of the reader's."""
    try:
        return moment + delta
    except OverflowError:
        end = datetime.max if delta > timedelta(0) else datetime.min
        return end.replace(tzinfo=moment.tzinfo)
