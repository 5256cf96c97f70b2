"""The problems met reading CloudTrail files, held within a bound: every reader (`audit import`,
`consume`, `report` and `detect --cloudtrail`) keeps the first `SHOWN` in full and counts the rest,
so a file of one record and five million values that are none (`{"Records": [{…}, 1, 1, …]}`, a
JSON-lines file of `1`s: 10 MB) costs a counter, not 600 MB of sentences nobody reads."""

from __future__ import annotations

from collections.abc import Callable, Iterator

__all__ = ["SHOWN", "Problems"]

#: The problems said in full per run: two screens of a terminal, enough to see which files and
#: which kinds of damage; past them a file's problems repeat the same few sentences, and the count
#: says how many there were.
SHOWN = 100


class Problems:
    """The problems of a read: `len` counts all of them, iterating gives the first `limit` in full;
    `on_shown` is told each of those as it is met (a command saying them as it reads)."""

    __slots__ = ("_count", "_shown", "limit", "on_shown")

    def __init__(self, limit: int = SHOWN, on_shown: Callable[[str], None] | None = None) -> None:
        self.limit = limit
        self.on_shown = on_shown
        self._shown: list[str] = []
        self._count = 0

    def append(self, problem: str) -> None:
        """Count `problem`; keep it (and tell `on_shown`) while fewer than `limit` are kept."""
        self._count += 1
        if len(self._shown) < self.limit:
            self._shown.append(problem)
            if self.on_shown is not None:
                self.on_shown(problem)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        return iter(self._shown)

    def __eq__(self, other: object) -> bool:
        """Equal to a list holding every problem, in order (never when some were not kept)."""
        if isinstance(other, Problems):
            return self._count == other._count and self._shown == other._shown
        return isinstance(other, list) and self._count == len(other) and self._shown == other

    __hash__ = None  # type: ignore[assignment]  # mutable, as a list

    def __repr__(self) -> str:
        return f"Problems({self._shown!r}, count={self._count})"

    @property
    def unshown(self) -> int:
        """How many were counted but not kept."""
        return self._count - len(self._shown)

    def unshown_note(self) -> str | None:
        """The line that says how many were not shown (None when all were), as every command says it."""
        if not self.unshown:
            return None
        return (f"{self.unshown:,} more {'problem' if self.unshown == 1 else 'problems'} not shown "
                f"(the first {len(self._shown):,} are)")
