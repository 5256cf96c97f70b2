"""A custom key store's PKCS#11 session failing under a live service (SoftHSM2): the store's next
call logs in again rather than failing on the dead session until the store is reconnected.

The service runs in-process: only this process can close its own session underneath it. The file
name sorts before test_custom_key_stores.py on purpose: once that file deletes a token from the
shared token directory, SoftHSM2 in this process answers every token lookup with CKR_GENERAL_ERROR
(test_audit_and_conditions.py relies on the same order)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from tests.integration.keystores.in_process import call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _close_session_underneath(svc: KmsService, store_id: str) -> None:
    """Close (and so log out) the store's live PKCS#11 session behind the service's back, as a
    token that drops its sessions (HSM restart, idle timeout) does."""
    (await live_session(svc, store_id)).close()


@pytest.mark.parametrize("operation", ["Encrypt", "Decrypt", "GenerateRandom"])
async def test_a_dead_session_is_replaced_on_the_next_call(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, operation: str
) -> None:
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"before"))["CiphertextBlob"]
    calls = {
        "Encrypt": lambda: call(svc, "Encrypt", KeyId=key_id, Plaintext=b"after"),
        "Decrypt": lambda: call(svc, "Decrypt", CiphertextBlob=blob),
        "GenerateRandom": lambda: call(svc, "GenerateRandom", NumberOfBytes=16, CustomKeyStoreId=store_id),
    }
    await _close_session_underneath(svc, store_id)
    refused = (errors.CustomKeyStoreInvalidStateException if operation == "GenerateRandom"
               else errors.KMSInvalidStateException)
    with pytest.raises(refused):  # the call that meets the dead session: the store's AWS error
        await calls[operation]()
    await calls[operation]()  # the next one logs in again
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"before"
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)  # logs out of the token


async def test_a_tampered_blob_keeps_the_session(svc: KmsService, clusters: Iterator[str], trust_anchor: str) -> None:
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"x"))["CiphertextBlob"]
    live = await live_session(svc, store_id)
    with pytest.raises(errors.InvalidCiphertextException):
        await call(svc, "Decrypt", CiphertextBlob=blob[:-1] + bytes([blob[-1] ^ 1]))
    assert await live_session(svc, store_id) is live  # a bad blob is the caller's, not the session's
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
