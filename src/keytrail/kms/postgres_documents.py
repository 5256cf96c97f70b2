"""The PostgreSQL store's documents as a whole: read for an upgrade or a root key rotation, and
the root key check in `kms_root_key` that every node opening the store must open. A store of a
version before gets its ledger (kms/store_ledger.py, kms/store_upgrade.py) as it is opened."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import asyncpg

from keytrail.kms.authentic_docs import DocumentRefused, verify
from keytrail.kms.codec import grant_from_doc
from keytrail.kms.grants import GrantTerm, filed_terms
from keytrail.kms.postgres_ledger import LEDGER_SCHEMA
from keytrail.kms.resealing import GRANTS, POSTGRES_TABLES, DocumentTable, reauthenticated
from keytrail.kms.sealing import AUTHENTICATED_SEAL, RootKey, SealError
from keytrail.kms.store import Grant
from keytrail.kms.store_ledger import Ledger
from keytrail.kms.store_upgrade import Document, opening_plan

__all__ = [
    "UPSERT_ALIAS", "UPSERT_GRANT", "UPSERT_IMPORT", "UPSERT_KEY", "UPSERT_OWED", "UPSERT_STORE",
    "PrivilegesMissing", "check_privileges", "filed_values", "make_schema", "name_grantees", "open_documents",
    "reauthenticate", "term_values",
]

# A table or column added here must be one _SCHEMA_MISSING looks for too: a store that has the rest
# skips SCHEMA (a role that may only use the tables an administrator made cannot run it).
SCHEMA = """
CREATE TABLE IF NOT EXISTS kms_keys (account TEXT, region TEXT, key_id TEXT, created TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, key_id));
CREATE TABLE IF NOT EXISTS kms_aliases (account TEXT, region TEXT, name TEXT, key_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, name));
CREATE TABLE IF NOT EXISTS kms_grants (account TEXT, region TEXT, key_id TEXT, grant_id TEXT, created TEXT,
    doc TEXT NOT NULL, grantee TEXT, terms_filed BOOLEAN, PRIMARY KEY (account, region, key_id, grant_id));
CREATE TABLE IF NOT EXISTS kms_import_parameters (token_id TEXT PRIMARY KEY, valid_to TEXT, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS kms_custom_key_stores (account TEXT, region TEXT, store_id TEXT, created TEXT,
    doc TEXT NOT NULL, PRIMARY KEY (account, region, store_id));
CREATE TABLE IF NOT EXISTS kms_owed_records (event_id TEXT PRIMARY KEY, doc TEXT NOT NULL,
    written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS kms_key_last_use (account TEXT, region TEXT, key_id TEXT, doc TEXT NOT NULL,
    PRIMARY KEY (account, region, key_id));
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'kms_owed_records' AND column_name = 'written_at') THEN
        ALTER TABLE kms_owed_records ADD COLUMN written_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp();
    END IF;
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'kms_grants' AND column_name = 'grantee') THEN
        ALTER TABLE kms_grants ADD COLUMN grantee TEXT;
    END IF;
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'kms_grants' AND column_name = 'terms_filed') THEN
        ALTER TABLE kms_grants ADD COLUMN terms_filed BOOLEAN;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS kms_aliases_by_name ON kms_aliases (account, region, name COLLATE "C");
CREATE INDEX IF NOT EXISTS kms_aliases_by_key ON kms_aliases (account, region, key_id, name COLLATE "C");
CREATE INDEX IF NOT EXISTS kms_grants_by_grantee ON kms_grants (account, region, key_id, grantee);
CREATE INDEX IF NOT EXISTS kms_grants_unfiled ON kms_grants (account, region, key_id) WHERE terms_filed IS NULL;
CREATE INDEX IF NOT EXISTS kms_grants_by_id ON kms_grants (grant_id);
CREATE TABLE IF NOT EXISTS kms_grant_terms (term TEXT, account TEXT, region TEXT, key_id TEXT, grant_id TEXT,
    exact BOOLEAN NOT NULL DEFAULT FALSE, PRIMARY KEY (term, account, region, key_id, grant_id),
    FOREIGN KEY (account, region, key_id, grant_id) REFERENCES kms_grants ON DELETE CASCADE);
-- The terms a version before filed have their grants filed again as the node opens the store: their
-- `exact` is not known, every grant under them is read until then.
DO $$ BEGIN
    IF NOT EXISTS (SELECT FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'kms_grant_terms' AND column_name = 'exact') THEN
        ALTER TABLE kms_grant_terms ADD COLUMN exact BOOLEAN NOT NULL DEFAULT FALSE;
        UPDATE kms_grants SET terms_filed = NULL;
    END IF;
END $$;
CREATE INDEX IF NOT EXISTS kms_grant_terms_of_grant ON kms_grant_terms (account, region, key_id, grant_id);
CREATE INDEX IF NOT EXISTS kms_grant_terms_inexact ON kms_grant_terms (term) WHERE NOT exact;
CREATE TABLE IF NOT EXISTS kms_root_key (id INTEGER PRIMARY KEY, sealed TEXT NOT NULL);
""" + LEDGER_SCHEMA
# Whether a table or column SCHEMA makes is missing, found as the store's statements find them
# (search_path). CREATE TABLE IF NOT EXISTS needs CREATE on the schema even for a table that is
# there, so running SCHEMA on a complete store refused a role that may only use the tables an
# administrator made (least privilege): "permission denied for schema public".
_SCHEMA_MISSING = """SELECT EXISTS (SELECT FROM unnest($1::text[]) AS t(name) WHERE to_regclass(t.name) IS NULL)
    OR NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = to_regclass('kms_owed_records')
                   AND attname = 'written_at' AND NOT attisdropped)
    OR to_regclass('kms_grants_by_grantee') IS NULL OR to_regclass('kms_grants_unfiled') IS NULL
    OR to_regclass('kms_grants_by_id') IS NULL OR to_regclass('kms_grant_terms_of_grant') IS NULL
    OR to_regclass('kms_grant_terms_inexact') IS NULL OR to_regclass('kms_aliases_by_name') IS NULL
    OR to_regclass('kms_aliases_by_key') IS NULL"""
_SCHEMA_TABLES = [*(f"kms_{table.name}" for table in POSTGRES_TABLES), "kms_root_key", "kms_ledger", "kms_grant_terms"]
# What the store does to each of its tables. A role lacking one of them started a node that then
# failed some calls only (a RevokeGrant without DELETE), each with a traceback in the log, while
# every write's owed audit records stayed behind in kms_owed_records.
_PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE"]
_LACKING = """SELECT p, array_agg(t ORDER BY t) FROM unnest($1::text[]) AS p, unnest($2::text[]) AS t
    WHERE NOT has_table_privilege(t, p) GROUP BY p ORDER BY array_position($1::text[], p)"""
UPSERT_KEY = """INSERT INTO kms_keys VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (account, region, key_id) DO UPDATE SET doc = EXCLUDED.doc"""
UPSERT_ALIAS = """INSERT INTO kms_aliases VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (account, region, name) DO UPDATE SET key_id = EXCLUDED.key_id, doc = EXCLUDED.doc"""
# `grantee`: the grant's grantee principal, outside its document, so that CreateGrant's Name reads
# the grantee's grants only (`PostgresStore.grants_to`), and the rows of `kms_grant_terms`: the terms
# the grant is filed under (`term_values`), so that authorizing a call reads only the grants that may
# allow it (`PostgresStore.grants_allowing`), each from an index, and of those `exact` under a term
# (kms/grants.py: `exact_terms`), one. They are no more than hints: whoever
# can write the tables can change them, and the verified document decides. `terms_filed` tells a
# grant filed so from one a node of before wrote: that one is read for every call on its key. One
# statement (LedgerWriter.put runs one); the terms of a grant written over (not by keytrail's calls:
# a grant does not change) are those it is written with, a grant's terms go with its row.
UPSERT_GRANT = """WITH written AS (
        INSERT INTO kms_grants (account, region, key_id, grant_id, created, grantee, terms_filed, doc)
        VALUES ($1, $2, $3, $4, $5, $6, TRUE, $9)
        ON CONFLICT (account, region, key_id, grant_id) DO UPDATE SET doc = EXCLUDED.doc,
            grantee = EXCLUDED.grantee, terms_filed = TRUE
        RETURNING account, region, key_id, grant_id),
    stale AS (DELETE FROM kms_grant_terms AS t USING written AS w
        WHERE (t.account, t.region, t.key_id, t.grant_id) = (w.account, w.region, w.key_id, w.grant_id)
        AND t.term <> ALL($7::text[]))
    INSERT INTO kms_grant_terms (term, account, region, key_id, grant_id, exact)
    SELECT f.term, account, region, key_id, grant_id, f.exact
    FROM written, unnest($7::text[], $8::boolean[]) AS f(term, exact)
    ON CONFLICT (term, account, region, key_id, grant_id) DO UPDATE SET exact = EXCLUDED.exact"""
# valid_to too: left as first written, a token written again with a later one was deleted as stale
# by the next put, two days after its first valid_to (the ledger property test found it).
UPSERT_IMPORT = """INSERT INTO kms_import_parameters VALUES ($1, $2, $3)
    ON CONFLICT (token_id) DO UPDATE SET valid_to = EXCLUDED.valid_to, doc = EXCLUDED.doc"""
# `written_at`: the database's clock, which every node sharing the store reads, whatever each node's
# own says (a node's --dev-clock moved on): a tick counts an owed row's grace from it.
UPSERT_OWED = """INSERT INTO kms_owed_records (event_id, doc) VALUES ($1, $2)
    ON CONFLICT (event_id) DO UPDATE SET doc = EXCLUDED.doc, written_at = clock_timestamp()"""
UPSERT_STORE = """INSERT INTO kms_custom_key_stores VALUES ($1, $2, $3, $4, $5)
    ON CONFLICT (account, region, store_id) DO UPDATE SET doc = EXCLUDED.doc"""

# An empty value sealed under the root key of the first node: every later node must open it.
_ROOT_KEY_CHECK = "root-key-check"
# The same, sealed once the store's documents are authenticated (kms/store_upgrade.py): a node
# opening such a store with a ledger row skips the upgrade's reading of every row (the ledger check
# that follows reads their MACs). Deleting it, or putting back the value of before, only has that
# reading done again, which finds the store authenticated.
_AUTHENTICATED_CHECK = _ROOT_KEY_CHECK + AUTHENTICATED_SEAL


async def make_schema(connection: Any) -> None:
    """Make the tables, columns and indexes of the store that are missing (SCHEMA); PrivilegesMissing
    if the role may not: a new store's tables, and those a version adds to an older store's, are
    made by a role that may, once (docs/operations.md)."""
    if not await connection.fetchval(_SCHEMA_MISSING, _SCHEMA_TABLES):
        return
    role = await connection.fetchval("SELECT current_user")  # asked first: a refused SCHEMA ends the transaction
    try:
        await connection.execute(SCHEMA)
    except asyncpg.InsufficientPrivilegeError as exc:
        raise PrivilegesMissing(
            f"the role {role} may not make the key store's tables, or add to them what this version of keytrail "
            f"needs ({exc}): start one node once as the tables' owner") from None


class PrivilegesMissing(PermissionError):
    """The store's role may not read or write one of its tables."""


async def check_privileges(connection: Any) -> None:
    """PrivilegesMissing, naming each privilege and table, unless the role may do what the store
    does to each of its tables (and write at all): said as the node starts, not by the first call
    that needs it."""
    # A hot standby, or a role or database with default_transaction_read_only: only the tables'
    # CREATE refused it, which a store whose tables are there no longer runs.
    if await connection.fetchval("SHOW transaction_read_only") == "on":
        raise PrivilegesMissing("the database is read-only for this node (transaction_read_only is on: a hot "
                                "standby, or default_transaction_read_only set): the key store writes to it")
    if lacking := await connection.fetch(_LACKING, _PRIVILEGES, _SCHEMA_TABLES):
        role = await connection.fetchval("SELECT current_user")
        raise PrivilegesMissing(
            f"the role {role} lacks " + "; ".join(f"{row[0]} on {', '.join(row[1])}" for row in lacking)
            + ": GRANT SELECT, INSERT, UPDATE, DELETE on the key store's tables to it")


def _update(table: DocumentTable) -> str:
    where = " AND ".join(f"{column}=${n}" for n, column in enumerate(table.primary_key, 2))
    return f"UPDATE kms_{table.name} SET doc=$1 WHERE {where}"


async def _documents(connection: Any) -> list[Document]:
    found: list[Document] = []
    for table in POSTGRES_TABLES:
        rows = await connection.fetch(f"SELECT {', '.join(table.primary_key)}, doc FROM kms_{table.name}")
        found += [(table, tuple(row[column] for column in table.primary_key), row["doc"]) for row in rows]
    return found


async def open_documents(connection: Any, root: RootKey) -> None:
    """SealError unless `root` is the root key the store is sealed and authenticated under (a node
    with another one would fail every call on the others' keys, and seal its own where no other
    node can open them); a store of a version before, whose documents carry no MAC, is upgraded
    (kms/store_upgrade.py). Under the schema lock: nodes starting together do this one by one."""
    check = await connection.fetchval("SELECT sealed FROM kms_root_key WHERE id = 1")
    authenticated = check is not None and _opens(root, check, _AUTHENTICATED_CHECK)
    if authenticated and await connection.fetchval("SELECT doc FROM kms_ledger WHERE id = 1") is not None:
        return
    if check is not None and not authenticated:
        root.unseal_text(check, _ROOT_KEY_CHECK)  # SealError: another root key
    # The ledger row locked as every write locks it first: the rows read next are those of the
    # same write as the ledger, not of one that other nodes (this reading is not only for an
    # upgrade: `kms_root_key` deleted has it done again) commit between two of these statements.
    ledger = await connection.fetchval("SELECT doc FROM kms_ledger WHERE id = 1 FOR UPDATE")
    # LedgerMismatch for a store whose rows are not its ledger's, or whose ledger row was deleted
    upgrades, new_ledger = opening_plan(await _documents(connection), ledger, root)
    for table, row, text in upgrades:
        await connection.execute(_update(table), text, *row)
    if new_ledger is not None:
        await connection.execute("INSERT INTO kms_ledger VALUES (1, $1)", new_ledger)
    await connection.execute("INSERT INTO kms_root_key VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET sealed = $1",
                             root.seal_text(b"", _AUTHENTICATED_CHECK))


_UNNAMED_GRANTS = """SELECT account, region, key_id, grant_id, doc FROM kms_grants
    WHERE grantee IS NULL OR terms_filed IS NULL"""
# One statement for them all (an executemany of one UPDATE per row ran past the statement timeout
# of 10 s at 5,000 grants on a busy machine).
_NAME_GRANTEES = """UPDATE kms_grants AS g SET grantee = n.grantee, terms_filed = TRUE
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])
        AS n(grantee, account, region, key_id, grant_id)
    WHERE (g.account, g.region, g.key_id, g.grant_id) = (n.account, n.region, n.key_id, n.grant_id)"""
_FILE_GRANTS = """INSERT INTO kms_grant_terms (term, account, region, key_id, grant_id, exact)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[])
    ON CONFLICT (term, account, region, key_id, grant_id) DO UPDATE SET exact = EXCLUDED.exact"""


def term_values(account: str, region: str, key_id: str, terms: Iterable[GrantTerm]) -> list[str]:
    """The `term` values of `kms_grant_terms` for a grant on this key filed under `terms`
    (kms/grants.py), or those a call on it looks up: a short digest of each, with its key, so that
    the index finds the grants of one key, where a term alone (a service role's DescribeKey) is
    every key's."""
    return [hashlib.blake2b(repr((account, region, key_id, *term)).encode(), digest_size=16).hexdigest()
            for term in terms]


def filed_values(grant: Grant) -> tuple[list[str], list[bool]]:
    """The `term` and `exact` values of the rows of `kms_grant_terms` that file `grant`."""
    filed = sorted(filed_terms(grant))
    return term_values(grant.account, grant.region, grant.key_id, (term for term, _ in filed)), [e for _, e in filed]


async def name_grantees(connection: Any, root: RootKey) -> None:
    """Fill in the `grantee` column and the terms (`kms_grant_terms`) of the grants written before
    they were kept (or by a node of before since), from their documents. A row whose document does
    not verify gets none: every call on its key reads it, and is refused, as before."""
    named, filed = [], []
    for found in await connection.fetch(_UNNAMED_GRANTS):
        row = tuple(found[column] for column in GRANTS.primary_key)
        try:
            body = verify(root, GRANTS.name, row, found["doc"])
        except DocumentRefused:
            continue
        grant = grant_from_doc(body)
        named.append((grant.grantee_principal, *row))
        terms, exact = filed_values(grant)
        filed += [(term, *row, is_exact) for term, is_exact in zip(terms, exact, strict=True)]
    for statement, rows in ((_FILE_GRANTS, filed), (_NAME_GRANTEES, named)):
        if rows:
            await connection.execute(statement, *(list(column) for column in zip(*rows, strict=True)))


def _opens(root: RootKey, sealed: str, binding: str) -> bool:
    try:
        root.unseal_text(sealed, binding)
    except SealError:
        return False
    return True


async def reauthenticate(connection: Any, old: RootKey, new: RootKey) -> int:
    """Every document verified under `old`, sealed and authenticated again under `new`, the ledger
    computed again under `new`, and the root key check sealed under `new`; the number of documents
    (`PostgresStore.reseal`). LedgerMismatch, changing nothing, if the rows are not the ledger's:
    a rotation must not launder rows rolled back into a ledger of its own."""
    documents = await _documents(connection)
    opening_plan(documents, await connection.fetchval("SELECT doc FROM kms_ledger WHERE id = 1"), old)
    ledger = Ledger()
    for table, row, text in documents:
        resealed = reauthenticated(table, row, text, old, new)
        await connection.execute(_update(table), resealed, *row)
        ledger.add(new, table.name, row, resealed)
    await connection.execute("UPDATE kms_ledger SET doc=$1 WHERE id=1", ledger.to_doc(new))
    await connection.execute("UPDATE kms_root_key SET sealed=$1 WHERE id=1", new.seal_text(b"", _AUTHENTICATED_CHECK))
    return len(documents)
