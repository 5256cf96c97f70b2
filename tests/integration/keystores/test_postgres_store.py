"""The shared PostgreSQL store (real server at 127.0.0.1:5432): two nodes serving two Regions of
one multi-Region key, and one Region serving on while the other node is down."""

from __future__ import annotations

import asyncio
import base64
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors, postgres_store
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.material import secret_cached
from keytrail.kms.model import CallRecord
from keytrail.kms.postgres_store import PostgresStore, StoreBusy
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.store import Alias
from tests.support.loop_passes import LoopPasses
from tests.support.store_documents import TOKEN
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

ACCOUNT = "111122223333"
NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _Sink:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


class Node:
    """One keytrail node: its own service and connection pool over the shared database."""

    def __init__(self, store: PostgresStore, clock: ManualClock, region: str, account: str = ACCOUNT) -> None:
        self.store, self.region, self.account = store, region, account
        self.svc = KmsService(
            ServiceDeps(store=store, clock=clock, audit=_Sink(), authorizer=OwnAccountAuthorizer())
        )

    async def __call__(self, operation: str, **params: Any) -> dict[str, Any]:
        context = CallContext(Principal.account_root(self.account, "AKIAROOT000000000001"), self.region, "req")
        return await self.svc.execute(operation, context, params)


async def test_store_round_trip_keeps_material_sealed(dsn: str) -> None:
    root, secret, password = RootKey(os.urandom(32)), os.urandom(32), "kmsuser-secret-pin"
    store = await PostgresStore.connect(dsn, root)
    key = Key(
        ACCOUNT,
        "us-east-1",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
        NOW,
        materials=(KeyMaterial("cd" * 32, secret, NOW),),
        policy="{}",
    )
    cks = CustomKeyStore(
        ACCOUNT, "us-east-1", "cks-0123456789abcdef0", "n", "cluster-abcdefghijk", "pem", password, NOW
    )
    await store.put_key(key)
    await store.put_alias(Alias(ACCOUNT, "us-east-1", "alias/a", key.key_id, NOW, NOW))
    await store.put_custom_key_store(cks)
    await store.close()
    again = await PostgresStore.connect(dsn, root)
    assert await again.get_key(ACCOUNT, "us-east-1", key.key_id) == key
    assert await again.list_custom_key_stores(ACCOUNT, "us-east-1") == [cks]
    connection = await asyncpg.connect(dsn)
    docs = ""
    for table in ("kms_keys", "kms_custom_key_stores"):
        docs += " ".join(row["doc"] for row in await connection.fetch(f"SELECT doc FROM {table}"))
    await connection.close()
    assert key.key_id in docs and cks.store_id in docs
    await again.delete_key(key)
    assert await again.list_aliases(ACCOUNT, "us-east-1") == []
    await again.close()
    for form in (secret.hex(), base64.b64encode(secret).decode(), password):
        assert form not in docs


async def test_reading_every_key_lets_other_work_run_between_slices_and_returns_each_key(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The scheduler's tick reads every key: each was verified and decoded in one step of the event
    # loop, and 5,000 keys held every call 140-240 ms.
    monkeypatch.setattr(postgres_store, "_KEYS_SLICE", 2)
    store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    keys = [Key(ACCOUNT, "us-east-1", f"1234abcd-12ab-34cd-56ef-00000000000{number}", NOW,
                materials=(KeyMaterial("cd" * 32, os.urandom(32), NOW),), policy="{}") for number in range(5)]
    for key in keys:
        await store.put_key(key)
    decoded_at: list[int] = []  # the loop's passes by each key's decoding
    decode = postgres_store.key_from_doc
    passes = LoopPasses()

    def decoded(body: str, root: RootKey) -> Key:
        decoded_at.append(passes.count)
        return decode(body, root)

    monkeypatch.setattr(postgres_store, "key_from_doc", decoded)
    try:
        async with passes:
            found = await store.all_keys()
    finally:
        await store.close()
    assert sorted(found, key=lambda key: key.key_id) == keys
    assert len(set(decoded_at)) == 3  # five keys in slices of two


async def test_two_nodes_share_a_multi_region_key_and_survive_one_going_down(dsn: str) -> None:
    root, clock = RootKey(os.urandom(32)), ManualClock()
    east = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    west = Node(await PostgresStore.connect(dsn, root), clock, "eu-west-1")
    key_id = (await east("CreateKey", MultiRegion=True))["KeyMetadata"]["KeyId"]
    old_blob = (await east("Encrypt", KeyId=key_id, Plaintext=b"written in us-east-1"))["CiphertextBlob"]
    await east("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
    await west.svc.run_due()  # the other node's scheduler enables the replica
    assert (await west("DescribeKey", KeyId=key_id))["KeyMetadata"]["KeyState"] == "Enabled"
    assert (await west("Decrypt", CiphertextBlob=old_blob))["Plaintext"] == b"written in us-east-1"
    await east("RotateKeyOnDemand", KeyId=key_id)
    new_blob = (await east("Encrypt", KeyId=key_id, Plaintext=b"after rotation"))["CiphertextBlob"]
    await east.store.close()  # us-east-1's node goes down
    assert (await west("Decrypt", CiphertextBlob=new_blob))["Plaintext"] == b"after rotation"
    mine = (await west("Encrypt", KeyId=key_id, Plaintext=b"still serving"))["CiphertextBlob"]
    assert (await west("Decrypt", CiphertextBlob=mine))["Plaintext"] == b"still serving"
    await west.store.close()


async def test_two_nodes_starting_together_on_an_empty_database_both_open_it(dsn: str) -> None:
    """`docker compose up`: both API nodes start once PostgreSQL is healthy, on an empty database.
    CREATE TABLE IF NOT EXISTS is not safe against itself: without a lock one node failed on
    pg_type's unique index, and stopped."""
    root = RootKey(os.urandom(32))
    for _ in range(3):
        stores = await asyncio.gather(PostgresStore.connect(dsn, root), PostgresStore.connect(dsn, root))
        for store in stores:
            await store.close()
        connection = await asyncpg.connect(dsn)
        try:
            await connection.execute("DROP TABLE kms_keys, kms_aliases, kms_grant_terms, kms_grants, "
                                     "kms_import_parameters, kms_custom_key_stores, kms_root_key")
        finally:
            await connection.close()


async def test_a_node_with_another_root_key_is_refused_at_connect(dsn: str) -> None:
    # Without the check it served, and sealed the keys it made under a root key no other node holds.
    root = RootKey(os.urandom(32))
    await (await PostgresStore.connect(dsn, root)).close()  # the first node: an empty store
    with pytest.raises(SealError):
        await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    await (await PostgresStore.connect(dsn, root)).close()


async def test_a_store_from_before_the_root_key_check_is_vouched_for_by_its_sealed_keys(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await PostgresStore.connect(dsn, root)
    await store.put_key(Key(ACCOUNT, "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", NOW,
                            materials=(KeyMaterial("ab" * 32, os.urandom(32), NOW),)))
    await store.close()
    connection = await asyncpg.connect(dsn)
    await connection.execute("DROP TABLE kms_root_key")
    await connection.close()
    with pytest.raises(SealError):
        await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    await (await PostgresStore.connect(dsn, root)).close()


async def test_ping_answers_while_every_pooled_connection_is_busy_with_queries_that_answer(dsn: str) -> None:
    """A node under load holds all its connections longer than a health check waits; the
    database still answers each of them, so the health check must not call it down."""
    store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)), timeout=2.0)
    release = asyncio.Event()
    holding = 0

    async def busy(index: int) -> None:
        nonlocal holding
        async with store.key_lock(ACCOUNT, "us-east-1", f"key-{index}"):  # pins a pooled connection
            assert await store.get_key(ACCOUNT, "us-east-1", f"key-{index}") is None
            holding += 1
            await release.wait()

    tasks = [asyncio.create_task(busy(index)) for index in range(8)]  # the pool's size
    try:
        await eventually(lambda: holding >= 8, what="every pooled connection pinned by a key lock")
        await store.ping()  # a pooled connection would wait 2 s, then DependencyTimeoutException
        await asyncio.sleep(1.1)  # nothing came back for a second: the pool is asked, and is full
        with pytest.raises(errors.DependencyTimeoutException):
            await store.ping()
    finally:
        release.set()
        await asyncio.gather(*tasks)
        await store.close()


async def test_a_resealed_store_opens_under_the_new_root_key_only(dsn: str) -> None:
    old, new, secret = RootKey(os.urandom(32)), RootKey(os.urandom(32)), os.urandom(32)
    key = Key(ACCOUNT, "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", NOW, policy="{}",
              materials=(KeyMaterial("cd" * 32, secret, NOW),))
    cks = CustomKeyStore(ACCOUNT, "us-east-1", "cks-0123456789abcdef0", "n", "cluster-abcdefghijk", "pem", "pin", NOW)
    store = await PostgresStore.connect(dsn, old)
    await store.put_key(key)
    await store.put_custom_key_store(cks)
    files = await _table_files(dsn)
    assert await store.reseal(new) == 2
    await store.close()
    # rewritten: the old rows, sealed under the old key, are not left behind as dead tuples
    assert set((await _table_files(dsn)).values()).isdisjoint(files.values())
    with pytest.raises(SealError):  # the root key check was resealed too: an old node is refused
        await PostgresStore.connect(dsn, old)
    again = await PostgresStore.connect(dsn, new)
    assert await again.get_key(ACCOUNT, "us-east-1", key.key_id) == key
    assert await again.list_custom_key_stores(ACCOUNT, "us-east-1") == [cks]
    await again.close()


async def test_a_store_is_not_resealed_while_a_node_is_connected(dsn: str) -> None:
    # The node would go on sealing under the old root key: what it wrote would open under neither.
    old = RootKey(os.urandom(32))
    node, rotating = await PostgresStore.connect(dsn, old), await PostgresStore.connect(dsn, old)
    try:
        with pytest.raises(StoreBusy, match="1 other client"):
            await rotating.reseal(RootKey(os.urandom(32)))
    finally:
        await rotating.close()
        await node.close()
    await (await PostgresStore.connect(dsn, old)).close()  # unchanged


async def _table_files(dsn: str) -> dict[str, int]:
    connection = await asyncpg.connect(dsn)
    try:
        return {table: await connection.fetchval("SELECT pg_relation_filenode($1)", table)
                for table in ("kms_keys", "kms_import_parameters", "kms_custom_key_stores")}
    finally:
        await connection.close()


async def test_a_key_another_node_deleted_leaves_this_nodes_caches_at_its_next_tick(dsn: str) -> None:
    # Node B served Encrypt and Decrypt with the key; node A deletes it (its waiting period over) and
    # forgets only in its own process: B's next tick, reading every key, drops what B made from it.
    root, clock = RootKey(os.urandom(32)), ManualClock(NOW)
    store_a, store_b = await PostgresStore.connect(dsn, root), await PostgresStore.connect(dsn, root)
    b = Node(store_b, clock, "us-east-1")
    key_id = (await b("CreateKey"))["KeyMetadata"]["KeyId"]
    blob = (await b("Encrypt", KeyId=key_id, Plaintext=b"x"))["CiphertextBlob"]
    await b("Decrypt", CiphertextBlob=blob)
    key = await store_a.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None and key.current_material is not None
    secret = key.current_material.secret
    assert secret_cached(secret)
    await store_a.delete_key(key)  # A's write alone: B's process is not told
    await b.svc.run_due()
    assert not secret_cached(secret)
    await store_a.close()
    await store_b.close()


async def test_a_key_another_node_deleted_leaves_this_nodes_table_of_sealed_values_at_its_next_tick(
        dsn: str) -> None:
    # Each node's root key keeps every key's sealed values to write them again unchanged; a key
    # another node deleted stayed in this node's table (and its sealed material) until it restarted.
    secret, clock = os.urandom(32), ManualClock(NOW)
    root_a, root_b = RootKey(secret), RootKey(secret)  # one root key, one instance in each node's process
    store_a, store_b = await PostgresStore.connect(dsn, root_a), await PostgresStore.connect(dsn, root_b)
    b = Node(store_b, clock, "us-east-1")
    kept, doomed = [(await b("CreateKey"))["KeyMetadata"]["KeyId"] for _ in range(2)]
    assert len(root_b._sealed) == 2
    key = await store_a.get_key(ACCOUNT, "us-east-1", doomed)
    assert key is not None
    await store_a.delete_key(key)  # A's write alone: B's process is not told
    await b.svc.run_due()
    assert root_b._sealed and all(kept in binding for binding in root_b._sealed)  # the live key's alone
    await store_a.close()
    await store_b.close()


async def test_keys_are_counted_per_account_and_region_across_nodes_for_the_keys_quota(dsn: str) -> None:
    root, clock = RootKey(os.urandom(32)), ManualClock()
    east = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    also_east = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")  # another node
    elsewhere = [Node(east.store, clock, "eu-west-1"), Node(east.store, clock, "us-east-1", account="444455556666")]
    for node in (east, also_east, east, *elsewhere):
        await node("CreateKey")
    doomed = (await east("CreateKey"))["KeyMetadata"]["KeyId"]
    await also_east("ScheduleKeyDeletion", KeyId=doomed, PendingWindowInDays=7)
    assert [await node.store.count_keys(node.account, node.region) for node in (east, also_east, *elsewhere)] == [
        4, 4, 1, 1]
    for node in (east, also_east):
        await node.store.close()


async def test_expired_import_parameters_are_deleted_and_the_ledger_still_checks(dsn: str) -> None:
    # The scheduler's tick deletes a wrapping key once its token expired (kms/scheduled_work.py).
    store = await PostgresStore.connect(dsn, RootKey(os.urandom(32)))
    expired = replace(TOKEN, token_id="e0" * 32)
    valid = replace(TOKEN, token_id="e1" * 32, valid_to=TOKEN.valid_to + timedelta(days=1))
    await store.put_import_parameters(expired)
    await store.put_import_parameters(valid)
    await store.delete_expired_import_parameters(TOKEN.valid_to + timedelta(seconds=1))
    assert await store.get_import_parameters(expired.token_id) is None
    assert await store.get_import_parameters(valid.token_id) == valid
    assert await store.check_ledger()
    await store.close()
