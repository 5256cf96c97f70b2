"""The shared key store: PostgreSQL, for several keytrail nodes (and Regions) over one keyspace.

Same documents and sealing as the SQLite store, but no in-memory copy: every read goes to the
database, so what one node writes (a ReplicateKey into another Region, a rotation reaching the
replicas) is what every other node serves next, and a Region keeps serving while the node that
wrote it is down. Every node must hold the same root key (`KEYTRAIL_ROOT_KEY`).

Every write updates the store's ledger in its transaction, and the rows are checked against the
ledger as a node connects and every minute after (kms/postgres_ledger.py): rows rolled back,
deleted or added outside keytrail stop the node's calls until it restarts, and its start. The
database replaced whole by an older copy of itself, ledger included (a backup restored), is not
detected.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg

from keytrail.kms.authentic_docs import DocumentRefused, Row, authenticate, verify
from keytrail.kms.codec import (
    alias_from_doc,
    alias_to_doc,
    forget_sealed,
    grant_from_doc,
    grant_to_doc,
    key_from_doc,
    key_to_doc,
    retain_sealed,
)
from keytrail.kms.grants import grant_terms, request_terms
from keytrail.kms.keys import Key
from keytrail.kms.loop_slices import in_slices
from keytrail.kms.model import CallRecord
from keytrail.kms.owed_records import Owing
from keytrail.kms.postgres_connections import PostgresConnections, session_settings
from keytrail.kms.postgres_documents import (
    UPSERT_ALIAS,
    UPSERT_GRANT,
    UPSERT_KEY,
    check_privileges,
    filed_values,
    make_schema,
    name_grantees,
    open_documents,
    reauthenticate,
    term_values,
)
from keytrail.kms.postgres_last_use import PostgresLastUse
from keytrail.kms.postgres_ledger import CHECK_EVERY, LedgerWatch, LedgerWriter
from keytrail.kms.postgres_owed_records import OWED_GRACE_SECONDS, PostgresOwedRecords
from keytrail.kms.postgres_sealed_rows import PostgresSealedRows
from keytrail.kms.resealing import (
    ALIASES,
    GRANTS,
    KEY_LAST_USE,
    KEYS,
    POSTGRES_TABLES,
    DocumentTable,
)
from keytrail.kms.sealing import RootKey
from keytrail.kms.store import Alias, Grant, GrantPosition, KeyPosition
from keytrail.kms.store_ledger import LedgerMismatch
from keytrail.kms.tampering import Tampering

__all__ = ["DEFAULT_TIMEOUT", "OWED_GRACE_SECONDS", "PostgresStore", "ResealedNotErased", "StoreBusy"]

# Seconds a statement, a connection or a key's lock may take: well within a client's patience
# (botocore reads for 60 s), so a stalled database gets a retryable answer, not a hung call.
DEFAULT_TIMEOUT = 10.0
# A connection that came back from a query this recently shows the database answers (`ping`).
PING_RECENT_SECONDS = 1.0

_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('keytrail.schema', 0))"
_DOCUMENT_NAMES = ", ".join(f"kms_{table.name}" for table in POSTGRES_TABLES)
_OF_KEY = "account=$1 AND region=$2 AND key_id=$3"
# Keys of a whole-store read (`all_keys`: the scheduler's tick every 30 s, the node's start) verified
# and decoded between two passes of the event loop (kms/loop_slices.py): all at once, 5,000 keys held
# every call 140-240 ms (100,000 keys, seconds). A slice is 2-4 ms.
_KEYS_SLICE = 64
# A page of ListKeys, picked by the database: only its rows are verified and decoded (≈ 70 µs a key;
# every key of the Region, for each page, took seconds at AWS's quota of 100,000). In byte order, as
# ListKeys' was when it sorted every key in Python. `created` is the creation date as `isoformat`
# writes it, in UTC: its byte order is time order (`+00:00` after a whole second sorts before `.`).
_KEYS_PAGE = """SELECT account, region, key_id, created, doc FROM kms_keys WHERE account=$1 AND region=$2 {after}
    ORDER BY created COLLATE "C", key_id COLLATE "C" LIMIT $3"""
# After the marker's key: where it stands while it is there; where its date as a timestamp says
# once it is gone. A timestamp (a float) is microseconds off past the year 2242, which would list
# keys created in one instant (a clock that does not move) again, or skip them.
_AFTER_KEY = """AND (created COLLATE "C", key_id COLLATE "C") > (COALESCE(
    (SELECT created FROM kms_keys WHERE account=$1 AND region=$2 AND key_id=$5), $4) COLLATE "C", $5 COLLATE "C")"""
# A page of ListAliases (an account may hold 50,000 aliases in a Region: every one was read and
# verified for each page), in name order as code points order them (the "C" collation, which
# UTF-8's bytes follow): its index orders names so, whatever the database's collation. `after` is
# the marker's name, `key` the KeyId's key: both indexes end on the name.
_ALIASES_PAGE = """SELECT account, region, name, key_id, doc FROM kms_aliases WHERE account=$1 AND region=$2
    {after} {key} ORDER BY name COLLATE "C" LIMIT $3"""
# Grants verified and decoded, by row and document (which holds the MAC): a grantee's every call reads
# all of its grants on the key, and verifying each again (≈ 25 µs) cost a call ≈ 50 ms at 2,000 grants to
# its caller, ≈ 1.25 s at AWS's quota of 50,000 grants a key. The same text verifies the same way under
# the same root key (emptied when it changes); a row changed in any way is verified anew.
_VERIFIED_GRANTS = 32_768
# A page of ListGrants, picked by the database as a page of ListKeys is (a key may hold 50,000
# grants: verifying all of them for each page took ≈ 1.3 s of the event loop), ordered and placed
# after the marker's grant the same way. `where` holds the key, then the grantee and the position
# the page starts after, when there are.
_GRANTS_PAGE = """SELECT account, region, key_id, grant_id, created, doc FROM kms_grants WHERE {where}
    ORDER BY created COLLATE "C", grant_id COLLATE "C" LIMIT $4"""
# The grants a call may be allowed by (`grants_allowing`): those filed under the terms it looks up
# (of the `exact` ones under a term, one: it decides as all of them would), and those a node of
# before wrote, unfiled. Each term, and each grant it names, is one lookup by the index made for it
# (OFFSET 0 keeps the conditions on the grant's key out of that lookup):
# left to choose, a table not yet analyzed had the key's every grant scanned for each one found
# (100 s for 20,000). The key is asked for after: a row of kms_grant_terms may name another key's grant.
_GRANTS_ALLOWING = f"""SELECT g.account, g.region, g.key_id, g.grant_id, g.doc FROM unnest($4::text[]) AS wanted(term)
    CROSS JOIN LATERAL ((SELECT grant_id FROM kms_grant_terms WHERE term = wanted.term AND exact LIMIT 1)
        UNION ALL (SELECT grant_id FROM kms_grant_terms WHERE term = wanted.term AND NOT exact OFFSET 0)) AS filed
    CROSS JOIN LATERAL (SELECT account, region, key_id, grant_id, doc FROM kms_grants
        WHERE grant_id = filed.grant_id OFFSET 0) AS g
    WHERE g.account=$1 AND g.region=$2 AND g.key_id=$3
    UNION ALL SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE terms_filed IS NULL AND {_OF_KEY}"""
_AFTER_GRANT = """(created COLLATE "C", grant_id COLLATE "C") > (COALESCE(
    (SELECT created FROM kms_grants WHERE {of_key} AND grant_id={grant_id}), {created}) COLLATE "C",
    {grant_id} COLLATE "C")"""
# A role without pg_read_all_stats sees another role's sessions with backend_type NULL (their
# role name shown): counted as clients, or a rotation run as the tables' owner passed over nodes
# serving as another role, whose every call then failed as if the rows were forged. Background
# workers (autovacuum) have no role.
_OTHER_CLIENTS = """SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
    AND (backend_type = 'client backend' OR (backend_type IS NULL AND usename IS NOT NULL))
    AND pid <> pg_backend_pid()"""
# How long the VACUUM FULL after a root key rotation may take: it rewrites every document table,
# as long as their size takes (a large store's far over the calls' timeout, which cut it short).
VACUUM_SECONDS = 3600.0
# The document tables the role may not VACUUM: only their owner (or the database's) may, and
# PostgreSQL skips the others with a warning, not an error.
_NOT_VACUUMABLE = """SELECT array_agg(relname::text ORDER BY relname) FROM pg_class
    WHERE oid = ANY($1::text[]::regclass[]) AND NOT pg_has_role(relowner, 'USAGE')
    AND NOT pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')"""


def _storable(*names: str) -> bool:
    """Whether a row could be named so: PostgreSQL's text holds no NUL character, and asyncpg refuses
    a query with one. A caller may name one (KeyId "alias/a\\x00b", a forged ciphertext's key id): it
    names no row here, as in the SQLite store (here it was a KMSInternalException)."""
    return not any("\x00" in name for name in names)


class StoreBusy(Exception):
    """The key store cannot be resealed now: other clients are connected, or the role cannot
    rewrite its tables."""


class ResealedNotErased(Exception):
    """The key store is resealed under the new root key (committed), but the VACUUM FULL after the
    commit failed (no room for the tables' copies, a stop of the database): their files still hold
    the values sealed under the old key, as dead rows, until the `tables` are vacuumed in full."""

    def __init__(self, resealed: int, reason: str, tables: str) -> None:
        super().__init__(reason)
        self.resealed, self.reason, self.tables = resealed, reason, tables


async def _refuse_unless_vacuumable(connection: Any) -> None:
    """StoreBusy unless the role may rewrite every document table (VACUUM FULL). A role that does
    not own them had its rotation answered as done while the old root key's sealed values stayed
    in the tables' files, which a copy of the database gives to whoever holds that key."""
    if tables := await connection.fetchval(_NOT_VACUUMABLE, [f"kms_{table.name}" for table in POSTGRES_TABLES]):
        role = await connection.fetchval("SELECT current_user")
        raise StoreBusy(f"the role {role} does not own {', '.join(tables)}, so VACUUM FULL cannot rewrite them and "
                        "the old root key's sealed values would stay in their files: run root-key rotate as the "
                        "tables' owner; nothing was changed")


class PostgresStore(PostgresOwedRecords, PostgresSealedRows, PostgresLastUse):
    """Keys, aliases, grants, import parameters and custom key stores (PostgresSealedRows) in
    PostgreSQL, the audit records owed by changes (PostgresOwedRecords), and each key's last use
    by any node (PostgresLastUse). What those parts share of it is PostgresStoreBase's."""

    def __init__(self, pool: Any, root: RootKey, timeout: float = DEFAULT_TIMEOUT,
                 check_every: float = CHECK_EVERY) -> None:
        self._root = root
        self._owing = Owing()
        self._reported: set[tuple[str, Row]] = set()  # refused rows whole-store reads have logged
        self._verified_grants: dict[tuple[Row, str], Grant] = {}
        self.tampering = Tampering(table.name for table in POSTGRES_TABLES)
        self._ledger = LedgerWatch(pool, lambda: self._root, check_every, self.tampering)
        self._connections = PostgresConnections(pool, timeout, self._ledger.refuse_if_broken)

    def _doc(self, table: DocumentTable, row: Row, body: str) -> str:
        """The document to write in `row` of `table`: `body` with its MAC."""
        return authenticate(self._root, table.name, row, body)

    def _body(self, table: DocumentTable, found: Any) -> str:
        """The verified body of a fetched row (its primary key columns and doc); KMSInternalException,
        logged, if it does not verify."""
        row = tuple(found[column] for column in table.primary_key)
        try:
            return verify(self._root, table.name, row, found["doc"])
        except DocumentRefused as refusal:
            raise self.tampering.refused(refusal) from None

    def _verified_bodies(self, table: DocumentTable, rows: list[Any]) -> list[str]:
        """The bodies of the rows that verify: for reads over the whole store, which one bad row
        must not stop (the scheduler, the node's start, each scrape of /metrics). A refused row is
        logged the first time only: these reads come back every few seconds."""
        bodies = []
        for found in rows:
            row = tuple(found[column] for column in table.primary_key)
            try:
                bodies.append(verify(self._root, table.name, row, found["doc"]))
            except DocumentRefused as refusal:
                if (table.name, row) not in self._reported:
                    self._reported.add((table.name, row))
                    self.tampering.refused(refusal)
        return bodies

    @classmethod
    async def connect(cls, dsn: str, root: RootKey, timeout: float = DEFAULT_TIMEOUT,
                      check_every: float = CHECK_EVERY) -> PostgresStore:
        """Open a connection pool to `dsn`, create the tables if they are missing, check the root
        key and the rows against the ledger (LedgerMismatch), then every `check_every` seconds.
        Connecting, each statement and each wait for a pooled connection give up after `timeout`
        seconds."""
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8, timeout=timeout, command_timeout=timeout,
                                         server_settings=session_settings(timeout))
        try:
            async with pool.acquire(timeout=timeout) as connection, connection.transaction(isolation="read_committed"):
                # Nodes starting together on an empty database (docker compose up) would race on
                # CREATE TABLE IF NOT EXISTS, which is not safe against itself: one fails on
                # pg_type's unique index. The lock is released at the end of the transaction.
                await connection.execute(_SCHEMA_LOCK)
                await make_schema(connection)
                await check_privileges(connection)
                await open_documents(connection, root)
                await name_grantees(connection, root)
            store = cls(pool, root, timeout, check_every)
            await store._ledger.check(timeout)
        except BaseException:
            pool.terminate()  # at once: the database may be the one not answering
            raise
        store._ledger.start(timeout)
        return store

    async def _rows(self, sql: str, *args: Any) -> list[Any]:
        async with self._connections.connection() as connection:
            return list(await connection.fetch(sql, *args))

    @asynccontextmanager
    async def _ledgered(self) -> AsyncIterator[LedgerWriter]:
        """A write transaction, with the records the task's call owes (`owing`) if it changed a row,
        and the ledger row locked and written before the commit."""
        # READ COMMITTED whatever the database's default: a write that waited for the ledger's lock
        # reads the rows the write before left (a stricter level fails it: could not serialize).
        owed: list[CallRecord] = []
        async with self._connections.connection() as connection, connection.transaction(isolation="read_committed"):
            try:
                writer = await LedgerWriter.begin(connection, self._root)
            except LedgerMismatch as mismatch:  # its row deleted or forged under the running node
                raise self._ledger.broken(mismatch) from None
            yield writer
            for record in (owed := self._owing.records() if writer.changed else []):
                await self._put_owed(writer, record)
            await writer.commit()
            if owed:  # the COMMIT goes as the block ends: from here on, its answer may be lost
                self._owing.sending()
        if owed:
            self._owing.written()

    def key_lock(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[None]:
        # This process's lock, then PostgreSQL's advisory lock: every node's (kms/postgres_connections.py).
        return self._connections.key_lock(f"{account}/{region}/{key_id}")

    def key_lock_if_free(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[bool]:
        return self._connections.key_lock_if_free(f"{account}/{region}/{key_id}")

    # --- keys --------------------------------------------------------------------------------

    async def get_key(self, account: str, region: str, key_id: str) -> Key | None:
        if not _storable(account, region, key_id):
            return None
        rows = await self._rows(
            "SELECT account, region, key_id, doc FROM kms_keys WHERE account=$1 AND region=$2 AND key_id=$3",
            account, region, key_id,
        )
        return key_from_doc(self._body(KEYS, rows[0]), self._root) if rows else None

    async def put_key(self, key: Key) -> None:
        await self.put_keys([key])

    async def put_keys(self, keys: Sequence[Key]) -> None:
        async with self._ledgered() as writer:
            await self._puts(writer, keys)

    async def _puts(self, writer: LedgerWriter, keys: Sequence[Key]) -> None:
        for key in keys:
            row = (key.account, key.region, key.key_id)
            doc = self._doc(KEYS, row, key_to_doc(key, self._root))
            await writer.put(KEYS, row, UPSERT_KEY, (*row, key.creation_date.isoformat(), doc))

    async def delete_key(self, key: Key, changed: Sequence[Key] = ()) -> None:
        scope = (key.account, key.region, key.key_id)
        async with self._ledgered() as writer:
            for table in (KEYS, ALIASES, GRANTS, KEY_LAST_USE):
                await writer.delete(table, _OF_KEY, scope)
            await self._puts(writer, changed)
        forget_sealed(key, self._root)

    async def list_keys(self, account: str, region: str) -> list[Key]:
        rows = await self._rows(
            "SELECT account, region, key_id, doc FROM kms_keys WHERE account=$1 AND region=$2 ORDER BY created, key_id",
            account, region,
        )
        return [key_from_doc(self._body(KEYS, row), self._root) for row in rows]

    async def list_keys_page(self, account: str, region: str, after: KeyPosition | None, limit: int) -> list[Key]:
        if after is None:
            rows = await self._rows(_KEYS_PAGE.format(after=""), account, region, limit)
        else:
            created = datetime.fromtimestamp(after[0], UTC).isoformat()
            rows = await self._rows(_KEYS_PAGE.format(after=_AFTER_KEY), account, region, limit, created, after[1])
        return [self._listed_key(row) for row in rows]

    def _listed_key(self, found: Any) -> Key:
        """The key of a row of a ListKeys page, once its document verifies and its `created` column
        is the document's creation date: the column placed the row in the page, and one edited
        outside keytrail would hand out a marker that skips keys or lists them again."""
        key = key_from_doc(self._body(KEYS, found), self._root)
        if found["created"] != key.creation_date.isoformat():
            raise self.tampering.refused(DocumentRefused(KEYS.name, (key.account, key.region, key.key_id)))
        return key

    async def count_keys(self, account: str, region: str) -> int:
        rows = await self._rows("SELECT count(*) FROM kms_keys WHERE account=$1 AND region=$2", account, region)
        return int(rows[0][0])

    async def all_keys(self) -> list[Key]:
        """Every key that verifies (the scheduler's, the inventory's): a refused one is logged."""
        rows = await self._rows("SELECT account, region, key_id, doc FROM kms_keys")
        keys: list[Key] = []
        async for some in in_slices(rows, _KEYS_SLICE):
            keys += [key_from_doc(body, self._root) for body in self._verified_bodies(KEYS, some)]
        # Keys other nodes deleted leave this process's table of sealed values here (the scheduler's
        # tick reads every key). One this node writes meanwhile loses its entry: sealed anew next time.
        retain_sealed(keys, self._root)
        return keys

    # --- aliases -----------------------------------------------------------------------------

    async def get_alias(self, account: str, region: str, name: str) -> Alias | None:
        if not _storable(account, region, name):
            return None
        rows = await self._rows(
            "SELECT account, region, name, doc FROM kms_aliases WHERE account=$1 AND region=$2 AND name=$3",
            account, region, name,
        )
        return alias_from_doc(self._body(ALIASES, rows[0])) if rows else None

    def _alias_columns(self, alias: Alias) -> tuple[str, ...]:
        row = (alias.account, alias.region, alias.name)
        return (*row, alias.key_id, self._doc(ALIASES, row, alias_to_doc(alias)))

    async def put_alias(self, alias: Alias) -> None:
        await self._write_alias(alias, None)

    async def add_alias(self, alias: Alias) -> bool:
        return await self._write_alias(alias, False)

    async def update_alias(self, alias: Alias, *, was: Alias | None = None) -> bool:
        return await self._write_alias(alias, True, was)

    async def _write_alias(self, alias: Alias, existing: bool | None, was: Alias | None = None) -> bool:
        """Write the alias if its row exists (`existing` True; and holds `was`, if given), does not
        (False), or either (None): under the ledger's lock, which every node's writes take, no other
        write comes in between."""
        row = (alias.account, alias.region, alias.name)
        async with self._ledgered() as writer:
            if existing is not None:
                stored = await self._stored_alias(writer, row)
                if (stored is not None) != existing or (was is not None and stored != was):
                    return False
            await writer.put(ALIASES, row, UPSERT_ALIAS, self._alias_columns(alias))
        return True

    async def delete_alias(self, alias: Alias, *, if_unchanged: bool = False) -> bool:
        row = (alias.account, alias.region, alias.name)
        async with self._ledgered() as writer:
            if if_unchanged and await self._stored_alias(writer, row) != alias:
                return False
            await writer.delete_row(ALIASES, row)
        return True

    async def _stored_alias(self, writer: LedgerWriter, row: Row) -> Alias | None:
        """The alias `row` holds within the writer's transaction (None: no such row)."""
        doc = await writer.current(ALIASES, row)
        if doc is None:
            return None
        return alias_from_doc(self._body(ALIASES, dict(zip(ALIASES.primary_key, row, strict=True), doc=doc)))

    async def list_aliases(self, account: str, region: str) -> list[Alias]:
        rows = await self._rows(
            "SELECT account, region, name, doc FROM kms_aliases WHERE account=$1 AND region=$2 ORDER BY name",
            account, region,
        )
        return [alias_from_doc(self._body(ALIASES, row)) for row in rows]

    async def list_aliases_page(self, account: str, region: str, after: str | None, limit: int,
                                key_id: str | None = None) -> list[Alias]:
        args: list[Any] = [account, region, limit]
        where = {"after": "", "key": ""}
        if after is not None:
            args.append(after)
            where["after"] = f'AND name COLLATE "C" > ${len(args)}'
        if key_id is not None:
            args.append(key_id)
            where["key"] = f"AND key_id = ${len(args)}"
        rows = await self._rows(_ALIASES_PAGE.format(**where), *args)
        return [self._listed_alias(row, key_id) for row in rows]

    def _listed_alias(self, found: Any, key_id: str | None) -> Alias:
        """The alias of a row of a ListAliases page, once its document verifies and (a KeyId's page)
        names the key its `key_id` column does: the column placed it in that key's page."""
        alias = alias_from_doc(self._body(ALIASES, found))
        if key_id is not None and alias.key_id != found["key_id"]:
            raise self.tampering.refused(DocumentRefused(ALIASES.name, (alias.account, alias.region, alias.name)))
        return alias

    # --- grants ------------------------------------------------------------------------------

    async def put_grant(self, grant: Grant) -> None:
        row = (grant.account, grant.region, grant.key_id, grant.grant_id)
        doc = self._doc(GRANTS, row, grant_to_doc(grant))  # last, as LedgerWriter.put takes it
        args = (*row, grant.creation_date.isoformat(), grant.grantee_principal, *filed_values(grant), doc)
        async with self._ledgered() as writer:
            await writer.put(GRANTS, row, UPSERT_GRANT, args)

    async def delete_grant(self, grant: Grant) -> bool:
        async with self._ledgered() as writer:
            return await writer.delete_row(GRANTS, (grant.account, grant.region, grant.key_id, grant.grant_id))

    async def list_grants(self, account: str, region: str, key_id: str) -> list[Grant]:
        rows = await self._rows(
            "SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE account=$1 AND region=$2 "
            'AND key_id=$3 ORDER BY created COLLATE "C", grant_id COLLATE "C"',
            account, region, key_id,
        )
        return [self._grant(row) for row in rows]

    async def list_grants_page(self, account: str, region: str, key_id: str, after: GrantPosition | None,
                               limit: int, grantee: str | None = None) -> list[Grant]:
        found: list[Grant] = []
        while limit > 0:
            rows = await self._grant_rows((account, region, key_id), after, limit, grantee)
            grants = [self._listed_grant(row) for row in rows]
            # A row written without its grantee column (by a node of before it) is read for every
            # grantee, as grants_to reads it; its document says whose it is.
            kept = [grant for grant in grants if grantee is None or grant.grantee_principal == grantee]
            found += kept
            if len(rows) < limit:
                break
            limit -= len(kept)
            after = (grants[-1].creation_date.timestamp(), grants[-1].grant_id)
        return found

    async def _grant_rows(self, key: tuple[str, str, str], after: GrantPosition | None, limit: int,
                          grantee: str | None) -> list[Any]:
        """The rows of a ListGrants page (`list_grants_page`), `limit` at most."""
        where, args = [_OF_KEY], [*key, limit]
        if grantee is not None:
            args.append(grantee)
            where.append(f"(grantee=${len(args)} OR grantee IS NULL)")
        if after is not None:
            args += [datetime.fromtimestamp(after[0], UTC).isoformat(), after[1]]
            where.append(_AFTER_GRANT.format(of_key=_OF_KEY, created=f"${len(args) - 1}", grant_id=f"${len(args)}"))
        return await self._rows(_GRANTS_PAGE.format(where=" AND ".join(where)), *args)

    def _listed_grant(self, found: Any) -> Grant:
        """The grant of a row of a ListGrants page, once its document verifies and its `created`
        column is the document's creation date (as `_listed_key`'s)."""
        grant = self._grant(found)
        if found["created"] != grant.creation_date.isoformat():
            row = (grant.account, grant.region, grant.key_id, grant.grant_id)
            raise self.tampering.refused(DocumentRefused(GRANTS.name, row))
        return grant

    async def grants_to(self, account: str, region: str, key_id: str, grantees: Collection[str]) -> list[Grant]:
        """The key's grants to one of `grantees`, from the index on the `grantee` column: every call
        on a key asks, and a key may hold 50,000 grants (reading and verifying them all took
        ≈ 110 ms at 5,000). The column only narrows the read; the verified documents decide, and a
        row without one (written outside keytrail) is read for every caller, and refused."""
        rows = await self._rows(
            f"SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE {_OF_KEY} "
            "AND (grantee = ANY($4::text[]) OR grantee IS NULL) ORDER BY created, grant_id",
            account, region, key_id, list(grantees),
        )
        grants = (self._grant(row) for row in rows)
        return [grant for grant in grants if grant.grantee_principal in grantees]

    async def grants_allowing(self, account: str, region: str, key_id: str, grantees: Collection[str],
                              operation: str, context: Mapping[str, str]) -> list[Grant]:
        """The grants filed under the request's terms (`kms_grant_terms`): a caller
        may hold 50,000 grants on a key, each for another context, and reading them all cost each of
        its calls ≈ 80-170 ms at 20,000; of those filed `exact` under a term, one (20,000 to describe
        the key cost ≈ 200 ms when all were read). As in `grants_to`, the column only narrows the read and the
        verified documents decide; a row without terms (written by a node of before, or outside
        keytrail) is read for every call on its key, a term row forged is only one more grant to verify."""
        wanted = request_terms(grantees, operation, context)
        if not wanted:  # an operation no grant allows
            return []
        rows = await self._rows(_GRANTS_ALLOWING, account, region, key_id, term_values(account, region, key_id, wanted))
        grants = {row["grant_id"]: self._grant(row) for row in rows}  # a grant stale term rows name twice: once
        return [grant for grant in grants.values() if not wanted.isdisjoint(grant_terms(grant))]

    async def get_grant(self, account: str, region: str, key_id: str, grant_id: str) -> Grant | None:
        if not _storable(account, region, key_id, grant_id):
            return None
        rows = await self._rows(f"SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE {_OF_KEY} "
                                "AND grant_id=$4", account, region, key_id, grant_id)
        return self._grant(rows[0]) if rows else None

    def _grant(self, found: Any) -> Grant:
        """The grant of a fetched row (its primary key columns and doc), verified once per document
        (`_VERIFIED_GRANTS`); KMSInternalException, logged, if it does not verify."""
        held = (tuple(found[column] for column in GRANTS.primary_key), found["doc"])
        grant = self._verified_grants.get(held)
        if grant is None:
            grant = grant_from_doc(self._body(GRANTS, found))
            if len(self._verified_grants) >= _VERIFIED_GRANTS:
                self._verified_grants.clear()
            self._verified_grants[held] = grant
        return grant

    async def count_grants(self, account: str, region: str, key_id: str) -> int:
        rows = await self._rows(f"SELECT count(*) FROM kms_grants WHERE {_OF_KEY}", account, region, key_id)
        return int(rows[0][0])

    async def all_grants(self, region: str) -> list[Grant]:
        """Every grant of the Region that verifies, across accounts."""
        rows = await self._rows("SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE region=$1", region)
        return [grant_from_doc(body) for body in self._verified_bodies(GRANTS, rows)]

    async def grants_retirable_by(self, region: str, retiring_principal: str) -> list[Grant]:
        """As all_grants, those `retiring_principal` may retire only (ListRetirableGrants). The
        database keeps the rows whose document holds the principal as a JSON string (as its
        retiring principal, or as another member's value), and only those are verified: every grant
        of the Region, of every account, was verified on the event loop for each call (≈ 25 µs a
        grant), which any account's root could ask for."""
        rows = await self._rows(
            "SELECT account, region, key_id, grant_id, doc FROM kms_grants WHERE region=$1 AND strpos(doc, $2) > 0",
            region, json.dumps(retiring_principal),  # as grant_to_doc writes it
        )
        grants = [grant_from_doc(body) for body in self._verified_bodies(GRANTS, rows)]
        return [grant for grant in grants if grant.retiring_principal == retiring_principal]

    async def reseal(self, new: RootKey) -> int:
        """Seal every sealed value of the store again under `new` and authenticate every document
        under it, in one transaction, and do so under `new` from then on; the number of documents
        (`keytrail root-key rotate`). DocumentRefused, changing nothing, if one does not verify, and
        LedgerMismatch if the rows are not the ledger's. StoreBusy while another client is
        connected: a node still running would go on sealing under the old key, and what it wrote
        would open under neither. ResealedNotErased if the store is resealed but its tables' files
        could not be rid of the old values: the caller must not take the rotation for undone."""
        async with self._connections.connection() as connection:
            async with connection.transaction():
                await connection.execute(f"LOCK TABLE {_DOCUMENT_NAMES}, kms_ledger, kms_root_key IN EXCLUSIVE MODE")
                if others := await connection.fetchval(_OTHER_CLIENTS):
                    raise StoreBusy(f"{others} other client(s) are connected to the key store's database: "
                                    "stop every keytrail node first")
                await _refuse_unless_vacuumable(connection)
                count = await reauthenticate(connection, self._root, new)
            self._root = new
            self._verified_grants.clear()  # verified under the old root key
            # The old rows stay in the tables' files as dead tuples until a vacuum: rewrite the
            # files, so a copy of the database taken now gives the holder of the old key nothing.
            # After the commit: its failure raised out as the rotation's ("nothing was changed"),
            # and root.key was left holding the old key, which no longer opened the store.
            try:
                await connection.execute(f"VACUUM FULL {_DOCUMENT_NAMES}", timeout=VACUUM_SECONDS)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                reason = f"no answer within {VACUUM_SECONDS:g} s" if isinstance(exc, TimeoutError) else (
                    " ".join(str(exc).split()) or type(exc).__name__)
                raise ResealedNotErased(count, reason, _DOCUMENT_NAMES) from None
        return count

    async def check_ledger(self) -> bool:
        """Check the rows against the ledger now, as every `check_every` seconds: False, and every
        call refused from now on, if they do not match."""
        return await self._ledger.verify(self._connections.timeout)

    async def ping(self) -> None:
        """Raise unless the database answers (the health check): it did if a pooled connection
        came back without error within the last second, else a trivial query on the keys table
        must answer. Under load every pooled connection may be busy for longer than a health check
        waits, though the database answers each of them: a node that only asked would be taken
        out of rotation for being busy. Once the rows do not match the ledger, it says so."""
        if self._ledger.mismatch is not None:
            raise LedgerMismatch(self._ledger.mismatch.detail)
        if self._connections.answered_within(PING_RECENT_SECONDS):
            return
        async with self._connections.connection() as connection:
            await connection.fetchval("SELECT 1 FROM kms_keys LIMIT 1")

    async def close(self) -> None:
        """Close the pool; a database that does not answer cannot hold up a stopping node."""
        await self._ledger.stop()
        await self._connections.close()
