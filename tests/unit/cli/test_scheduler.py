"""The node's scheduler: a key store refusing its ticks is said in the log when the refusal starts,
changes and ends, not on every tick (the PostgreSQL store's refusal itself: test_postgres_ledger);
and the log of requests refused before authentication is told every few seconds to say what it held
back."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import cast

import pytest

import keytrail.cli.node as node_module
from keytrail.api.app import KmsApp
from keytrail.api.refused_requests import LOG_EVERY_SECONDS, RefusedRequests
from keytrail.api.sigv4 import InvalidSignatureException
from keytrail.cli.node import Node, _say_overdue_refusals, _scheduler
from keytrail.kms import errors
from tests.support.clocks import SteppedClock

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


async def test_the_node_says_overdue_refusals_without_waiting_for_a_next_refusal(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    clock = SteppedClock()
    refused = RefusedRequests(clock)
    for _ in range(3):
        refused.refused(InvalidSignatureException("no"), "192.0.2.7", None)
    clock.now += LOG_EVERY_SECONDS
    monkeypatch.setattr(node_module, "REFUSALS_SAID_EVERY_SECONDS", 0.001)
    with caplog.at_level(logging.WARNING, logger="keytrail.api.refused_requests"):
        ticks = asyncio.create_task(_say_overdue_refusals(cast(KmsApp, SimpleNamespace(refused=refused))))
        try:
            for _ in range(500):
                if len(caplog.records) == 2:
                    break
                await asyncio.sleep(0.01)
        finally:
            ticks.cancel()
    assert caplog.records[-1].getMessage() == (
        "refused 2 more requests from 192.0.2.7 before authentication (InvalidSignatureException) since its last line")
