"""What every command shares at the terminal: one-line errors and time options."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import typer

__all__ = ["fail", "missing_paths", "parse_time"]


def fail(message: str, command: str = "keytrail", code: int = 2) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned Exit."""
    typer.echo(f"{command}: {message}", err=True)
    return typer.Exit(code)


def missing_paths(paths: Iterable[Path], option: str = "") -> str | None:
    """None when every path exists, else the one-line complaint naming the missing ones."""
    missing = [str(path) for path in paths if not path.exists()]
    if not missing:
        return None
    return f"{option + ': ' if option else ''}no such file or folder: {', '.join(missing)}"


def parse_time(value: str | None, option: str, command: str = "keytrail") -> datetime | None:
    """An ISO-8601 time option (`Z` or an offset; UTC when none is given)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise fail(f"{option}: not an ISO-8601 time: {value!r}", command) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
