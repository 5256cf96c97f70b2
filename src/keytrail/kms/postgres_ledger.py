"""The PostgreSQL store's ledger (kms/store_ledger.py): kept in step by every write, and checked
against the rows as a node connects and then every minute.

Writes: each write transaction first locks the ledger row (`SELECT … FOR UPDATE`), so the writes
of every node sharing the store take turns. They are control-plane calls (CreateKey, PutKeyPolicy,
CreateGrant, …) and rare, and each node's write of its keys' last uses, a transaction a second at
most (kms/postgres_last_use.py); Encrypt, Decrypt, GenerateDataKey and the other calls that only
read neither write nor take that lock. The old row's document is read under the lock, its term leaves
the ledger, the new row's enters it, and the ledger row is written before the commit.

Checks: in one REPEATABLE READ snapshot, the ledger row and every row's key and MAC (its first
HEAD_CHARS characters), O(rows). Once the rows do not match (rows rolled back, deleted or added
outside keytrail, or the ledger row deleted), the node logs it in one line and refuses every call
on the store (KMSInternalException, like a refused document; the health check names it) until it is
restarted, when connecting checks again and refuses to start. Between two checks the documents'
MACs still refuse an edited or forged row on each read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from keytrail.kms import errors
from keytrail.kms.authentic_docs import HEAD_CHARS, DocumentRefused, Row
from keytrail.kms.resealing import POSTGRES_TABLES, DocumentTable
from keytrail.kms.sealing import RootKey
from keytrail.kms.store_ledger import Entry, Ledger, LedgerMismatch, NewerStore
from keytrail.kms.tampering import Tampering

__all__ = ["CHECK_EVERY", "LEDGER_SCHEMA", "LedgerWatch", "LedgerWriter", "Write", "read_ledger"]

log = logging.getLogger(__name__)

LEDGER_SCHEMA = "CREATE TABLE IF NOT EXISTS kms_ledger (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);"
# A row to write: its primary key, the document it holds now as the writing transaction read it
# (None: no row), and the upsert's arguments, the new document last.
Write = tuple[Row, str | None, tuple[Any, ...]]
# Seconds between two checks of the rows against the ledger: each reads a few bytes of every row.
CHECK_EVERY = 60.0


def _key_columns(table: DocumentTable) -> str:
    """The WHERE clause naming a row by its primary key, as parameters $1, $2, …"""
    return " AND ".join(f"{column}=${n}" for n, column in enumerate(table.primary_key, 1))


async def read_ledger(connection: Any, root: RootKey, *, lock: bool = False) -> Ledger:
    """The ledger the store records (LedgerMismatch if its row or table is gone, or it does not verify);
    `lock`: the row locked until the transaction ends."""
    try:
        text = await connection.fetchval("SELECT doc FROM kms_ledger WHERE id = 1" + (" FOR UPDATE" if lock else ""))
    except asyncpg.UndefinedTableError as exc:  # the ledger table dropped: its row deleted with it
        raise _missing_table(exc) from None
    if text is None:
        raise LedgerMismatch("the ledger row is missing (deleted)")
    try:
        return Ledger.from_doc(root, text)
    except DocumentRefused:
        raise LedgerMismatch("the ledger row does not verify under the root key") from None


def _missing_table(exc: asyncpg.UndefinedTableError) -> LedgerMismatch:
    return LedgerMismatch(f"a table of the key store is missing ({exc})")


class LedgerWriter:
    """One write transaction's changes, with the ledger row locked and kept in step."""

    def __init__(self, connection: Any, root: RootKey, ledger: Ledger) -> None:
        self._connection, self._root, self._ledger = connection, root, ledger
        self._changed = False

    @classmethod
    async def begin(cls, connection: Any, root: RootKey) -> LedgerWriter:
        return cls(connection, root, await read_ledger(connection, root, lock=True))

    @property
    def changed(self) -> bool:
        """Whether the transaction wrote or deleted a row so far."""
        return self._changed

    async def current(self, table: DocumentTable, row: Row) -> str | None:
        """The document `row` of `table` holds now (None: no such row)."""
        found: str | None = await self._connection.fetchval(
            f"SELECT doc FROM kms_{table.name} WHERE {_key_columns(table)}", *row)
        return found

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows `sql` reads in this transaction, under the ledger's lock."""
        return list(await self._connection.fetch(sql, *args))

    async def put(self, table: DocumentTable, row: Row, sql: str, args: tuple[Any, ...]) -> None:
        """Write `row` with `sql` (an upsert whose last argument is the document)."""
        old = await self.current(table, row)
        await self._connection.execute(sql, *args)
        self._ledger.replace(self._root, table.name, row, old, args[-1])
        self._changed = True

    async def put_many(self, table: DocumentTable, sql: str, writes: Sequence[Write]) -> None:
        """Write several rows with `sql` (an upsert whose last argument is the document) in one round
        trip, each over the document this transaction read in its row (`Write`)."""
        if not writes:
            return
        await self._connection.executemany(sql, [args for _, _, args in writes])
        for row, old, args in writes:
            self._ledger.replace(self._root, table.name, row, old, args[-1])
        self._changed = True

    async def delete(self, table: DocumentTable, where: str, args: tuple[Any, ...]) -> int:
        """Delete the rows of `table` that `where` (SQL with $1… for `args`) selects: how many."""
        columns = ", ".join(table.primary_key)
        deleted = await self._connection.fetch(f"DELETE FROM kms_{table.name} WHERE {where} RETURNING {columns}, doc",
                                               *args)
        for found in deleted:
            self._ledger.remove(self._root, table.name, tuple(found[column] for column in table.primary_key),
                                found["doc"])
            self._changed = True
        return len(deleted)

    async def delete_row(self, table: DocumentTable, row: Row) -> bool:
        """Delete `row` of `table`: whether it was there."""
        return await self.delete(table, _key_columns(table), row) > 0

    async def commit(self) -> None:
        """Write the ledger row (before the transaction commits)."""
        if self._changed:
            await self._connection.execute("UPDATE kms_ledger SET doc=$1 WHERE id = 1", self._ledger.to_doc(self._root))


async def _entries(connection: Any) -> list[Entry]:
    found: list[Entry] = []
    for table in POSTGRES_TABLES:
        columns = ", ".join(table.primary_key)
        rows = await connection.fetch(f"SELECT {columns}, left(doc, {HEAD_CHARS}) AS head FROM kms_{table.name}")
        found += [(table.name, tuple(row[column] for column in table.primary_key), row["head"]) for row in rows]
    return found


def _refusal() -> errors.KmsError:
    return errors.KMSInternalException("The request was rejected because an internal exception occurred.")


class LedgerWatch:
    """Whether the store's rows still match its ledger: checked by `check`, by the task `start`
    runs every `every` seconds; once they do not, every call is refused until the node restarts."""

    def __init__(self, pool: Any, root: Callable[[], RootKey], every: float = CHECK_EVERY,
                 tampering: Tampering | None = None) -> None:
        self._pool, self._root, self._every = pool, root, every
        self.mismatch: LedgerMismatch | None = None  # why the store refuses calls, once it does
        self._tampering = tampering  # the store's, told of a mismatch for /metrics
        self._task: asyncio.Task[None] | None = None

    def refuse_if_broken(self) -> None:
        """KMSInternalException once the store no longer matches its ledger."""
        if self.mismatch is not None:
            raise _refusal()

    def broken(self, mismatch: LedgerMismatch) -> errors.KmsError:
        """Refuse every call from now on, the log saying why once; the refusal to raise now."""
        if self.mismatch is None:
            self.mismatch = mismatch
            newer = isinstance(mismatch, NewerStore)  # a newer version wrote the store: no tampering
            if self._tampering is not None and not newer:
                self._tampering.ledger_mismatch = True
            until = "a node of the newer version serves the store in its place" if newer else "the database is restored"
            log.error("key store: %s: every call on it is refused until the node restarts (which refuses to start "
                      "until %s)", mismatch, until)
        return _refusal()

    async def check(self, timeout: float) -> None:
        """Read the ledger and every row in one snapshot; LedgerMismatch if they differ."""
        root = self._root()
        async with self._pool.acquire(timeout=timeout) as connection, connection.transaction(
                isolation="repeatable_read", readonly=True):
            try:
                recorded = await read_ledger(connection, root)
                entries = await _entries(connection)
            except asyncpg.UndefinedTableError as exc:  # a dropped table is its rows deleted
                raise _missing_table(exc) from None
        # In a worker thread: the terms of 100,000 rows take about a second of Python, which on
        # the event loop would hold up every call of the node meanwhile.
        recorded.check(await asyncio.to_thread(Ledger.of, root, entries))

    async def verify(self, timeout: float) -> bool:
        """One check, as the task runs it: False, and every call refused from now on, if the rows
        do not match the ledger."""
        try:
            await self.check(timeout)
        except LedgerMismatch as mismatch:
            self.broken(mismatch)
            return False
        return True

    def start(self, timeout: float) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(timeout))

    async def _run(self, timeout: float) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                if not await self.verify(timeout):
                    return  # refused until restart: nothing more to check
            except Exception as exc:  # the database away for a while: the calls say so, the next check runs
                # A TimeoutError has no words of its own: the line ended at "could not run: ".
                reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else str(exc)
                log.warning("key store: the ledger check could not run: %s", reason or type(exc).__name__)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
