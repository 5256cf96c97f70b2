"""A statement the database gave up (statement_timeout, lock_timeout, pg_cancel_backend) fails the
call with DependencyTimeoutException; its log line is thinned to one a minute, as the connection
limit's and the revoked privilege's are: under a statement_timeout too short for the load every
call is given up, and each wrote a line."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import pytest

from keytrail.kms import errors
from keytrail.kms.postgres_connections import REFUSED_LOG_SECONDS, PostgresConnections

_GAVE_UP = "the key store gave up a statement"


class _Connection:
    def is_closed(self) -> bool:
        return False


class _Pool:
    """What PostgresConnections asks of asyncpg's pool for a call with no key lock."""

    async def acquire(self, timeout: float) -> _Connection:
        return _Connection()

    async def release(self, connection: Any) -> None:
        pass


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _a_call_given_up(connections: PostgresConnections) -> errors.KmsError:
    with pytest.raises(errors.DependencyTimeoutException) as raised:
        async with connections.connection():
            raise asyncpg.QueryCanceledError("canceling statement due to statement timeout")
    return raised.value


def _lines_said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(_GAVE_UP)]


async def test_a_statement_given_up_is_logged_at_most_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    connections = PostgresConnections(_Pool(), 5.0, lambda: None, clock=clock)
    caplog.set_level(logging.WARNING)

    first = await _a_call_given_up(connections)
    assert first.message == ("The key store did not answer in time (canceling statement due to statement timeout). "
                             "You can retry the request.")
    assert _lines_said(caplog) == [f"{_GAVE_UP} (canceling statement due to statement timeout): the call fails "
                                   "with DependencyTimeoutException"]

    clock.now += REFUSED_LOG_SECONDS - 0.001
    second = await _a_call_given_up(connections)
    assert second.message == first.message  # the call still hears why
    assert len(_lines_said(caplog)) == 1

    clock.now += 0.001  # a minute after the line
    await _a_call_given_up(connections)
    assert len(_lines_said(caplog)) == 2


async def test_a_statement_given_up_does_not_hold_back_the_other_refusals_lines(
        caplog: pytest.LogCaptureFixture) -> None:
    # One time for every kind of refusal would let a flood of timeouts hide a revoked privilege.
    connections = PostgresConnections(_Pool(), 5.0, lambda: None, clock=_Clock())
    caplog.set_level(logging.WARNING)
    await _a_call_given_up(connections)
    with pytest.raises(errors.KMSInternalException):
        async with connections.connection():
            raise asyncpg.InsufficientPrivilegeError("permission denied for table kms_keys")
    assert [record.getMessage()[:34] for record in caplog.records] == [
        "the key store gave up a statement ", "the key store refused a statement "]
