"""A PostgreSQL database of a test's own on the real server at 127.0.0.1:5432 (trust auth), and
one-statement queries against it for tests that look under the key store."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

__all__ = ["ADMIN_DSN", "fetch", "fetch_value", "fresh_database"]

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
