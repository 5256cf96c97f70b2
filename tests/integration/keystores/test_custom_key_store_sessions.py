"""A custom key store's PKCS#11 session failing under a live service (SoftHSM2): the store's next
call logs in again rather than failing on the dead session until the store is reconnected; and no
session is left open on the token by a refused login, a refused logout or a Disconnect, as the
token counts them (C_GetSessionInfo, tests/support/softhsm.py).

The service runs in-process: only this process can close its own session underneath it, or count
its sessions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pkcs11
import pytest
from pkcs11 import exceptions as p11

from keytrail.kms import errors
from keytrail.kms.hsm import HsmCipher
from keytrail.kms.hsm_login import Logins
from keytrail.kms.hsm_module import MODULE_CALLS
from keytrail.kms.keys import Key
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.flaky_token import flaky_logins
from tests.integration.keystores.in_process import call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm, open_sessions

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


async def _state(svc: KmsService, store_id: str) -> tuple[str, str | None]:
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return entry["ConnectionState"], entry.get("ConnectionErrorCode")


async def test_a_refused_login_leaves_no_session_open_on_the_token(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Each failed ConnectCustomKeyStore used to leave the session opened for its login on the token,
    # which an HSM counts against its limit of sessions.
    cluster = next(clusters)
    store_id = (await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName="wrong-pin", CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword="not-the-pin",
    ))["CustomKeyStoreId"]
    for _ in range(5):
        await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
        assert await _state(svc, store_id) == ("FAILED", "INVALID_CREDENTIALS")
        await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=store_id, KeyStorePassword=PIN)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _state(svc, store_id) == ("CONNECTED", None)
    assert len((await call(svc, "GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=store_id))["Plaintext"]) == 8
    assert open_sessions(hsm.module, cluster) == 1
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0


@pytest.mark.parametrize("refusal", [p11.DeviceError(), p11.UserNotLoggedIn()])
async def test_a_session_whose_logout_the_token_refuses_is_closed_all_the_same(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
    refusal: p11.PKCS11Error,
) -> None:
    # C_Logout refused (a network HSM's device error; a token that logged the process out already and
    # says so, as PKCS#11 has it and SoftHSM2 does not): the session used to stay open behind it.
    faults = flaky_logins(monkeypatch)
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    assert open_sessions(hsm.module, cluster) == 1
    faults.fail("C_Logout", refusal)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _state(svc, store_id) == ("DISCONNECTED", None)
    assert open_sessions(hsm.module, cluster) == 0
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)  # no login of the old session is left
    assert await _state(svc, store_id) == ("CONNECTED", None)
    assert (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"again"))["KeyId"].endswith(key_id)
    assert open_sessions(hsm.module, cluster) == 1
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert open_sessions(hsm.module, cluster) == 0


async def test_a_call_that_read_its_store_just_before_a_disconnect_leaves_no_session_behind(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An Encrypt read its store CONNECTED, then a Disconnect ended the store's session before the
    # Encrypt asked for it: the Encrypt used to log in again, and left that session (and the token's
    # login) on the disconnected store until it was next connected.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    cipher = cast(HsmCipher, svc.ciphers["hsm"])
    read, go_on, store_of = asyncio.Event(), asyncio.Event(), cipher._store_of

    async def read_then_wait(key: Key) -> CustomKeyStore | None:
        store = await store_of(key)
        read.set()
        await go_on.wait()
        return store

    monkeypatch.setattr(cipher, "_store_of", read_then_wait)
    encrypting = asyncio.create_task(call(svc, "Encrypt", KeyId=key_id, Plaintext=b"late"))
    await read.wait()
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    go_on.set()
    with pytest.raises(errors.KMSInvalidStateException):
        await encrypting
    assert open_sessions(hsm.module, cluster) == 0
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"again"))["KeyId"].endswith(key_id)
    assert open_sessions(hsm.module, cluster) == 1
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


def _log_the_user_out(hsm: SoftHsm, cluster: str) -> None:
    """End the token user's login behind the service's back, as another application's C_Logout or a
    token resetting its login state does: a PKCS#11 login belongs to the application, so the store's
    session stays open, and public."""
    with MODULE_CALLS:
        session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open()
        try:
            Logins(hsm.module).log_out(session.handle)
        finally:
            session.close()


@pytest.mark.parametrize("lookup", ["a key the session has not looked up", "a key whose handle it keeps"])
async def test_a_session_that_lost_its_login_is_replaced_on_the_next_call(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, lookup: str
) -> None:
    # Its private objects invisible, the session answered "no such key" (C_FindObjects finds none), as
    # for a key deleted from the token, and was kept: the store failed every call until reconnected.
    cluster = next(clusters)
    store_id, used_id = await hsm_key(svc, cluster, trust_anchor)
    blob = (await call(svc, "Encrypt", KeyId=used_id, Plaintext=b"before"))["CiphertextBlob"]
    unused_id = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    key_id = unused_id if lookup.startswith("a key the session has not") else used_id
    stale = await live_session(svc, store_id)
    _log_the_user_out(hsm, cluster)
    with pytest.raises(errors.KMSInvalidStateException):  # the call that meets it: the store's AWS error
        await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"after")
    await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"after")  # the next one logs in again
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"before"
    assert await live_session(svc, store_id) is not stale
    assert open_sessions(hsm.module, cluster) == 1  # the public one was closed
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
