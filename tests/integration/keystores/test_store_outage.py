"""The PostgreSQL store when the database stops answering (a network partition, a stalled server):
calls end with AWS's retryable DependencyTimeoutException in bounded time, instead of hanging
until the client gives up (and holding every pooled connection meanwhile)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable
from datetime import UTC, datetime

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.postgres_connections import PostgresConnections
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.test_postgres_store import Node
from tests.support.postgres import PostgresProxy, fetch, fresh_database

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
    # 20 calls at once, more than the pool's 8 connections, all on one key: each ends within about
    # one timeout. Before, a timed-out statement's connection went back through asyncpg's cancel
    # and the pool's reset (a timeout each), and TagResource calls queued on the key's lock waited
    # out each other's timeouts (the 20th after 20 s).
    timeout = 2.0
    async with fresh_database() as dsn, _StallingProxy().running() as proxy:
        via_proxy = dsn.replace(":5432/", f":{proxy.port}/")
        store = await PostgresStore.connect(via_proxy, RootKey(os.urandom(32)), timeout=timeout)
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        proxy.stalled.set()
        params = {"Tags": [{"TagKey": "k", "TagValue": "v"}]} if operation == "TagResource" else {}

        async def call() -> float:
            started = time.monotonic()
            with pytest.raises(errors.DependencyTimeoutException, match=f"within {timeout:g} seconds"):
                await asyncio.wait_for(node(operation, KeyId=key_id, **params), timeout=60)
            return time.monotonic() - started

        waits = await asyncio.gather(*(call() for _ in range(20)))
        assert max(waits) < 1.75 * timeout, sorted(waits)
        started = time.monotonic()
        await store.close()  # bounded too: a stopping node does not hang on the database
        assert time.monotonic() - started < timeout


async def test_a_statement_timing_out_under_a_key_lock_ends_within_one_timeout() -> None:
    # The database stops answering after the key's advisory lock was taken: the statement's timeout
    # ends the call, without a further wait for the unlock and the connection's return to the pool.
    timeout = 2.0
    async with fresh_database() as dsn, _StallingProxy().running() as proxy:
        via_proxy = dsn.replace(":5432/", f":{proxy.port}/")
        store = await PostgresStore.connect(via_proxy, RootKey(os.urandom(32)), timeout=timeout)
        connections = store._connections
        started = 0.0
        with pytest.raises(errors.DependencyTimeoutException):
            async with connections.key_lock("a/b/key"):
                proxy.stalled.set()
                started = time.monotonic()
                async with connections.connection() as connection:
                    await connection.fetchval("SELECT 1")
        assert time.monotonic() - started < 1.75 * timeout
        await store.close()


class _CuttingProxy(PostgresProxy):
    """Forwards TCP to PostgreSQL, but once `armed`, at the client's message `later` messages after
    the first one that holds `marker` (0: that one), closes the connection, or (`silent`) passes
    nothing more from the client, as a network partition does: the database's end stays open."""

    def __init__(self, marker: bytes, later: int = 0, silent: bool = False) -> None:
        super().__init__()
        self.marker, self.later, self.silent = marker, later, silent
        self.armed = self.cut = False
        self._left: int | None = None  # messages still to pass once the marker went by

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, source: asyncio.StreamWriter,
                       from_server: bool) -> bool:
        if self.armed and not from_server and not self.cut:
            if self._left is None and self.marker in data:
                self._left = self.later
            if self._left == 0:
                self.cut = True
                if self.silent:
                    await asyncio.Event().wait()  # forever
                writer.close()
                source.close()
                return False
            if self._left is not None:
                self._left -= 1
        return await super()._forward(data, writer, source, from_server)


async def _node_through(proxy: _CuttingProxy, dsn: str, root: RootKey | None = None,
                        timeout: float = 3.0) -> tuple[PostgresStore, Node]:
    """A node over `proxy`, armed once the node connected (which writes the schema)."""
    store = await PostgresStore.connect(dsn.replace(":5432/", f":{proxy.port}/"), root or RootKey(os.urandom(32)),
                                        timeout=timeout)
    proxy.armed = True
    return store, Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")


async def test_a_connection_lost_inside_a_write_fails_the_call_as_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    # The connection drops after BEGIN: asyncpg then raises, in place of the lost connection's
    # error, its InterfaceError of a transaction that cannot roll back on a closed connection (or an
    # InternalClientError). Those were taken for bugs: a traceback per call in flight as PostgreSQL
    # went away, and "An internal error occurred." in place of the retryable outage answer.
    async with fresh_database() as dsn, _CuttingProxy(b"BEGIN", later=1).running() as proxy:
        store, node = await _node_through(proxy, dsn)
        with pytest.raises(errors.KMSInternalException, match="can be retried"):
            await node("CreateKey")
        assert "out of reach (the connection to the key store was lost during a statement" in caplog.text
        assert "Traceback" not in caplog.text and "internal error" not in caplog.text, caplog.text
        # asyncpg's words for the call it refused on the closed connection say nothing to an operator
        assert "__aexit__" not in caplog.text and "switch to state" not in caplog.text, caplog.text
        assert (await node("ListKeys"))["Keys"] == []
        await store.close()


async def test_a_connection_lost_as_the_pool_takes_it_back_fails_no_call() -> None:
    # The write committed, then the pool's reset of the connection (ending its session's locks and
    # settings) found it gone. The call failed, though its change stood: a client retrying the
    # CreateKey it was told failed made a second key, and its audit record said it failed.
    async with fresh_database() as dsn, _CuttingProxy(b"pg_advisory_unlock_all").running() as proxy:
        store, node = await _node_through(proxy, dsn)
        created = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        assert proxy.cut
        assert [key["KeyId"] for key in (await node("ListKeys"))["Keys"]] == [created]
        assert [record.error_code for record in node.svc.deps.audit.records] == [None, None]
        await store.close()


async def test_a_node_cut_off_inside_a_write_holds_up_the_other_nodes_writes_for_a_while_only() -> None:
    # Node A goes silent (a partition, a machine gone) after its write took the ledger's row lock,
    # which every write of every node takes. PostgreSQL kept A's session, idle in its transaction,
    # until its TCP keepalive gave up (two hours and more by Linux's defaults): every write of every
    # node failed meanwhile. Now the database ends a session idle in a transaction after a few
    # timeouts, its locks with it.
    timeout, root = 1.0, RootKey(os.urandom(32))
    async with fresh_database() as dsn, _CuttingProxy(b"BEGIN", later=2, silent=True).running() as proxy:
        store_a, node_a = await _node_through(proxy, dsn, root, timeout)
        store_b = await PostgresStore.connect(dsn, root, timeout=timeout)
        node_b = Node(store_b, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        tags = {"Tags": [{"TagKey": "k", "TagValue": "v"}]}
        key_id = (await node_b("CreateKey"))["KeyMetadata"]["KeyId"]
        with pytest.raises(errors.DependencyTimeoutException):
            await node_a("TagResource", KeyId=key_id, **tags)
        assert proxy.cut
        started = time.monotonic()
        while not await _answers(node_b("TagResource", KeyId=key_id, **tags)):
            assert time.monotonic() - started < 12 * timeout, "node B's writes are still held up"
        await store_b.close()
        await store_a.close()


async def _answers(call: Awaitable[object]) -> bool:
    """Whether `call` answers, rather than time out on a lock."""
    try:
        await call
    except errors.DependencyTimeoutException:
        return False
    return True


async def test_the_database_finds_out_a_silent_node_within_about_two_timeouts() -> None:
    # A node gone silent outside a transaction still held its key's advisory lock in its session,
    # kept until TCP keepalive gave up, by Linux's defaults after 2 h 11 min.
    async with fresh_database() as dsn:
        store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)), timeout=10)
        async with store._connections.connection() as connection:
            idle, interval, count = [int(await connection.fetchval(f"SHOW tcp_keepalives_{name}"))
                                     for name in ("idle", "interval", "count")]
        assert idle + interval * count <= 20
        await store.close()


async def _terminate_sessions(dsn: str) -> None:
    """End every session of `dsn`'s database but the caller's, as a server's fast stop does (its
    "terminating connection due to administrator command"), without stopping the server others share."""
    await fetch(dsn, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = current_database() AND pid <> pg_backend_pid()")


async def _call_cut_off(connections: PostgresConnections, dsn: str) -> None:
    """A call whose session is ended under its statement: it fails as the outage it is."""
    with pytest.raises(errors.KMSInternalException, match="can be retried"):
        async with connections.connection() as connection:
            await _terminate_sessions(dsn)
            await connection.fetchval("SELECT 1")


async def test_a_call_in_flight_as_the_database_went_away_is_no_sign_that_it_answers_again(
        caplog: pytest.LogCaptureFixture) -> None:
    # A PostgreSQL restart under load: a call whose statement was answered just before the sessions
    # were ended handed its connection back after another call had found the store out of reach.
    # It was taken for the store answering again ("after 0 s out of reach", the same millisecond),
    # and the next call's failure logged the outage a second time.
    caplog.set_level(logging.WARNING, logger="keytrail")
    async with fresh_database() as dsn:
        store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)), timeout=3.0)
        connections = store._connections
        async with connections.connection() as in_flight:
            assert await in_flight.fetchval("SELECT 1") == 1
            await _call_cut_off(connections, dsn)
        await _call_cut_off(connections, dsn)  # after the call in flight handed its connection back
        await _answered_again(connections)  # a call begun in the outage: the store is back
        await store.close()
    said = [record.getMessage() for record in caplog.records if record.getMessage().startswith("the key store")]
    assert [line.split(" (")[0].split(",")[0] for line in said] == [
        "the key store is out of reach", "the key store answers again"], said


async def _answered_again(connections: PostgresConnections, seconds: float = 10.0) -> None:
    """Call until a call is served, as clients retry: the pool may still hand out a connection that
    the ended sessions left unusable (asyncpg's own refill of its pool among them)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            async with connections.connection() as connection:
                await connection.fetchval("SELECT 1")
            return
        except errors.KMSInternalException:
            assert time.monotonic() < deadline, "the store never answered again"
            await asyncio.sleep(0.1)
