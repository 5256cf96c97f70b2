"""Repeated aiokafka and asyncpg lines are thinned; every other log line passes as it was."""

from __future__ import annotations

import logging
import sys

from keytrail.log_lines import RepeatedDriverLineFilter
from tests.support.clocks import SteppedClock

REFUSED = 'Unable connect to "127.0.0.1:9092": [Errno 111] Connect call failed'


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args or None, None)


def passed(thinning: RepeatedDriverLineFilter, name: str, msg: str, *args: object) -> str | None:
    """The message written, or None if the record was left out."""
    line = record(name, msg, *args)
    return line.getMessage() if thinning.filter(line) else None


def test_a_repeated_aiokafka_line_is_written_once_then_once_a_minute_with_the_count_left_out() -> None:
    clock = SteppedClock()
    thinning = RepeatedDriverLineFilter(60.0, clock)
    assert passed(thinning, "aiokafka", 'Unable connect to "%s": %s', "127.0.0.1:9092",
                  "[Errno 111] Connect call failed") == REFUSED
    for _ in range(2341):
        clock.now += 0.025
        assert passed(thinning, "aiokafka", REFUSED) is None
    clock.now = 1060.0
    assert passed(thinning, "aiokafka", REFUSED) == f"{REFUSED} (and 2,341 more like it in the last 60 s)"
    clock.now += 1
    assert passed(thinning, "aiokafka", REFUSED) is None


def test_a_line_that_comes_again_only_after_the_interval_is_written_without_a_count() -> None:
    clock = SteppedClock()
    thinning = RepeatedDriverLineFilter(60.0, clock)
    assert passed(thinning, "aiokafka", REFUSED) == REFUSED
    clock.now += 61
    assert passed(thinning, "aiokafka", REFUSED) == REFUSED


def test_distinct_aiokafka_lines_are_thinned_each_on_its_own() -> None:
    clock = SteppedClock()
    thinning = RepeatedDriverLineFilter(60.0, clock)
    metadata = "Unable to update metadata from [111]"
    assert passed(thinning, "aiokafka", REFUSED) == REFUSED
    assert passed(thinning, "aiokafka.client", metadata) == metadata  # aiokafka's modules log on their own loggers
    assert passed(thinning, "aiokafka.conn", REFUSED) is None
    assert passed(thinning, "aiokafka.client", metadata) is None


def test_other_loggers_lines_pass_untouched_however_often_they_repeat() -> None:
    thinning = RepeatedDriverLineFilter(60.0, SteppedClock())
    down = "alarm hook kafka is down (%s): its alarms wait in its queue"
    for _ in range(3):
        line = record("keytrail.detect.sinks", down, "KafkaConnectionError")
        assert thinning.filter(line)
        assert (line.msg, line.args) == (down, ("KafkaConnectionError",))
        assert passed(thinning, "aiokafkaesque", REFUSED) == REFUSED  # a name that only starts alike


def test_the_filter_is_attached_to_a_handler_once() -> None:
    handler = logging.NullHandler()
    RepeatedDriverLineFilter.attach(handler)
    RepeatedDriverLineFilter.attach(handler)
    assert sum(isinstance(known, RepeatedDriverLineFilter) for known in handler.filters) == 1


def test_asyncpg_retries_are_thinned_too_and_their_tracebacks_folded_into_one_line() -> None:
    clock = SteppedClock()
    thinning = RepeatedDriverLineFilter(60.0, clock)
    try:
        raise ConnectionRefusedError(111, "Connection refused")
    except ConnectionRefusedError:
        line = logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1,
                                 "Failed to restore the pool connection floor; retrying", None, sys.exc_info())
    assert thinning.filter(line)
    assert line.getMessage() == ("Failed to restore the pool connection floor; retrying: "
                                 "ConnectionRefusedError: [Errno 111] Connection refused")
    assert line.exc_info is None and line.exc_text is None  # no traceback under it
    text = logging.Formatter("%(message)s").format(line)
    assert "\n" not in text
    clock.now += 1
    assert not thinning.filter(_pool_floor_line(ConnectionRefusedError(111, "Connection refused")))
    # keytrail's own lines keep theirs: an error of keytrail's needs its traceback
    try:
        raise ValueError("a bug")
    except ValueError:
        own = logging.LogRecord("keytrail.kms.service", logging.ERROR, __file__, 1, "internal error", None,
                                sys.exc_info())
    assert thinning.filter(own) and own.exc_info is not None


def _pool_floor_line(error: Exception) -> logging.LogRecord:
    """asyncpg's line as its pool fails to reconnect, with the exception under it."""
    try:
        raise error
    except Exception:
        return logging.LogRecord("asyncpg.pool", logging.WARNING, __file__, 1,
                                 "Failed to restore the pool connection floor; retrying", None, sys.exc_info())


def test_asyncpg_retries_are_thinned_together_whatever_exception_each_carries() -> None:
    # A PostgreSQL restart: asyncpg's retries met "shutting down", then refused connections, then
    # "starting up", and each kind was written as a line of its own, three lines in 7 s.
    clock = SteppedClock()
    thinning = RepeatedDriverLineFilter(60.0, clock)
    errors = [OSError(111, "Connection refused"), ConnectionResetError(104, "Connection reset by peer"),
              TimeoutError("timed out")]
    assert thinning.filter(_pool_floor_line(errors[0]))
    for error in errors[1:]:
        clock.now += 3
        assert not thinning.filter(_pool_floor_line(error))
    clock.now = 1061.0
    last = _pool_floor_line(errors[2])
    assert thinning.filter(last)
    assert last.getMessage() == ("Failed to restore the pool connection floor; retrying: TimeoutError: timed out "
                                 "(and 2 more like it in the last 61 s)")
