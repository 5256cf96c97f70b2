"""Where every keytrail process writes its log lines (stderr), and its drivers' retries thinned there.

While a Kafka broker is down, aiokafka logs each failed connect, metadata refresh, fetch and
heartbeat, a line each, some 40 to 70 a second; while PostgreSQL is, asyncpg logs each failed
attempt to refill its pool, with a traceback. An operator reading the log during the outage
could not find keytrail's own line saying what is down and what waits. Every process that runs
them (serve and its children, `detect --kafka`, `consume --kafka`) sets its logging up here, so
that each distinct line of theirs is written once, in one line, then at most once a minute with
the count of those left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BARE_FORMAT", "LOG_FORMAT", "THINNED_LOGGERS", "LineThinner", "RepeatedDriverLineFilter", "UtcFormatter",
           "log_to_stderr", "retention_gap"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # serve and its children
BARE_FORMAT = "%(message)s"  # what Python writes by itself (its last-resort handler): detect's and consume's
REPEAT_SECONDS = 60.0
THINNED_LOGGERS = ("aiokafka", "asyncpg")  # and their modules' loggers (aiokafka.conn, asyncpg.pool, …)
_MOST_REMEMBERED = 256  # distinct lines; more is not an outage repeating itself but varied text


class UtcFormatter(logging.Formatter):
    """Lines stamped in UTC and marked so (`2026-12-07T19:46:26.858Z`), as every time they name and
    the trail's eventTime are: stamped in the machine's zone with nothing saying which
    (TZ=Asia/Kolkata: `2026-12-08 01:26:02,413` on a line about a call of 19:56Z), they read
    5.5 h off the trail, and an hour of them came twice at a daylight-saving change."""

    @staticmethod
    def converter(seconds: float | None = None) -> time.struct_time:
        return time.gmtime(seconds)

    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


def log_to_stderr(fmt: str = LOG_FORMAT) -> None:
    """Warnings and errors to stderr in `fmt`, stamped in UTC (unless logging is set up already),
    each repeated driver line thinned to one a minute (RepeatedDriverLineFilter)."""
    stream = logging.StreamHandler()
    stream.setFormatter(UtcFormatter(fmt))
    logging.basicConfig(level=logging.WARNING, handlers=[stream])
    for handler in logging.getLogger().handlers:
        RepeatedDriverLineFilter.attach(handler)


def retention_gap(log: str, reading: int, first: int, reader: str, unseen: str) -> str:
    """The one line a reader of an event log (the embedded one, a Kafka partition) writes when the
    log now begins at `first`, above `reading`: retention deleted what it had not read yet, and
    an on-call engineer must learn from it how much (`unseen`: what that costs the reader)."""
    gone = first - reading
    return (f"{log} no longer holds the {gone} record{'s' * (gone != 1)} at offsets {reading}..{first - 1}: "
            f"retention deleted them before this {reader} read them, and {unseen}; reading on from offset {first}")


@dataclass
class _Seen:
    written_at: float  # when the line was last let through
    left_out: int = 0  # like it since


class LineThinner:
    """The first line of each kind, then at most one per `seconds`, that one saying how many like
    it were left out: a condition that repeats (a driver's retries, a scrape of /metrics while the
    key store hangs) said once a minute, not each time."""

    def __init__(self, seconds: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._seen: dict[str, _Seen] = {}

    def admit(self, kind: str, message: str) -> str | None:
        """The line to write for `message` of `kind` now, or None to leave it out."""
        now = self._clock()
        seen = self._seen.get(kind)
        if seen is not None and now - seen.written_at < self.seconds:
            seen.left_out += 1
            return None
        self._forget_old(now)
        self._seen[kind] = _Seen(now)
        if seen is not None and seen.left_out:
            return f"{message} (and {seen.left_out:,} more like it in the last {now - seen.written_at:.0f} s)"
        return message

    def _forget_old(self, now: float) -> None:
        """Bound the memory when the lines vary (a node id, an address each): forget lines last let
        through over `seconds` ago (whose next one would pass anyway; their counts of lines left
        out are lost with them)."""
        if len(self._seen) >= _MOST_REMEMBERED:
            self._seen = {kind: seen for kind, seen in self._seen.items() if now - seen.written_at < self.seconds}


class RepeatedDriverLineFilter(logging.Filter):
    """Lets the first of each distinct message of the THINNED_LOGGERS through, then at most one per
    `seconds`, that one saying how many like it were left out; the traceback of one that has one
    (an outage its driver retries, not a bug of keytrail's) folded into its line. Other loggers'
    records pass untouched.

    On a handler, not on the drivers' loggers: a logger's filters see only the records logged on
    that logger itself, and the drivers log on one per module (aiokafka.conn, asyncpg.pool, …)."""

    def __init__(self, seconds: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._lines = LineThinner(seconds, clock)
        self._lock = threading.Lock()  # a handler filters outside its own lock

    @classmethod
    def attach(cls, handler: logging.Handler) -> None:
        """Filter `handler`'s records, once however often a process sets its logging up."""
        if not any(isinstance(known, cls) for known in handler.filters):
            handler.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.partition(".")[0] not in THINNED_LOGGERS:
            return True
        # Alike by the driver's own words, whatever exception it carries: through one outage that
        # changes (a PostgreSQL restart: shutting down, refused, starting up), and asyncpg's retries
        # to refill its pool were written once per kind of exception, not once a minute.
        key = record.getMessage()
        message = _one_line(record)
        with self._lock:
            line = self._lines.admit(key, message)
        if line is None:
            return False
        record.msg, record.args = line, None
        return True


def _one_line(record: logging.LogRecord) -> str:
    """The record's message, with the exception it carries (if any) as its last words instead of
    a traceback; the record loses its traceback."""
    message = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        error = record.exc_info[1]
        message = f"{message}: {type(error).__name__}: {' '.join(str(error).split())}"
        record.exc_info, record.exc_text = None, None
    return message
