"""`serve --store postgresql://…` on a PostgreSQL server whose shared lock table is full ("out of
shared memory": another session's locks fill the max_locks_per_transaction × max_connections slots,
which keytrail's advisory key locks take too): calls answer AWS's retryable error, the log says why
once with PostgreSQL's hint, and the node serves again by itself once the locks are let go."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.support.postgres_cluster import PostgresCluster, private_cluster
from tests.support.server import KeytrailServer
from tests.support.store_outage import failed_retryably, failure

pytestmark = pytest.mark.integration

@pytest.fixture(autouse=True)
def _root_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A server of the test's own with a small lock table (the smallest max_locks_per_transaction)."""
    with private_cluster() as running:
        asyncio.run(_statement(running, "ALTER SYSTEM SET max_locks_per_transaction = 10"))
        running.stop()
        running.start()
        yield running


async def _statement(cluster: PostgresCluster, statement: str) -> None:
    connection = await asyncpg.connect(cluster.url(), timeout=10)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


class _LockHog:
    """A session holding advisory locks until the server's lock table has no slot left."""

    def __init__(self, cluster: PostgresCluster) -> None:
        self._cluster = cluster
        self._connection: asyncpg.Connection | None = None

    async def __aenter__(self) -> _LockHog:
        self._connection = await asyncpg.connect(self._cluster.url(), timeout=10)
        with pytest.raises(asyncpg.OutOfMemoryError):
            for start in range(0, 10_000_000, 1000):
                await self._connection.execute(
                    "SELECT pg_advisory_lock(1000000 + n) FROM generate_series($1::bigint, $1 + 999) AS n", start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._connection is not None
        await self._connection.close()


def test_a_full_lock_table_answers_the_retryable_error_in_one_line_and_serves_again_once_freed(
        tmp_path: Path, cluster: PostgresCluster) -> None:
    server = KeytrailServer(tmp_path / "data", "--store", cluster.url(), dev_clock=False).start()
    try:
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]

        async def while_full() -> list[tuple[str, str, str]]:
            async with _LockHog(cluster):
                return [await asyncio.to_thread(failure, lambda: kms.tag_resource(
                    KeyId=key, Tags=[{"TagKey": "t", "TagValue": "v"}])) for _ in range(5)]

        failures = asyncio.run(while_full())
        kms.tag_resource(KeyId=key, Tags=[{"TagKey": "t", "TagValue": "after"}])
        log = server.log.read_text()
    finally:
        assert server.stop() == 0
    line = failed_retryably(server.data_dir, failures, log, "out of shared memory")
    assert "HINT: You might need to increase max_locks_per_transaction." in line, line
