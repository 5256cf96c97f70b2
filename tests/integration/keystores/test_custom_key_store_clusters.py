"""Which custom key store a token (the "cluster") belongs to, with the key service in this process
over SoftHSM2: a token backs one store on the whole node, whatever id names it.

The file name sorts before test_custom_key_stores.py on purpose (see test_custom_key_store_sessions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from keytrail.kms.hsm import TOKENS_ENV
from keytrail.kms.keystores import CloudHsmClusterInUseException, CloudHsmClusterNotRelatedException
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import call, hsm_key, recorded, service
from tests.support.softhsm import SoftHsm, open_sessions

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _create(svc: KmsService, name: str, cluster: str, trust_anchor: str) -> str:
    return str((await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName=name, CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"])


async def test_two_cluster_ids_naming_one_token_are_one_cluster(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KEYTRAIL_PKCS11_TOKENS maps a cluster id to the token's label, and an unmapped id is the label
    # itself: both ids reach the same token, whose login the two stores would share.
    token, other = next(clusters), next(clusters)
    monkeypatch.setenv(TOKENS_ENV, f"cluster-mappedtokenaaaa={token}")
    await _create(svc, "by-label", token, trust_anchor)
    with pytest.raises(CloudHsmClusterInUseException):
        await _create(svc, "by-map", "cluster-mappedtokenaaaa", trust_anchor)
    moved = await _create(svc, "elsewhere", other, trust_anchor)
    with pytest.raises(CloudHsmClusterInUseException):
        await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=moved, CloudHsmClusterId="cluster-mappedtokenaaaa")
    monkeypatch.setenv(TOKENS_ENV, f"cluster-mappedtokenaaaa={other}")  # now the id of the store's own token
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=moved, CloudHsmClusterId="cluster-mappedtokenaaaa")
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=moved))["CustomKeyStores"]
    assert entry["CloudHsmClusterId"] == "cluster-mappedtokenaaaa"


NOT_RELATED = (
    "The request was rejected because the specified CloudHSM cluster has a different cluster certificate than the "
    "original cluster. You cannot use the operation to specify an unrelated cluster for an CloudHSM key store."
)


async def _state(svc: KmsService, store_id: str) -> dict[str, str]:
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return {name: entry.get(name, "") for name in ("CloudHsmClusterId", "ConnectionState", "ConnectionErrorCode")}


async def test_a_store_with_keys_is_not_moved_to_a_token_without_their_backing_keys(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Moved, the store connected to the other token, and every Encrypt and Decrypt of its keys
    # answered KMSInvalidStateException: that token holds none of their backing keys.
    old, unrelated = next(clusters), next(clusters)
    store_id, key_id = await hsm_key(svc, old, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    with pytest.raises(CloudHsmClusterNotRelatedException) as excinfo:
        await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=store_id, CloudHsmClusterId=unrelated)
    assert excinfo.value.message == NOT_RELATED
    assert (await _state(svc, store_id))["CloudHsmClusterId"] == old
    assert open_sessions(hsm.module, unrelated) == 0  # the check's login ended with it
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"still on its token"))["CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"still on its token"
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    # A store without keys moves to any free token: the refused one, which the check left logged out.
    keyless = await _create(svc, "keyless", next(clusters), trust_anchor)
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=keyless, CloudHsmClusterId=unrelated)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=keyless)
    assert await _state(svc, keyless) == {"CloudHsmClusterId": unrelated, "ConnectionState": "CONNECTED",
                                          "ConnectionErrorCode": ""}
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=keyless)


async def test_a_token_that_refuses_the_login_is_not_checked_and_connect_says_why(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    # UpdateCustomKeyStore has no error for a password the token refuses: ConnectCustomKeyStore has one.
    old, other = next(clusters), next(clusters)
    store_id, _ = await hsm_key(svc, old, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=store_id, CloudHsmClusterId=other,
               KeyStorePassword="not-the-pin")
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _state(svc, store_id) == {"CloudHsmClusterId": other, "ConnectionState": "FAILED",
                                           "ConnectionErrorCode": "INVALID_CREDENTIALS"}
    assert open_sessions(hsm.module, other) == 0
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_keys_name_the_cluster_their_store_was_moved_to(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A store repaired onto a related cluster (here another id of its own token, as a cluster restored
    # from its backup) holds its keys' material there: DescribeKey and the keys' CloudTrail records
    # named the cluster the key was created in, which may be deleted by now.
    token, restored = next(clusters), "cluster-restoredcopyaaa"
    monkeypatch.setenv(TOKENS_ENV, f"{restored}={token}")
    store_id, key_id = await hsm_key(svc, token, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=store_id, CloudHsmClusterId=restored)
    assert (await call(svc, "DescribeKey", KeyId=key_id))["KeyMetadata"]["CloudHsmClusterId"] == restored
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"on the restored cluster")
    await call(svc, "ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    named = {record.event_name: (record.additional_event_data or {}).get("clusterId") for record in recorded(svc)
             if record.event_name in ("Encrypt", "ScheduleKeyDeletion")}
    assert named == {"Encrypt": restored, "ScheduleKeyDeletion": restored}
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_connect_names_the_cluster_an_update_cut_short_left_unnamed(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A node that stopped between UpdateCustomKeyStore's write of the store and that of its keys
    # left the keys naming the old cluster; connecting the store names the new one before any use.
    token, restored = next(clusters), "cluster-restoredcopybbb"
    monkeypatch.setenv(TOKENS_ENV, f"{restored}={token}")
    store_id, key_id = await hsm_key(svc, token, trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    [store] = [s for s in await svc.store.all_custom_key_stores() if s.store_id == store_id]
    await svc.store.put_custom_key_store(replace(store, cluster_id=restored))  # the update's first write only
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert (await call(svc, "DescribeKey", KeyId=key_id))["KeyMetadata"]["CloudHsmClusterId"] == restored
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
