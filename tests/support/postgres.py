"""A PostgreSQL database of a test's own on the real server at 127.0.0.1:5432 (trust auth),
one-statement queries against it for tests that look under the key store, and a TCP proxy before
the server for tests that break the connection in chosen ways."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self

import asyncpg
import pytest

__all__ = ["ADMIN_DSN", "PostgresProxy", "admin", "database_url", "fetch", "fetch_value", "fresh_database",
           "scratch_database"]

ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A database of its own (its DSN), dropped on exit; skips the test without PostgreSQL."""
    try:
        admin = await asyncpg.connect(ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    name = f"keytrail_test_{os.urandom(6).hex()}"
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def admin(statement: str) -> None:
    """One statement as the server's superuser, on a connection of its own (CREATE/DROP DATABASE)."""
    connection = await asyncpg.connect(ADMIN_DSN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def scratch_database() -> Iterator[str]:
    """`fresh_database` for what is no coroutine (a fixture of `serve` processes): the database's
    name; dropped on exit, if a test has not dropped it first."""
    name = f"keytrail_test_{os.urandom(6).hex()}"
    try:
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at 127.0.0.1:5432: {exc}")
    try:
        yield name
    finally:
        asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def database_url(name: str, port: int = 5432) -> str:
    """The --store URL of database `name` on the server (or a relay before it on `port`)."""
    return f"postgresql://postgres@127.0.0.1:{port}/{name}"


async def fetch(dsn: str, statement: str, *args: Any) -> list[Any]:
    """The rows of one statement, on a connection of its own."""
    connection = await asyncpg.connect(dsn)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


async def fetch_value(dsn: str, statement: str, *args: Any) -> Any:
    """The first column of the first row of one statement (None without a row)."""
    rows = await fetch(dsn, statement, *args)
    return rows[0][0] if rows else None


class PostgresProxy:
    """Forwards TCP to the server at 127.0.0.1:5432 from a port of its own (`running`); a subclass
    decides in `_forward` what becomes of each chunk read."""

    def __init__(self) -> None:
        self.port = 0

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, source: asyncio.StreamWriter,
                       from_server: bool) -> bool:
        """Pass `data` on through `writer` (`source`: the writer back to where it came from); False
        to end this direction of the connection."""
        writer.write(data)
        await writer.drain()
        return True

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    source: asyncio.StreamWriter, from_server: bool) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if not await self._forward(data, writer, source, from_server):
                    break
        writer.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", 5432)
        await asyncio.gather(self._pipe(reader, server_writer, writer, from_server=False),
                             self._pipe(server_reader, writer, server_writer, from_server=True))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Self]:
        server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
