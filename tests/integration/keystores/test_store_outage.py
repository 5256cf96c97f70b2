"""The PostgreSQL store when the database stops answering (a network partition, a stalled server):
calls end with AWS's retryable DependencyTimeoutException in bounded time, instead of hanging
until the client gives up (and holding every pooled connection meanwhile)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.test_postgres_store import Node
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration


class _StallingProxy:
    """Forwards TCP to PostgreSQL until `stall()`; from then on nothing goes through either way."""

    def __init__(self) -> None:
        self.stalled = asyncio.Event()
        self.port = 0

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if self.stalled.is_set():
                    await asyncio.Event().wait()  # forever: a silent peer
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", 5432)
        await asyncio.gather(self._pipe(reader, server_writer), self._pipe(server_reader, writer))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[_StallingProxy]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()


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
