"""The PostgreSQL store's ledger watch, as it logs a check that could not run."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from keytrail.kms.postgres_ledger import LedgerWatch
from keytrail.kms.sealing import RootKey


class _StalledPool:
    """A pool whose every acquire times out, as asyncpg's does with the database not answering."""

    def acquire(self, timeout: float) -> Any:
        raise TimeoutError


async def test_a_check_the_database_did_not_answer_says_so_rather_than_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    # A TimeoutError has no words of its own: the line ended at "could not run: ".
    root = RootKey(os.urandom(32))
    watch = LedgerWatch(_StalledPool(), lambda: root, every=0.01)
    watch.start(timeout=10)
    try:
        async with asyncio.timeout(30):
            while "could not run" not in caplog.text:
                await asyncio.sleep(0.01)
    finally:
        await watch.stop()
    assert "key store: the ledger check could not run: no answer within 10 s" in caplog.text
