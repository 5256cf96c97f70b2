"""A monotonic clock that moves only when a test moves it (for code that takes `time.monotonic`)."""

from __future__ import annotations


class SteppedClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
