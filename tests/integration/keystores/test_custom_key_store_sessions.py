"""A custom key store's PKCS#11 session failing under a live service (SoftHSM2): the store's next
call logs in again rather than failing on the dead session until the store is reconnected.

The service runs in-process: only this process can close its own session underneath it. The file
name sorts before test_custom_key_stores.py on purpose: once that file deletes a token from the
shared token directory, SoftHSM2 in this process answers every token lookup with CKR_GENERAL_ERROR
(test_audit_and_conditions.py relies on the same order)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.hsm import HsmCipher
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.conftest import PIN
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration

ACCOUNT, REGION = "111122223333", "us-east-1"


class _Records:
    async def record(self, call: CallRecord) -> None:
        return None


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    yield KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=_Records(), authorizer=OwnAccountAuthorizer()))
    await store.close()


async def _call(svc: KmsService, operation: str, **params: Any) -> dict[str, Any]:
    context = CallContext(Principal.account_root(ACCOUNT, "AKIAROOT000000000001"), REGION, os.urandom(8).hex())
    return await svc.execute(operation, context, params)


async def _hsm_key(svc: KmsService, cluster: str, trust_anchor: str) -> tuple[str, str]:
    store_id = (await _call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName=f"sessions-{cluster}", CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"]
    await _call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    key = await _call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    return store_id, key["KeyMetadata"]["KeyId"]


async def _close_session_underneath(svc: KmsService, store_id: str) -> None:
    """Close (and so log out) the store's live PKCS#11 session behind the service's back, as a
    token that drops its sessions (HSM restart, idle timeout) does."""
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    [store] = [s for s in await svc.store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
    (await connections.session(store)).close()


@pytest.mark.parametrize("operation", ["Encrypt", "Decrypt", "GenerateRandom"])
async def test_a_dead_session_is_replaced_on_the_next_call(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, operation: str
) -> None:
    store_id, key_id = await _hsm_key(svc, next(clusters), trust_anchor)
    blob = (await _call(svc, "Encrypt", KeyId=key_id, Plaintext=b"before"))["CiphertextBlob"]
    calls = {
        "Encrypt": lambda: _call(svc, "Encrypt", KeyId=key_id, Plaintext=b"after"),
        "Decrypt": lambda: _call(svc, "Decrypt", CiphertextBlob=blob),
        "GenerateRandom": lambda: _call(svc, "GenerateRandom", NumberOfBytes=16, CustomKeyStoreId=store_id),
    }
    await _close_session_underneath(svc, store_id)
    refused = (errors.CustomKeyStoreInvalidStateException if operation == "GenerateRandom"
               else errors.KMSInvalidStateException)
    with pytest.raises(refused):  # the call that meets the dead session: the store's AWS error
        await calls[operation]()
    await calls[operation]()  # the next one logs in again
    assert (await _call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"before"
    await _call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)  # logs out of the token


async def test_a_tampered_blob_keeps_the_session(svc: KmsService, clusters: Iterator[str], trust_anchor: str) -> None:
    store_id, key_id = await _hsm_key(svc, next(clusters), trust_anchor)
    blob = (await _call(svc, "Encrypt", KeyId=key_id, Plaintext=b"x"))["CiphertextBlob"]
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    [store] = [s for s in await svc.store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
    live = await connections.session(store)
    with pytest.raises(errors.InvalidCiphertextException):
        await _call(svc, "Decrypt", CiphertextBlob=blob[:-1] + bytes([blob[-1] ^ 1]))
    assert await connections.session(store) is live  # a bad blob is the caller's, not the session's
    await _call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
