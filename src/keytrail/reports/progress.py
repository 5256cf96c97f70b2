"""A one-line progress bar on stderr for large inputs."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """Draws `[#####.....] done/total unit` on one line; silent unless enabled.

    `auto` enables it only when the stream is a terminal, so pipes and logs stay clean.
    Redraws are throttled so a fast input does not spend its time printing.
    """

    def __init__(self, unit: str, *, enabled: bool | None = None, stream: TextIO | None = None,
                 width: int = 30) -> None:
        self.unit = unit
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self._drawn = 0.0
        self._shown = False

    def update(self, done: int, total: int | None) -> None:
        """Show progress `done` of `total` (unknown total: a count only)."""
        now = time.monotonic()
        if not self.enabled or (now - self._drawn < 0.1 and (total is None or done < total)):
            return
        self._drawn = now
        self._shown = True
        if total:
            filled = min(self.width, self.width * done // total)
            bar = "#" * filled + "." * (self.width - filled)
            self.stream.write(f"\r[{bar}] {done}/{total} {self.unit}")
        else:
            self.stream.write(f"\r{done} {self.unit}")
        self.stream.flush()

    def close(self) -> None:
        """End the line the bar was drawn on."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
