"""A wall clock a test steps under a real process (an NTP step, a clock set by hand): libfaketime
preloaded, its offset read from a file at every call, the monotonic clock left alone as a real
step leaves it.

libfaketime is the copy the `libfaketime` package (a test dependency) builds: Debian's 0.9.10 fails
every Python 3.11 `time.sleep` with EINVAL when the monotonic clock is not faked (its issue #426),
and faking it too would step asyncio's timers along with the wall clock, as no real step does.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["SteppedWallClock"]


def _library() -> Path | None:
    spec = importlib.util.find_spec("libfaketime")  # found, not imported: importing it may re-exec
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "vendor" / "libfaketime" / "src" / "libfaketime.so.1"
    return path if path.is_file() else None


class SteppedWallClock:
    """The wall clock of the processes started inside `preloaded()` (and of their children), set
    `offset` seconds from the real one by `step_to`."""

    def __init__(self, folder: Path) -> None:
        library = _library()
        if library is None:
            pytest.skip("the libfaketime package (a test dependency, scripts/install test) is not installed")
        self.library = library
        self.path = folder / "faketime-offset"
        self.step_to(0)

    def step_to(self, offset: int) -> None:
        """Set the clock `offset` seconds from the real one, for every process at its next call
        (the file replaced whole: libfaketime reading one half written exits the process)."""
        staged = self.path.with_suffix(".tmp")
        staged.write_text(f"{offset:+d}\n")
        os.replace(staged, self.path)

    @contextmanager
    def preloaded(self, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
        """Processes started within run on this clock; the test's own process does not."""
        with monkeypatch.context() as patch:
            patch.setenv("LD_PRELOAD", str(self.library))
            patch.setenv("FAKETIME_TIMESTAMP_FILE", str(self.path))
            patch.setenv("FAKETIME_NO_CACHE", "1")
            patch.setenv("FAKETIME_DONT_FAKE_MONOTONIC", "1")
            yield
