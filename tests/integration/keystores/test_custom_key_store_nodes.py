"""A custom key store served by two nodes over one PostgreSQL store (SoftHSM2, both nodes in this
process): a Disconnect answered by one node ends the other node's session of the store at that
node's next scheduler tick, and the other node refuses the store's calls meanwhile; a store a node
that died left CONNECTING is FAILED at another node's tick, and not while that node lives.

Both nodes run in this process, so they share one PKCS#11 login per token: only one of them holds a
session at a time here (as the first node's is closed before the second logs in)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import cast

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.hsm import HsmCipher, HsmConnections
from keytrail.kms.hsm_thread import TIMEOUT_ENV
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.flaky_token import flaky_logins
from tests.integration.keystores.test_postgres_store import Node
from tests.support.postgres import fetch, fetch_value
from tests.support.softhsm import SoftHsm, open_sessions
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _connections(node: Node) -> HsmConnections:
    return cast(HsmCipher, node.svc.ciphers["hsm"]).connections


async def _connected_store(node: Node, name: str, cluster: str, trust_anchor: str) -> str:
    """A new custom key store on the cluster's token, connected by `node`: its id."""
    store_id = str((await node("CreateCustomKeyStore", CustomKeyStoreName=name, CloudHsmClusterId=cluster,
                               TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN))["CustomKeyStoreId"])
    await node("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    return store_id


async def test_a_store_another_node_disconnected_loses_this_nodes_session_at_its_next_tick(
    dsn: str, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str,
) -> None:
    # The other node's session, and the token's login with it, used to stay open until that node
    # reconnected the store or restarted.
    root, clock, cluster = RootKey(os.urandom(32)), ManualClock(NOW), next(clusters)
    first = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    second = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    try:
        store_id = await _connected_store(first, "shared", cluster, trust_anchor)
        key_id = (await first("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
        await _connections(first).disconnect(store_id)  # its session closed, as after a restart
        await second("Encrypt", KeyId=key_id, Plaintext=b"on the second node")  # logs in there
        assert open_sessions(hsm.module, cluster) == 1
        await first("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        with pytest.raises(errors.KMSInvalidStateException):  # the store's state is read on each call
            await second("Encrypt", KeyId=key_id, Plaintext=b"after the disconnect")
        with pytest.raises(errors.CustomKeyStoreInvalidStateException):
            await second("GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=store_id)
        assert open_sessions(hsm.module, cluster) == 1
        await second.svc.run_due()  # the scheduler's tick
        assert open_sessions(hsm.module, cluster) == 0
        await first("ConnectCustomKeyStore", CustomKeyStoreId=store_id)  # no login of the second is left
        [entry] = (await first("DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
        assert entry["ConnectionState"] == "CONNECTED"
        await first("Encrypt", KeyId=key_id, Plaintext=b"connected again")
        await first("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        assert open_sessions(hsm.module, cluster) == 0
    finally:
        await first.store.close()
        await second.store.close()


async def test_a_tick_keeps_the_session_of_a_store_still_connected(
    dsn: str, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str,
) -> None:
    root, cluster = RootKey(os.urandom(32)), next(clusters)
    node = Node(await PostgresStore.connect(dsn, root), ManualClock(NOW), "us-east-1")
    try:
        store_id = await _connected_store(node, "kept", cluster, trust_anchor)
        key_id = (await node("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
        await node.svc.run_due()
        assert open_sessions(hsm.module, cluster) == 1
        await node("Encrypt", KeyId=key_id, Plaintext=b"still connected")
        await node("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    finally:
        await node.store.close()


async def test_a_store_moved_to_another_token_between_two_ticks_is_logged_in_to_there(
    dsn: str, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str,
) -> None:
    # Disconnected, updated to another CloudHsmClusterId and connected again by the first node
    # between two ticks of the second: the second's session, on the old token, found none of the
    # store's new keys, kept the session as sound, and failed the store's calls until it restarted.
    root, clock, old, new = RootKey(os.urandom(32)), ManualClock(NOW), next(clusters), next(clusters)
    first = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    second = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    try:
        store_id = await _connected_store(first, "moved", old, trust_anchor)
        await _connections(first).disconnect(store_id)
        assert len((await second("GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=store_id))["Plaintext"]) == 8
        assert open_sessions(hsm.module, old) == 1  # the second node's
        await first("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        await first("UpdateCustomKeyStore", CustomKeyStoreId=store_id, CloudHsmClusterId=new)
        await first("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
        key_id = (await first("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
        await _connections(first).disconnect(store_id)  # one login per token in this process
        await second("Encrypt", KeyId=key_id, Plaintext=b"on the new token")
        assert [open_sessions(hsm.module, old), open_sessions(hsm.module, new)] == [0, 1]
        await second("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    finally:
        await first.store.close()
        await second.store.close()


# The advisory locks of the test's own database (pg_locks shows every database's).
_ADVISORY = ("FROM pg_locks WHERE locktype = 'advisory' "
             "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")


async def _advisory_locks(dsn: str) -> int:
    return int(await fetch_value(dsn, f"SELECT count(*) {_ADVISORY}"))


async def test_a_store_a_dead_node_left_connecting_is_failed_by_another_nodes_tick(
    dsn: str, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The store stayed CONNECTING for good once the node connecting it was killed, on every node.
    # While that node lives, its Connect holds the account's custom key store lock in its database
    # session; PostgreSQL ends the session of a node that died, and the lock with it.
    monkeypatch.setenv(TIMEOUT_ENV, "60")  # the login below is held, not given up on
    faults = flaky_logins(monkeypatch)
    root, clock, cluster = RootKey(os.urandom(32)), ManualClock(NOW), next(clusters)
    first = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    second = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    try:
        store_id = str((await first("CreateCustomKeyStore", CustomKeyStoreName="dies", CloudHsmClusterId=cluster,
                                    TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN))["CustomKeyStoreId"])
        faults.hang("C_Login")
        connecting = asyncio.create_task(first("ConnectCustomKeyStore", CustomKeyStoreId=store_id))
        # the first node wrote CONNECTING and waits for the HSM's login
        await eventually(lambda: faults.logins > 0, what="the first node's C_Login (held)")
        await second.svc.run_due()
        assert await _state(second, store_id) == ("CONNECTING", None)  # a live node is connecting it
        # The first node dies: its database session ends (as PostgreSQL ends a killed process's).
        await fetch(dsn, f"SELECT pg_terminate_backend(pid) {_ADVISORY}")
        for _ in range(200):
            if await _advisory_locks(dsn) == 0:
                break
            await asyncio.sleep(0.05)
        await second.svc.run_due()
        assert await _state(second, store_id) == ("FAILED", "INTERNAL_ERROR")
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        faults.hold.set()
        # The first node's held C_Login goes on, and the node logs the session it was given after it
        # gave up out again. Both nodes are this one process, which the token sees as one login: a
        # Connect of the second node in between was refused as USER_LOGGED_IN.
        await eventually(lambda: bool(faults.sessions) and open_sessions(hsm.module, cluster) == 0,
                         what="the first node to log out the login it had given up on")
        with pytest.raises(errors.CustomKeyStoreInvalidStateException):  # as AWS, on FAILED
            await second("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
        await second("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        await second("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
        assert await _state(first, store_id) == ("CONNECTED", None)
        await second("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    finally:
        faults.hold.set()
        await first.store.close()
        await second.store.close()


async def _state(node: Node, store_id: str) -> tuple[str, str | None]:
    [entry] = (await node("DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return entry["ConnectionState"], entry.get("ConnectionErrorCode")


async def _waiting_for_a_lock(dsn: str) -> bool:
    """Whether a session of the test's database waits for an advisory lock another one holds."""
    return bool(await fetch_value(dsn, f"SELECT count(*) {_ADVISORY} AND NOT granted"))


async def test_a_key_made_while_another_node_disconnects_and_deletes_its_store_is_in_the_store_and_unavailable(
    dsn: str, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A CreateKey read the store CONNECTED and made the backing key, while the other node's Disconnect
    # made the store's keys (this one not yet saved) Unavailable and its Delete found no key: the key
    # was saved Enabled, in a store that no longer existed, for good (the run in serve, on PostgreSQL:
    # four Deletes of six succeeded). The CreateKey now holds the account's custom key store lock from
    # reading the store to saving the key, which Disconnect and Delete wait for.
    monkeypatch.setenv(TIMEOUT_ENV, "60")  # the generation below is held, not given up on
    faults = flaky_logins(monkeypatch)
    root, clock, cluster = RootKey(os.urandom(32)), ManualClock(NOW), next(clusters)
    first = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    second = Node(await PostgresStore.connect(dsn, root), clock, "us-east-1")
    try:
        store_id = await _connected_store(first, "deleted", cluster, trust_anchor)
        faults.hang("C_GenerateKey")
        creating = asyncio.create_task(first("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))
        await eventually(faults.holding.is_set, what="the first node's C_GenerateKey (held)")

        async def disconnect_and_delete() -> None:
            await second("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
            await second("DeleteCustomKeyStore", CustomKeyStoreId=store_id)

        removing = asyncio.create_task(disconnect_and_delete())
        while not removing.done() and not await _waiting_for_a_lock(dsn):
            await asyncio.sleep(0.01)
        faults.hold.set()
        key_id = (await creating)["KeyMetadata"]["KeyId"]
        with pytest.raises(errors.CustomKeyStoreHasCMKsException):
            await removing
        [entry] = (await second("DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
        assert entry["ConnectionState"] == "DISCONNECTED"
        assert (await second("DescribeKey", KeyId=key_id))["KeyMetadata"]["KeyState"] == "Unavailable"
    finally:
        faults.hold.set()
        await first.store.close()
        await second.store.close()
