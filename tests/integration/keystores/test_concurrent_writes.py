"""Calls that change the same key at once, on both stores: within one node (asyncio interleaving at
every await of the PostgreSQL store) and across two nodes sharing one PostgreSQL database, as the
docker-compose.yml topology runs them. Each change must survive, and scheduled work happen once."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors, locks
from keytrail.kms.keys import Key
from keytrail.kms.keystores import CloudHsmClusterInUseException, ConnectionState, CustomKeyStore
from keytrail.kms.model import KeyState, Origin
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Store
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.test_postgres_store import ACCOUNT, Node
from tests.integration.keystores.wrapping import wrap
from tests.support.postgres import fresh_database

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)
StoreFactory = Callable[[], Awaitable[Store]]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def open_store(backend: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens stores over one keyspace: one SQLite file, or one PostgreSQL database."""
    root, opened = RootKey(os.urandom(32)), []
    async with contextlib.AsyncExitStack() as stack:
        database = await stack.enter_async_context(fresh_database()) if backend == "postgres" else ""

        async def factory() -> Store:
            if backend == "sqlite":
                store: Store = SqliteStore(tmp_path / "keys.db", root)
            else:
                store = await PostgresStore.connect(database, root)
            opened.append(store)
            return store

        yield factory
        for store in opened:
            await store.close()


def _events(*nodes: Node) -> list[str]:
    return [r.event_name for node in nodes for r in node.svc.deps.audit.records]  # type: ignore[attr-defined]


async def test_tagging_and_describing_one_key_at_once_keeps_both_changes(open_store: StoreFactory) -> None:
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
    for round_ in range(5):
        await asyncio.gather(
            node("TagResource", KeyId=key_id, Tags=[{"TagKey": f"t{round_}", "TagValue": "v"}]),
            node("UpdateKeyDescription", KeyId=key_id, Description=f"d{round_}"),
            node("EnableKeyRotation", KeyId=key_id, RotationPeriodInDays=90 + round_),
        )
    tags = (await node("ListResourceTags", KeyId=key_id))["Tags"]
    assert [t["TagKey"] for t in tags] == [f"t{n}" for n in range(5)]
    assert (await node("DescribeKey", KeyId=key_id))["KeyMetadata"]["Description"] == "d4"
    assert (await node("GetKeyRotationStatus", KeyId=key_id))["RotationPeriodInDays"] == 94


async def replicated_key(open_store: StoreFactory) -> tuple[Store, ManualClock, Node, Node, str]:
    """A multi-Region key made in us-east-1 and replicated to eu-west-1 (its replica ready), with
    a node of each Region on one store and one clock: (store, clock, east, west, key id)."""
    store, clock = await open_store(), ManualClock(NOW)
    east, west = Node(store, clock, "us-east-1"), Node(store, clock, "eu-west-1")
    key_id = (await east("CreateKey", MultiRegion=True))["KeyMetadata"]["KeyId"]
    await east("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
    await west.svc.run_due()
    return store, clock, east, west, key_id


async def _two_nodes(dsn: str) -> tuple[Node, Node, ManualClock]:
    """Two nodes on one PostgreSQL store, with one root key and one clock."""
    root, clock = RootKey(os.urandom(32)), ManualClock(NOW)
    first = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    second = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    return first, second, clock


async def test_two_nodes_changing_one_key_at_once_keep_both_changes(dsn: str) -> None:
    first, second, _ = await _two_nodes(dsn)
    key_id = (await first("CreateKey"))["KeyMetadata"]["KeyId"]
    for round_ in range(5):
        await asyncio.gather(
            first("TagResource", KeyId=key_id, Tags=[{"TagKey": f"t{round_}", "TagValue": "v"}]),
            second("UpdateKeyDescription", KeyId=key_id, Description=f"d{round_}"),
        )
    assert len((await second("ListResourceTags", KeyId=key_id))["Tags"]) == 5
    assert (await first("DescribeKey", KeyId=key_id))["KeyMetadata"]["Description"] == "d4"
    await first.store.close()
    await second.store.close()


async def test_two_nodes_rotate_a_due_key_once(dsn: str) -> None:
    first, second, clock = await _two_nodes(dsn)
    key_id = (await first("CreateKey"))["KeyMetadata"]["KeyId"]
    await first("EnableKeyRotation", KeyId=key_id, RotationPeriodInDays=90)
    clock.advance(91 * 86400)
    await asyncio.gather(first.svc.run_due(), second.svc.run_due())
    assert _events(first, second).count("RotateKey") == 1
    rotations = (await first("ListKeyRotations", KeyId=key_id))["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]
    await first.store.close()
    await second.store.close()


async def test_two_nodes_delete_a_key_once_at_the_end_of_its_waiting_period(dsn: str) -> None:
    first, second, clock = await _two_nodes(dsn)
    key_id = (await first("CreateKey"))["KeyMetadata"]["KeyId"]
    await first("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    clock.advance(8 * 86400)
    await asyncio.gather(first.svc.run_due(), second.svc.run_due())
    assert _events(first, second).count("DeleteKey") == 1
    await first.store.close()
    await second.store.close()


async def test_one_grant_name_made_twice_at_once_is_one_grant(open_store: StoreFactory) -> None:
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
    params: dict[str, Any] = {
        "KeyId": key_id, "GranteePrincipal": "arn:aws:iam::111122223333:role/app",
        "Operations": ["Encrypt"], "Name": "app-encrypt",
    }
    made = await asyncio.gather(node("CreateGrant", **params), node("CreateGrant", **params))
    assert made[0]["GrantId"] == made[1]["GrantId"]
    assert len((await node("ListGrants", KeyId=key_id))["Grants"]) == 1


async def test_two_nodes_granting_past_the_grants_quota_at_once_make_no_grant_over_it(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # The quota of grants per key (50,000, lowered here) is counted and the grant written under the
    # key's lock, which both nodes take: counted outside it, each call saw room for one more.
    from keytrail.kms.operations import grants

    monkeypatch.setattr(grants, "GRANTS_PER_KEY", 5)
    first, second, _ = await _two_nodes(dsn)
    key_id = (await first("CreateKey"))["KeyMetadata"]["KeyId"]
    answers = await asyncio.gather(*(
        node("CreateGrant", KeyId=key_id, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:role/app", Operations=["Decrypt"])
        for node in (first, second) * 6), return_exceptions=True)
    assert sum(isinstance(a, dict) for a in answers) == 5, answers
    assert all(isinstance(a, errors.LimitExceededException) for a in answers if not isinstance(a, dict)), answers
    assert len((await second("ListGrants", KeyId=key_id))["Grants"]) == 5
    await first.store.close()
    await second.store.close()


async def test_a_grant_retired_and_revoked_at_once_by_two_nodes_is_removed_by_one_call(dsn: str) -> None:
    # RetireGrant holds no key's lock: two calls that found the grant each deleted it, and each was
    # answered (and logged) as the one that did; the later ones find it gone, as one after the other.
    first, second, _ = await _two_nodes(dsn)
    key_id = (await first("CreateKey"))["KeyMetadata"]["KeyId"]
    retiring = f"arn:aws:iam::{ACCOUNT}:root"
    for _ in range(10):
        grant = await first("CreateGrant", KeyId=key_id, GranteePrincipal=retiring, RetiringPrincipal=retiring,
                            Operations=["Decrypt"])
        answers = await asyncio.gather(
            first("RetireGrant", GrantToken=grant["GrantToken"]), second("RetireGrant", GrantToken=grant["GrantToken"]),
            second("RevokeGrant", KeyId=key_id, GrantId=grant["GrantId"]), return_exceptions=True,
        )
        assert answers.count({}) == 1, answers
        assert all(isinstance(a, errors.NotFoundException) for a in answers if a != {}), answers
    assert (await second("ListGrants", KeyId=key_id))["Grants"] == []
    await first.store.close()
    await second.store.close()


async def test_one_alias_name_created_twice_at_once_is_created_once(open_store: StoreFactory) -> None:
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    keys = [(await node("CreateKey"))["KeyMetadata"]["KeyId"] for _ in range(2)]
    for round_ in range(10):
        name = f"alias/app-{round_}"
        made = await asyncio.gather(
            *(node("CreateAlias", AliasName=name, TargetKeyId=key_id) for key_id in keys), return_exceptions=True
        )
        assert sum(isinstance(r, errors.AlreadyExistsException) for r in made) == 1, made
        aliases = (await node("ListAliases"))["Aliases"]
        assert [a["TargetKeyId"] for a in aliases if a["AliasName"] == name] == [keys[made.index({})]]


async def test_an_alias_deleted_while_it_is_updated_stays_deleted(open_store: StoreFactory) -> None:
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    first, second = [(await node("CreateKey"))["KeyMetadata"]["KeyId"] for _ in range(2)]
    for round_ in range(10):
        name = f"alias/app-{round_}"
        await node("CreateAlias", AliasName=name, TargetKeyId=first)
        updated, deleted = await asyncio.gather(
            node("UpdateAlias", AliasName=name, TargetKeyId=second), node("DeleteAlias", AliasName=name),
            return_exceptions=True,
        )
        assert deleted == {}
        left = [a for a in (await node("ListAliases"))["Aliases"] if a["AliasName"] == name]
        # Updated first, then deleted; or deleted first, and the update finds no alias.
        assert left == [] and (updated == {} or isinstance(updated, errors.NotFoundException)), (updated, left)


async def test_an_update_waiting_for_its_target_is_checked_against_the_alias_as_it_writes_it(
        open_store: StoreFactory) -> None:
    # Its target's lock held by another call, UpdateAlias waits having read the alias on a symmetric
    # key; meanwhile the alias is deleted and made again for an HMAC key. Written over it, the update
    # put a symmetric key after an HMAC one, which no UpdateAlias may do.
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    first, target = [(await node("CreateKey"))["KeyMetadata"]["KeyId"] for _ in range(2)]
    hmac = (await node("CreateKey", KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC"))["KeyMetadata"]["KeyId"]
    await node("CreateAlias", AliasName="alias/app", TargetKeyId=first)
    holding, done = asyncio.Event(), asyncio.Event()

    async def changing_target() -> None:
        async with node.svc.key_lock(ACCOUNT, "us-east-1", target):
            holding.set()
            await done.wait()

    holder = asyncio.create_task(changing_target())
    await holding.wait()
    update = asyncio.create_task(node("UpdateAlias", AliasName="alias/app", TargetKeyId=target))
    read = await node.store.get_alias(ACCOUNT, "us-east-1", "alias/app")
    for _ in range(50):  # until it waits for the target's lock
        await asyncio.sleep(0.01)
    await node("DeleteAlias", AliasName="alias/app")
    await node("CreateAlias", AliasName="alias/app", TargetKeyId=hmac)
    done.set()
    await holder
    with pytest.raises(errors.ValidationException, match="must be the same type"):
        await update
    [alias] = [a for a in (await node("ListAliases"))["Aliases"] if a["AliasName"] == "alias/app"]
    assert alias["TargetKeyId"] == hmac
    assert read is not None and not await node.store.delete_alias(read, if_unchanged=True)  # read before: stale
    assert (await node("ListAliases", KeyId=hmac))["Aliases"]


async def test_tagging_a_key_while_its_custom_key_store_disconnects_keeps_both(open_store: StoreFactory) -> None:
    store = await open_store()
    node = Node(store, ManualClock(NOW), "us-east-1")
    cks = CustomKeyStore("111122223333", "us-east-1", "cks-0123456789abcdef0", "hsm", "cluster-abcdefghijk",
                         "pem", "pin", NOW, ConnectionState.CONNECTED)
    await store.put_custom_key_store(cks)
    keys = [Key("111122223333", "us-east-1", f"1234abcd-12ab-34cd-56ef-12345678900{n}", NOW,
                origin=Origin.AWS_CLOUDHSM, custom_key_store_id=cks.store_id) for n in range(5)]
    await store.put_keys(keys)
    await asyncio.gather(
        node("DisconnectCustomKeyStore", CustomKeyStoreId=cks.store_id),
        *(node("TagResource", KeyId=key.key_id, Tags=[{"TagKey": "t", "TagValue": "v"}]) for key in keys),
    )
    for key in keys:
        stored = await store.get_key(key.account, key.region, key.key_id)
        assert stored is not None and (stored.state, stored.tags) == (KeyState.UNAVAILABLE, (("t", "v"),))


async def test_one_custom_key_store_name_created_twice_at_once_is_created_once(
    open_store: StoreFactory, clusters: Iterator[str], trust_anchor: str,
) -> None:
    node = Node(await open_store(), ManualClock(NOW), "us-east-1")
    cluster = next(clusters)
    made = await asyncio.gather(*(
        node("CreateCustomKeyStore", CustomKeyStoreName="hsm", CloudHsmClusterId=cluster,
             TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN)
        for _ in range(2)
    ), return_exceptions=True)
    assert sum(isinstance(r, errors.CustomKeyStoreNameInUseException) for r in made) == 1, made
    assert len((await node("DescribeCustomKeyStores"))["CustomKeyStores"]) == 1


async def test_one_cluster_claimed_by_two_accounts_at_once_is_given_to_one(
    open_store: StoreFactory, backend: str, clusters: Iterator[str], trust_anchor: str,
) -> None:
    # Each call holds its own account's lock only, and each looks the token up in the HSM between
    # finding the cluster free and storing its store: all three used to find it free. Two nodes on
    # PostgreSQL; SQLite has one writer.
    store = await open_store()
    other = await open_store() if backend == "postgres" else store
    first = Node(store, ManualClock(NOW), "us-east-1")
    second = Node(other, ManualClock(NOW), "eu-west-1", "444455556666")  # another account, another Region
    cluster, free = next(clusters), next(clusters)
    moved = (await second("CreateCustomKeyStore", CustomKeyStoreName="moved", CloudHsmClusterId=free,
                          TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN))["CustomKeyStoreId"]
    made = await asyncio.gather(
        first("CreateCustomKeyStore", CustomKeyStoreName="made", CloudHsmClusterId=cluster,
              TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN),
        second("CreateCustomKeyStore", CustomKeyStoreName="made", CloudHsmClusterId=cluster,
               TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN),
        second("UpdateCustomKeyStore", CustomKeyStoreId=moved, CloudHsmClusterId=cluster),
        return_exceptions=True,
    )
    assert [type(r) for r in made if isinstance(r, BaseException)] == [CloudHsmClusterInUseException] * 2, made
    assert len([s for s in await store.all_custom_key_stores() if s.cluster_id == cluster]) == 1


async def test_one_material_imported_into_two_regions_at_once_gets_one_key_material_id(
    open_store: StoreFactory,
) -> None:
    store, clock = await open_store(), ManualClock(NOW)
    east, west = Node(store, clock, "us-east-1"), Node(store, clock, "eu-west-1")
    for _ in range(5):
        key_id = (await east("CreateKey", MultiRegion=True, Origin="EXTERNAL"))["KeyMetadata"]["KeyId"]
        await east("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
        material, wrapped = os.urandom(32), []
        for node in (east, west):
            params = await node("GetParametersForImport", KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                WrappingKeySpec="RSA_2048")
            wrapped.append({"ImportToken": params["ImportToken"],
                            "EncryptedKeyMaterial": wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", material)})
        imported = await asyncio.gather(*(
            node("ImportKeyMaterial", KeyId=key_id, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE", **parameters)
            for node, parameters in zip((east, west), wrapped, strict=True)
        ))
        assert imported[0]["KeyMaterialId"] == imported[1]["KeyMaterialId"]


async def test_tagging_a_replica_while_its_primary_rotates_keeps_both(open_store: StoreFactory) -> None:
    store, _clock, east, west, key_id = await replicated_key(open_store)
    for round_ in range(5):
        await asyncio.gather(
            east("RotateKeyOnDemand", KeyId=key_id),
            west("TagResource", KeyId=key_id, Tags=[{"TagKey": f"t{round_}", "TagValue": "v"}]),
        )
    replica = await store.get_key("111122223333", "eu-west-1", key_id)
    primary = await store.get_key("111122223333", "us-east-1", key_id)
    assert replica is not None and primary is not None
    assert (len(replica.tags), replica.materials) == (5, primary.materials)


async def _two_keys_due_for_rotation(node: Node, clock: ManualClock) -> tuple[Key, Key]:
    """Two keys as read just before their rotation fell due (then the clock passes it)."""
    stale = []
    for _ in range(2):
        key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        await node("EnableKeyRotation", KeyId=key_id, RotationPeriodInDays=90)
        key = await node.store.get_key(ACCOUNT, "us-east-1", key_id)
        assert key is not None
        stale.append(key)
    clock.advance(91 * 86400)
    return stale[0], stale[1]


async def _hold_one_and_find_the_other_due(holder: Node, key: Key, other: Key, both_hold: asyncio.Barrier) -> Any:
    """A call's steps: it holds its first key's lock and finds its second key due (a ReEncrypt
    from `key` to `other`), so it needs `other`'s lock too."""
    async with holder.svc.key_lock(key.account, key.region, key.key_id):
        await both_hold.wait()
        return await holder.svc.apply_due(other)


async def _each_holding_one(node: Node, key: Key, other_node: Node, other: Key) -> list[Any]:
    """The results (or exceptions) of two calls at once: `node`'s holds `key` and finds `other`
    due, `other_node`'s the other way round. Waits 30 s at most: a hang fails the test."""
    both_hold = asyncio.Barrier(2)
    return await asyncio.wait_for(asyncio.gather(
        _hold_one_and_find_the_other_due(node, key, other, both_hold),
        _hold_one_and_find_the_other_due(other_node, other, key, both_hold),
        return_exceptions=True,
    ), timeout=30)


async def _rotated_once_each(node: Node, *keys: Key) -> None:
    await node.svc.run_due()
    for key in keys:
        rotations = (await node("ListKeyRotations", KeyId=key.key_id))["Rotations"]
        assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]


async def test_two_calls_each_holding_the_key_the_other_finds_due_do_not_wait_forever(
    open_store: StoreFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Before, each waited for the other's lock for ever, and every later call on either key too.
    monkeypatch.setattr(locks, "SECOND_LOCK_WAIT", 0.2)
    clock = ManualClock(NOW)
    node = Node(await open_store(), clock, "us-east-1")
    first, second = await _two_keys_due_for_rotation(node, clock)
    results = await _each_holding_one(node, first, node, second)
    refused = [r for r in results if isinstance(r, BaseException)]
    assert refused and all(isinstance(r, errors.KMSInternalException) for r in refused)
    assert "You can retry the request" in refused[0].message  # type: ignore[attr-defined]
    assert all(isinstance(r, Key) and len(r.materials) == 2 for r in results if not isinstance(r, BaseException))
    await _rotated_once_each(node, first, second)


async def test_two_nodes_each_holding_the_key_the_other_finds_due_fail_one_call(dsn: str) -> None:
    # Across nodes the locks are PostgreSQL's advisory locks: the database breaks the cycle.
    first, second, clock = await _two_nodes(dsn)
    one, other = await _two_keys_due_for_rotation(first, clock)
    results = await _each_holding_one(first, one, second, other)
    assert [type(r) for r in results if isinstance(r, BaseException)] == [errors.KMSInternalException]
    await _rotated_once_each(first, one, other)
    await first.store.close()
    await second.store.close()
