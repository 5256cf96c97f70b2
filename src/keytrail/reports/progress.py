"""A one-line progress bar on stderr for large inputs."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
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
        self._length = 0  # of the text drawn last: what `wipe` blanks

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
            text = f"[{bar}] {done}/{total} {self.unit}"
        else:
            text = f"{done} {self.unit}"
        self._length = len(text)
        self.stream.write(f"\r{text}")
        self.stream.flush()

    def above(self, say: Callable[[str], None]) -> Callable[[str], None]:
        """`say`, its lines printed above the bar rather than glued to its end: a problem met while
        the bar was drawn read "[####..] 10/11 filesskipped: …" on the terminal. The bar's line is
        blanked first and drawn again, below, at the next update."""

        def said(text: str) -> None:
            self.wipe()
            say(text)

        return said

    def wipe(self) -> None:
        """Blank the bar's line (with spaces: a dumb terminal knows no erase sequence), the cursor
        left at its start for the next line."""
        if self._shown:
            self.stream.write("\r" + " " * self._length + "\r")
            self.stream.flush()
            self._shown = False
            self._drawn = 0.0  # drawn again at the next update, unthrottled

    def close(self) -> None:
        """End the line the bar was drawn on."""
        if self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
