"""The PostgreSQL store when the database stops answering (a network partition, a stalled server):
calls end with AWS's retryable DependencyTimeoutException in bounded time, instead of hanging
until the client gives up (and holding every pooled connection meanwhile)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.test_postgres_store import Node
from tests.support.postgres import PostgresProxy, fresh_database

pytestmark = pytest.mark.integration


class _StallingProxy(PostgresProxy):
    """Forwards TCP to PostgreSQL until `stall()`; from then on nothing goes through either way."""

    def __init__(self) -> None:
        super().__init__()
        self.stalled = asyncio.Event()

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, source: asyncio.StreamWriter,
                       from_server: bool) -> bool:
        if self.stalled.is_set():
            await asyncio.Event().wait()  # forever: a silent peer
        return await super()._forward(data, writer, source, from_server)


@pytest.mark.parametrize("operation", ["DescribeKey", "TagResource"])
async def test_a_database_that_stops_answering_gives_dependency_timeout(operation: str) -> None:
    async with fresh_database() as dsn, _StallingProxy().running() as proxy:
        via_proxy = dsn.replace(":5432/", f":{proxy.port}/")
        store = await PostgresStore.connect(via_proxy, RootKey(os.urandom(32)), timeout=1.0)
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        proxy.stalled.set()
        params = {"Tags": [{"TagKey": "k", "TagValue": "v"}]} if operation == "TagResource" else {}
        started = time.monotonic()
        with pytest.raises(errors.DependencyTimeoutException):
            await asyncio.wait_for(node(operation, KeyId=key_id, **params), timeout=30)
        assert time.monotonic() - started < 10
        await store.close()  # bounded too: a stopping node does not hang on the database
