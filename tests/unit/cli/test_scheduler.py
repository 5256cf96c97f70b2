"""The node's scheduler: a key store refusing its ticks is said in the log when the refusal starts,
changes and ends, not on every tick (the PostgreSQL store's refusal itself: test_postgres_ledger)."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

from keytrail.cli.node import Node, _scheduler
from keytrail.kms import errors

TIMEOUT = errors.DependencyTimeoutException("The key store did not answer within 5 seconds.")
REFUSED = errors.KMSInternalException("The request was rejected because an internal exception occurred.")


class _Service:
    """A service whose ticks meet `outcomes` in turn (an exception raised, None a tick that ran),
    then run."""

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.ticks = asyncio.Event()

    async def run_due(self) -> None:
        if not self.outcomes:
            self.ticks.set()
            return
        if (outcome := self.outcomes.pop(0)) is not None:
            raise outcome


async def _log_of_ticks(service: _Service, caplog: pytest.LogCaptureFixture) -> list[str]:
    node = SimpleNamespace(service=service, settings=SimpleNamespace(scheduler_interval_seconds=0.001))
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        scheduler = asyncio.create_task(_scheduler(cast(Node, node)))
        await asyncio.wait_for(service.ticks.wait(), 5)
        scheduler.cancel()
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records]


async def test_a_refusal_over_many_ticks_is_logged_when_it_starts_and_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    lines = await _log_of_ticks(_Service(*[TIMEOUT] * 10), caplog)
    assert lines == [
        f"ERROR scheduled key maintenance failed: {TIMEOUT.message} (said again only once it runs, or fails otherwise)",
        "WARNING scheduled key maintenance runs again (the key store answers)"]


async def test_a_refusal_whose_reason_changes_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    lines = await _log_of_ticks(_Service(TIMEOUT, TIMEOUT, REFUSED, REFUSED, None, TIMEOUT), caplog)
    assert [line.split(": ")[1].split(" (")[0] for line in lines if line.startswith("ERROR")] == [
        TIMEOUT.message, REFUSED.message, TIMEOUT.message]
    assert sum("runs again" in line for line in lines) == 2


async def test_a_database_that_refuses_connections_is_logged_once_not_with_a_traceback_a_tick(
        caplog: pytest.LogCaptureFixture) -> None:
    # PostgreSQL stopped on a host that answers: asyncpg's ConnectionRefusedError is no KmsError,
    # and each tick logged it again with its traceback (some 120 an hour).
    refused = ConnectionRefusedError(111, "Connection refused")
    lines = await _log_of_ticks(_Service(*[refused] * 10), caplog)
    assert lines == [
        "ERROR scheduled key maintenance failed: the key store failed: Connection refused (said again "
        "only once it runs, or fails otherwise)",
        "WARNING scheduled key maintenance runs again (the key store answers)"]
    assert all(record.exc_info is None for record in caplog.records)
