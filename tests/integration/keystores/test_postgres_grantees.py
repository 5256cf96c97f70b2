"""The PostgreSQL store reads a call's grants by their grantee (real server at 127.0.0.1:5432):
the `grantee` column narrows the read to the grants that may name the caller, the verified
documents decide, and a store of before the column gets it filled in as it opens."""

from __future__ import annotations

import dataclasses
import os

import pytest

from keytrail.kms import errors
from keytrail.kms.codec import grant_to_doc
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.store import Grant
from tests.support.postgres import fetch, fetch_value
from tests.support.store_documents import ACCOUNT, FORGED, GRANT, NOW, OTHER, OURS, REGION, seeded

pytestmark = pytest.mark.integration

READER = GRANT.grantee_principal
WRITER = f"arn:aws:iam::{ACCOUNT}:role/writer"
# A grant on the same key as GRANT to another role, and one to the account (its root ARN).
TO_WRITER = dataclasses.replace(GRANT, grant_id="b2" * 32, grantee_principal=WRITER)
TO_ACCOUNT = dataclasses.replace(GRANT, grant_id="c3" * 32, grantee_principal=f"arn:aws:iam::{ACCOUNT}:root")


async def _store(dsn: str, root: RootKey) -> PostgresStore:
    store = await seeded(await PostgresStore.connect(dsn, root))
    for grant in (TO_WRITER, TO_ACCOUNT):
        await store.put_grant(grant)
    return store


async def _grants_to(store: PostgresStore, *grantees: str) -> list[Grant]:
    return await store.grants_to(ACCOUNT, REGION, OTHER.key_id, set(grantees))


async def test_a_call_reads_the_grants_to_its_caller_only(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    assert await _grants_to(store, READER) == [GRANT]
    assert await _grants_to(store, WRITER, TO_ACCOUNT.grantee_principal) == [TO_WRITER, TO_ACCOUNT]
    assert await _grants_to(store, f"arn:aws:iam::{ACCOUNT}:role/nobody") == []
    rows = await fetch(dsn, "SELECT grant_id, grantee FROM kms_grants ORDER BY grant_id")
    assert [(row["grant_id"], row["grantee"]) for row in rows] == [
        (GRANT.grant_id, READER), (TO_WRITER.grant_id, WRITER), (TO_ACCOUNT.grant_id, TO_ACCOUNT.grantee_principal)]
    await store.close()


async def test_a_grantee_column_edited_to_name_another_caller_gives_it_nothing(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await fetch_value(dsn, "UPDATE kms_grants SET grantee=$1 WHERE grant_id=$2", WRITER, GRANT.grant_id)
    # The column only narrows the read: the document, which verifies, names the reader.
    assert await _grants_to(store, WRITER) == [TO_WRITER]
    await store.close()


async def test_a_row_written_without_a_grantee_is_read_for_every_caller_and_refused(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    forged = dataclasses.replace(FORGED, key_id=OTHER.key_id)
    await fetch_value(dsn, "INSERT INTO kms_grants VALUES ($1, $2, $3, $4, $5, $6)",
                      ACCOUNT, REGION, OTHER.key_id, forged.grant_id, NOW.isoformat(), grant_to_doc(forged))
    for caller in (READER, WRITER):
        with pytest.raises(errors.KMSInternalException):
            await _grants_to(store, caller)
    assert await store.grants_to(ACCOUNT, REGION, OURS.key_id, {READER}) == []  # the other key's calls go on
    await store.close()


async def test_a_store_of_before_the_grantee_column_gets_it_filled_in_as_it_opens(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await _store(dsn, root)).close()
    await fetch_value(dsn, "ALTER TABLE kms_grants DROP COLUMN grantee")  # its index goes with it
    store = await PostgresStore.connect(dsn, root)
    assert await fetch_value(dsn, "SELECT count(*) FROM kms_grants WHERE grantee IS NULL") == 0
    assert await fetch_value(dsn, "SELECT to_regclass('kms_grants_by_grantee') IS NOT NULL")
    assert await _grants_to(store, READER) == [GRANT]
    assert await _grants_to(store, WRITER) == [TO_WRITER]
    await store.close()


async def test_a_grant_is_read_by_its_id_and_the_key_s_grants_counted_without_reading_them_all(dsn: str) -> None:
    # RetireGrant, RevokeGrant and a call's GrantTokens name one grant; CreateGrant counts the key's
    # against the quota: each read and verified every grant of the key before.
    store = await _store(dsn, RootKey(os.urandom(32)))
    assert await store.get_grant(ACCOUNT, REGION, OTHER.key_id, TO_WRITER.grant_id) == TO_WRITER
    assert await store.get_grant(ACCOUNT, REGION, OURS.key_id, TO_WRITER.grant_id) is None  # another key's
    assert await store.count_grants(ACCOUNT, REGION, OTHER.key_id) == 3
    assert await store.count_grants(ACCOUNT, REGION, OURS.key_id) == 0
    await fetch_value(dsn, "UPDATE kms_grants SET doc=replace(doc, 'Decrypt', 'Encrypt') WHERE grant_id=$1",
                      TO_WRITER.grant_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_grant(ACCOUNT, REGION, OTHER.key_id, TO_WRITER.grant_id)
    await store.close()


async def test_a_grant_written_unfiled_by_a_node_of_before_still_allows_and_is_filed_at_the_next_start(
        dsn: str) -> None:
    # A node of before the terms writes a grant without them: read for every call on its key, its
    # document deciding, until a node opening the store files it.
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await fetch_value(dsn, "DELETE FROM kms_grant_terms")
    await fetch_value(dsn, "UPDATE kms_grants SET terms_filed = NULL")
    assert await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "Decrypt", {}) == [GRANT]
    assert await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {WRITER}, "Decrypt", {}) == [TO_WRITER]
    await store.close()
    store = await PostgresStore.connect(dsn, root)
    assert await fetch_value(dsn, "SELECT count(*) FROM kms_grants WHERE terms_filed IS NULL") == 0
    assert await fetch_value(dsn, "SELECT count(DISTINCT grant_id) FROM kms_grant_terms") == 3
    assert await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "Decrypt", {}) == [GRANT]
    assert await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "Encrypt", {}) == []
    await store.close()


def _alike(n: int) -> Grant:
    """One of the reader's grants that each allow its DescribeKey and Decrypt alike (unconstrained, or
    an Equals: one read decides as all would)."""
    constraints = {"EncryptionContextEquals": {"app": "logs"}} if n % 2 else None
    return dataclasses.replace(GRANT, grant_id=f"{n:064x}", operations=("DescribeKey", "Decrypt"),
                               constraints=constraints)


async def test_of_the_grants_that_allow_a_call_alike_one_is_read(dsn: str) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    alike = [_alike(n) for n in range(1, 301)]
    # Under the same terms, grants that decide apart: read, all of them
    never = dataclasses.replace(GRANT, grant_id="d4" * 32, operations=("DescribeKey",),
                                constraints={"SourceArn": "arn:aws:s3:::bucket"})
    subset = dataclasses.replace(GRANT, grant_id="e5" * 32, constraints={"EncryptionContextSubset": {"app": "logs"}})
    for grant in (never, subset, *alike):
        await store.put_grant(grant)
    described = await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "DescribeKey", {})
    assert len(described) == 2 and never in described  # all 301 before
    decrypted = await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "Decrypt", {"App": "logs"})
    # GRANT or an unconstrained one; an Equals one; the Subset
    assert len(decrypted) == 3 and subset in decrypted
    [other] = await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "Decrypt", {"app": "x"})
    assert other.constraints is None
    await store.close()


async def test_terms_filed_by_a_version_before_exact_ones_are_read_in_full_and_filed_again_at_the_next_start(
        dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    for grant in (_alike(n) for n in range(1, 21)):
        await store.put_grant(grant)
    await fetch_value(dsn, "UPDATE kms_grant_terms SET exact = FALSE")  # as a node of before writes them
    assert len(await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "DescribeKey", {})) == 20
    await store.close()
    await fetch_value(dsn, "ALTER TABLE kms_grant_terms DROP COLUMN exact")  # its index goes with it
    store = await PostgresStore.connect(dsn, root)
    assert await fetch_value(dsn, "SELECT count(*) FROM kms_grants WHERE terms_filed IS NULL") == 0
    assert len(await store.grants_allowing(ACCOUNT, REGION, OTHER.key_id, {READER}, "DescribeKey", {})) == 1
    await store.close()
