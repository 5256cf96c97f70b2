"""Custom key stores a crash left CONNECTING or DISCONNECTING, and stores of an old data dir connected
on one token, settled by the HSM's upkeep at the scheduler's tick (the node's start is its first):
a connect left over is FAILED with INTERNAL_ERROR, a disconnect left over finished, and of two stores
connected on one token the second is FAILED with USER_LOGGED_IN. A connect or disconnect still at
work (its lock held) is left alone. SoftHSM2 with the key service in this process, over SQLite."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from keytrail.kms import errors
from keytrail.kms.hsm import HsmCipher
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.operations.hsm_keys import STORES_LOCK
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import ACCOUNT, REGION, call, hsm_key, service
from tests.support.softhsm import SoftHsm, open_sessions

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _entry(svc: KmsService, store_id: str) -> dict[str, Any]:
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return entry  # type: ignore[no-any-return]


async def _key_state(svc: KmsService, key_id: str) -> str:
    return str((await call(svc, "DescribeKey", KeyId=key_id))["KeyMetadata"]["KeyState"])


async def _stored(svc: KmsService, store_id: str) -> CustomKeyStore:
    [store] = [s for s in await svc.store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
    return store


async def _left_in(svc: KmsService, store_id: str, state: ConnectionState) -> None:
    """The store as a node killed after the first write of a Connect or Disconnect left it: in
    `state`, its keys as they were, and the node's session gone with its process."""
    await cast(HsmCipher, svc.ciphers["hsm"]).connections.disconnect(store_id)
    await svc.store.put_custom_key_store((await _stored(svc, store_id)).with_state(state))


def _lines(caplog: pytest.LogCaptureFixture, words: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if words in r.getMessage()]


async def test_a_store_a_crash_left_connecting_is_failed_with_internal_error_at_the_next_tick(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # It stayed CONNECTING for good: no node finished the connect, and Connect (valid in CONNECTING)
    # was the only way out, where AWS shows such a store FAILED.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await svc.store.put_custom_key_store((await _stored(svc, store_id)).with_state(ConnectionState.CONNECTING))
    caplog.set_level(logging.WARNING)
    await svc.run_due()
    entry = await _entry(svc, store_id)
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "INTERNAL_ERROR")
    [line] = _lines(caplog, "was left CONNECTING")
    assert store_id in line and "FAILED with INTERNAL_ERROR" in line and PIN not in caplog.text
    assert await _key_state(svc, key_id) == "Unavailable"
    with pytest.raises(errors.CustomKeyStoreInvalidStateException):  # as AWS, on FAILED
        await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)  # AWS's way out of FAILED
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert (await _entry(svc, store_id))["ConnectionState"] == "CONNECTED"
    assert await _key_state(svc, key_id) == "Enabled"
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"connected again")
    await svc.run_due()
    assert (await _entry(svc, store_id))["ConnectionState"] == "CONNECTED"
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0


async def test_a_store_a_crash_left_disconnecting_is_disconnected_at_the_next_tick_with_its_keys_unavailable(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # DisconnectCustomKeyStore on DISCONNECTING was accepted as the way out, where AWS refuses it.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    await _left_in(svc, store_id, ConnectionState.DISCONNECTING)  # killed before its keys were changed
    assert await _key_state(svc, key_id) == "Enabled"
    with pytest.raises(errors.CustomKeyStoreInvalidStateException, match="in ConnectionState DISCONNECTING"):
        await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    with pytest.raises(errors.CustomKeyStoreInvalidStateException):
        await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    caplog.set_level(logging.WARNING)
    await svc.run_due()
    assert "ConnectionErrorCode" not in (entry := await _entry(svc, store_id))
    assert entry["ConnectionState"] == "DISCONNECTED"
    [line] = _lines(caplog, "was left DISCONNECTING")
    assert store_id in line and "now DISCONNECTED" in line
    assert await _key_state(svc, key_id) == "Unavailable"
    with pytest.raises(errors.KMSInvalidStateException):
        await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"disconnected")
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _key_state(svc, key_id) == "Enabled"
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"connected again")
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0


async def test_a_store_whose_connect_holds_the_lock_is_left_connecting_by_the_tick(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str,
) -> None:
    # Between a Connect's first write and its last, the account's custom key store lock is held (a
    # real Connect at work on another node: test_custom_key_store_nodes.py).
    store_id = (await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName="slow", CloudHsmClusterId=next(clusters),
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"]
    holding, done = asyncio.Event(), asyncio.Event()

    async def connect_at_work() -> None:
        async with svc.store.key_lock(ACCOUNT, REGION, STORES_LOCK):
            await svc.store.put_custom_key_store((await _stored(svc, store_id)).with_state(ConnectionState.CONNECTING))
            holding.set()
            await done.wait()

    at_work = asyncio.create_task(connect_at_work())
    await holding.wait()
    await svc.run_due()
    assert (await _entry(svc, store_id))["ConnectionState"] == "CONNECTING"
    done.set()
    await at_work  # it ends without its last write, as a node that stopped would
    await svc.run_due()
    assert (await _entry(svc, store_id))["ConnectionErrorCode"] == "INTERNAL_ERROR"


async def test_of_two_stores_connected_on_one_token_the_one_created_second_is_failed_with_user_logged_in(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # Both stayed CONNECTED, only logged at start: whichever store's call came first took the
    # token's login on a node, and the other's calls failed there until it was disconnected.
    cluster = next(clusters)
    second_id, key_id = await hsm_key(svc, cluster, trust_anchor)  # holds the token's login now
    second = await _stored(svc, second_id)
    first = CustomKeyStore(ACCOUNT, REGION, "cks-00000000000000001", "old-first", cluster, trust_anchor, PIN,
                           second.creation_date - timedelta(days=1), ConnectionState.CONNECTED)
    await svc.store.put_custom_key_store(first)  # as a keytrail from before one token, one store wrote it
    with pytest.raises(errors.CustomKeyStoreInvalidStateException):  # the token's one login is the second's
        await call(svc, "GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=first.store_id)
    caplog.set_level(logging.WARNING)
    await svc.run_due()
    assert (await _entry(svc, first.store_id))["ConnectionState"] == "CONNECTED"
    entry = await _entry(svc, second_id)
    assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "USER_LOGGED_IN")
    [line] = _lines(caplog, "were both CONNECTED on the HSM token")
    assert f"{first.store_id}, created first, stays connected" in line
    assert f"{second_id} is now FAILED with USER_LOGGED_IN" in line and repr(cluster) in line
    assert PIN not in caplog.text
    assert await _key_state(svc, key_id) == "Unavailable"
    # The second's session, and its login, closed at that tick: the first logs in and serves.
    assert len((await call(svc, "GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=first.store_id))["Plaintext"]) == 8
    assert open_sessions(hsm.module, cluster) == 1
    await svc.run_due()
    assert [(await _entry(svc, s))["ConnectionState"] for s in (first.store_id, second_id)] == ["CONNECTED", "FAILED"]
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=second_id)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=first.store_id)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=second_id)  # one at a time, as before
    assert await _key_state(svc, key_id) == "Enabled"
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"the second again")
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=second_id)
    assert open_sessions(hsm.module, cluster) == 0


async def test_connect_on_a_store_a_crash_left_connected_with_its_keys_unavailable_gives_them_back(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str,
) -> None:
    # A node that died between a Connect's write of CONNECTED and its keys' return left them
    # Unavailable under a connected store, and Connect (valid on CONNECTED) changed nothing.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await svc.store.put_custom_key_store((await _stored(svc, store_id)).with_state(ConnectionState.CONNECTED))
    await svc.run_due()
    assert await _key_state(svc, key_id) == "Unavailable"
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _key_state(svc, key_id) == "Enabled"
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"connected all along")
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0
