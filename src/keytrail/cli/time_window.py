"""The `--since` and `--until` options of the metrics and report commands: ISO-8601 times in UTC,
and a window that holds at least a moment."""

from __future__ import annotations

from datetime import UTC, datetime

from keytrail.cli.console import counted, fail

__all__ = ["EARLIEST_TIME", "parse_time", "parse_window", "since_after_default_end"]

# No event is older: a bound before it (`0001-01-01`, .NET's DateTime.MinValue, typed for "from the
# start") leaves a century of room for the day arithmetic of the queries (`--unused-days`), which
# overflowed Python's datetime at year 1.
EARLIEST_TIME = datetime(1000, 1, 1, tzinfo=UTC)


def parse_time(value: str | None, option: str, command: str = "keytrail") -> datetime | None:
    """An ISO-8601 time option (`Z` or an offset; UTC when none is given)."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except ValueError:
        raise fail(f"{option}: not an ISO-8601 time: {value!r}", command) from None
    except OverflowError:  # an offset taking it past year 1 or 9999
        raise fail(f"{option}: {value!r} is out of range in UTC", command) from None


def since_after_default_end(since: str, end: datetime, late: int = 0) -> str:
    """Why a --since is refused when no --until is given and it is not before the default end (a
    second after the last event, or, with `late` events dated after now, the minute after the last
    one not dated after it, as usage is kept): the period would end before it starts, with nothing
    in it, as if nothing had happened (`report`, `cost`)."""
    where = (f"the minute after the last event not dated after now ({end:%Y-%m-%dT%H:%M:%SZ}; "
             f"{counted(late, 'event')} {'is' if late == 1 else 'are'} dated after now)" if late else
             f"one second after the last event not dated after now ({end:%Y-%m-%dT%H:%M:%SZ})")
    return f"--since {since} is not before --until, by default {where}: give an earlier --since, or an --until"


def parse_window(since: str | None, until: str | None,
                 command: str = "keytrail") -> tuple[datetime | None, datetime | None]:
    """`--since` and `--until`; refused when the window is empty (since not before until): an
    empty answer would look like no use at all. A `--since` before EARLIEST_TIME is no bound."""
    low, high = parse_time(since, "--since", command), parse_time(until, "--until", command)
    if low is not None and high is not None and low >= high:
        raise fail(f"--since {since} is not before --until {until}", command)
    if high is not None and high <= EARLIEST_TIME:
        raise fail(f"--until {until} is not after {EARLIEST_TIME:%Y-%m-%d}: no event is that old", command)
    return (None if low is not None and low < EARLIEST_TIME else low), high
