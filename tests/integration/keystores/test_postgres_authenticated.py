"""The PostgreSQL store's documents are authenticated under the root key, each bound to its row
(real server at 127.0.0.1:5432): every read verifies what it reads, an old store is upgraded by
the first node that opens it, a stripped one is not, and root key rotation re-authenticates all."""

from __future__ import annotations

import json
import logging
import os

import asyncpg
import pytest

from keytrail.kms import errors
from keytrail.kms.authentic_docs import DocumentRefused
from keytrail.kms.codec import alias_to_doc, grant_to_doc
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.store import Alias
from keytrail.kms.store_ledger import LedgerMismatch
from tests.support.postgres import fetch_value
from tests.support.store_documents import (
    ACCOUNT,
    ALIAS,
    CKS,
    FORGED,
    GRANT,
    NOW,
    OTHER,
    OURS,
    REGION,
    TOKEN,
    legacy_key_doc,
    seeded,
)

pytestmark = pytest.mark.integration



async def _store_with_two_keys(dsn: str, root: RootKey) -> PostgresStore:
    return await seeded(await PostgresStore.connect(dsn, root))


async def test_a_key_whose_policy_was_edited_is_refused_and_the_others_still_serve(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    store = await _store_with_two_keys(dsn, RootKey(os.urandom(32)))
    doc = json.loads(await fetch_value(dsn, "SELECT doc FROM kms_keys WHERE key_id=$1", OURS.key_id))
    doc["policy"] = '{"Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}'
    edited = json.dumps(doc, separators=(",", ":"))
    await fetch_value(dsn, "UPDATE kms_keys SET doc=$1 WHERE key_id=$2", edited, OURS.key_id)
    with caplog.at_level(logging.ERROR):
        with pytest.raises(errors.KMSInternalException):
            await store.get_key(ACCOUNT, REGION, OURS.key_id)
        with pytest.raises(errors.KMSInternalException):
            await store.list_keys(ACCOUNT, REGION)
        for _ in range(3):  # the scheduler, the node's start, each scrape of /metrics: they go on
            assert await store.all_keys() == [OTHER]
    assert await store.get_key(ACCOUNT, REGION, OTHER.key_id) == OTHER
    row = f"the keys document of row {ACCOUNT}/{REGION}/{OURS.key_id} does not verify"
    lines = [r.getMessage() for r in caplog.records if row in r.getMessage()]
    # one per refused call, and once for the whole-store reads that come back every few seconds
    assert len(lines) == 3 and "kms:*" not in "".join(lines)
    await store.close()


async def test_a_document_copied_to_another_row_is_refused(dsn: str) -> None:
    store = await _store_with_two_keys(dsn, RootKey(os.urandom(32)))
    grant = await fetch_value(dsn, "SELECT doc FROM kms_grants WHERE key_id=$1", OTHER.key_id)
    await fetch_value(dsn, "INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
               ACCOUNT, REGION, OURS.key_id, GRANT.grant_id, NOW.isoformat(), grant)
    ours = await fetch_value(dsn, "SELECT doc FROM kms_keys WHERE key_id=$1", OURS.key_id)
    await fetch_value(dsn, "UPDATE kms_keys SET doc=$1 WHERE key_id=$2", ours, OTHER.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.list_grants(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_key(ACCOUNT, REGION, OTHER.key_id)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    await store.close()


async def test_a_forged_row_is_refused(dsn: str) -> None:
    store = await _store_with_two_keys(dsn, RootKey(os.urandom(32)))
    await fetch_value(dsn, "INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
               ACCOUNT, REGION, OURS.key_id, FORGED.grant_id, NOW.isoformat(), grant_to_doc(FORGED))
    made_up = '{"mac":"' + "00" * 32 + '",' + alias_to_doc(Alias(ACCOUNT, REGION, "alias/forged", OURS.key_id,
                                                                   NOW, NOW))[1:]
    await fetch_value(dsn, "INSERT INTO kms_aliases VALUES ($1, $2, $3, $4, $5)",
               ACCOUNT, REGION, "alias/forged", OURS.key_id, made_up)
    with pytest.raises(errors.KMSInternalException):
        await store.list_grants(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_alias(ACCOUNT, REGION, "alias/forged")
    assert await store.all_grants(REGION) == [GRANT]  # ListRetirableGrants: the forged one left out
    await store.close()


async def _legacy_store(dsn: str, root: RootKey) -> None:
    """The tables and rows a version before MACs left, its root key check included."""
    await (await PostgresStore.connect(dsn, root)).close()  # the schema
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("UPDATE kms_root_key SET sealed=$1", root.seal_text(b"", "root-key-check"))
        await connection.execute("DROP TABLE kms_ledger")  # versions before MACs had none
        for key in (OURS, OTHER):
            await connection.execute("INSERT INTO kms_keys VALUES ($1, $2, $3, $4, $5)", ACCOUNT, REGION, key.key_id,
                                     NOW.isoformat(), legacy_key_doc(key, root))
        await connection.execute("INSERT INTO kms_aliases VALUES ($1, $2, $3, $4, $5)",
                                 ACCOUNT, REGION, ALIAS.name, OURS.key_id, alias_to_doc(ALIAS))
        await connection.execute("INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)", ACCOUNT, REGION,
                                 OTHER.key_id, GRANT.grant_id, NOW.isoformat(), grant_to_doc(GRANT))
    finally:
        await connection.close()


async def test_an_old_store_without_macs_is_upgraded_as_it_opens_and_then_serves(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await _legacy_store(dsn, root)
    store = await PostgresStore.connect(dsn, root)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    assert await store.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    assert await store.get_alias(ACCOUNT, REGION, ALIAS.name) == ALIAS
    await store.put_alias(Alias(ACCOUNT, REGION, "alias/new", OTHER.key_id, NOW, NOW))
    await store.close()
    unauthenticated = await fetch_value(dsn, """SELECT count(*) FROM (SELECT doc FROM kms_keys UNION ALL
        SELECT doc FROM kms_aliases UNION ALL SELECT doc FROM kms_grants) docs WHERE doc NOT LIKE '{"mac":"%'""")
    assert unauthenticated == 0
    again = await PostgresStore.connect(dsn, root)
    assert [a.name for a in await again.list_aliases(ACCOUNT, REGION)] == ["alias/new", "alias/ours"]
    await again.close()


async def test_a_store_whose_macs_and_marker_were_stripped_is_not_taken_for_an_old_one(dsn: str) -> None:
    # The downgrade: the root key check put back as versions before wrote it, every MAC and the
    # ledger removed, and a forged grant added, to be upgraded with the rest. The material sealed
    # since gives it away.
    root = RootKey(os.urandom(32))
    await (await _store_with_two_keys(dsn, root)).close()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("UPDATE kms_root_key SET sealed=$1", root.seal_text(b"", "root-key-check"))
        for table in ("kms_keys", "kms_aliases", "kms_grants"):
            await connection.execute(f"UPDATE {table} SET doc = (doc::jsonb - 'mac')::text")
        await connection.execute("INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
                                 ACCOUNT, REGION, OURS.key_id, FORGED.grant_id, NOW.isoformat(), grant_to_doc(FORGED))
    finally:
        await connection.close()
    with pytest.raises(LedgerMismatch, match="grants 2 row.s., the ledger 1"):
        await PostgresStore.connect(dsn, root)
    await fetch_value(dsn, "DELETE FROM kms_ledger")
    with pytest.raises(LedgerMismatch, match="sealed since documents carry a MAC.*the MACs were stripped"):
        await PostgresStore.connect(dsn, root)
    stored = await fetch_value(dsn, "SELECT doc FROM kms_grants WHERE grant_id=$1", FORGED.grant_id)
    assert stored == grant_to_doc(FORGED)


async def test_root_key_rotation_authenticates_every_document_under_the_new_key(dsn: str) -> None:
    old, new = RootKey(os.urandom(32)), RootKey(os.urandom(32))
    store = await _store_with_two_keys(dsn, old)
    await store.put_import_parameters(TOKEN)
    await store.put_custom_key_store(CKS)
    assert await store.reseal(new) == 6
    await store.close()
    with pytest.raises(SealError):
        await PostgresStore.connect(dsn, old)
    again = await PostgresStore.connect(dsn, new)
    assert await again.list_keys(ACCOUNT, REGION) == sorted([OURS, OTHER], key=lambda k: k.key_id)
    assert await again.get_alias(ACCOUNT, REGION, ALIAS.name) == ALIAS
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    assert await again.get_import_parameters(TOKEN.token_id) == TOKEN
    assert await again.list_custom_key_stores(ACCOUNT, REGION) == [CKS]
    await again.close()


async def test_a_refused_row_is_refused_by_root_key_rotation_too(dsn: str) -> None:
    # Rotation must not launder an edited row into one authenticated under the new key, nor rows
    # added outside keytrail into a ledger of its own.
    old = RootKey(os.urandom(32))
    store = await _store_with_two_keys(dsn, old)
    grant = await fetch_value(dsn, "SELECT doc FROM kms_grants WHERE grant_id=$1", GRANT.grant_id)
    await fetch_value(dsn, "UPDATE kms_grants SET doc=$1 WHERE grant_id=$2", grant.replace("Decrypt", "Encrypt"),
               GRANT.grant_id)  # its MAC kept: the ledger matches, the document does not verify
    row = f"{ACCOUNT}/{REGION}/{OTHER.key_id}/{GRANT.grant_id}"
    with pytest.raises(DocumentRefused, match=f"grants document of row {row}"):
        await store.reseal(RootKey(os.urandom(32)))
    await fetch_value(dsn, "UPDATE kms_grants SET doc=$1 WHERE grant_id=$2", grant, GRANT.grant_id)
    await fetch_value(dsn, "INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
               ACCOUNT, REGION, OURS.key_id, FORGED.grant_id, NOW.isoformat(), grant_to_doc(FORGED))
    with pytest.raises(LedgerMismatch, match="grants 2 row.s., the ledger 1"):
        await store.reseal(RootKey(os.urandom(32)))
    await store.close()
    await fetch_value(dsn, "DELETE FROM kms_grants WHERE grant_id=$1", FORGED.grant_id)
    reopened = await PostgresStore.connect(dsn, old)  # unchanged
    assert await reopened.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    await reopened.close()


async def test_an_empty_store_without_its_root_key_check_whose_ledger_does_not_verify_is_a_ledger_refused(
        dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await PostgresStore.connect(dsn, root)).close()
    await fetch_value(dsn, "DELETE FROM kms_root_key")
    with pytest.raises(LedgerMismatch, match="the ledger row does not verify under the root key, and the store "
                                             "holds no other row"):
        await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    await (await PostgresStore.connect(dsn, root)).close()  # its own root key: the check is written again
    assert await fetch_value(dsn, "SELECT count(*) FROM kms_root_key") == 1


async def test_a_deleted_root_key_check_neither_downgrades_the_store_nor_lets_another_root_key_in(
        dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await _store_with_two_keys(dsn, root)).close()
    await fetch_value(dsn, "DELETE FROM kms_root_key")
    await fetch_value(dsn, "INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
               ACCOUNT, REGION, OURS.key_id, FORGED.grant_id, NOW.isoformat(), grant_to_doc(FORGED))
    with pytest.raises(SealError, match="cannot unseal nor verify any document"):
        await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    with pytest.raises(LedgerMismatch, match="grants 2 row.s., the ledger 1"):  # no upgrade of the forged row
        await PostgresStore.connect(dsn, root)
    await fetch_value(dsn, "DELETE FROM kms_grants WHERE grant_id=$1", FORGED.grant_id)
    store = await PostgresStore.connect(dsn, root)
    assert await store.get_key(ACCOUNT, REGION, OTHER.key_id) == OTHER
    await store.close()
    assert await fetch_value(dsn, "SELECT count(*) FROM kms_root_key") == 1
    with pytest.raises(SealError):  # the check is back
        await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
