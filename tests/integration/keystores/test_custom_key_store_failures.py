"""The HSM failing a call of a custom key store: the caller gets the AWS error of a key store whose HSM
cannot serve (KMSInvalidStateException for cryptographic calls, CustomKeyStoreInvalidStateException
for CreateKey and GenerateRandom), never InvalidCiphertextException for a blob that is fine; a
session the failure may have broken is dropped and the next call logs in again, one the token only
refused a request on is kept; and no log line or error carries what was being sealed.

SoftHSM2 with the key service in this process; the failures are injected into its sessions
(flaky_token.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pkcs11
import pytest
from pkcs11 import Attribute, ObjectClass
from pkcs11 import exceptions as p11

from keytrail.kms import errors
from keytrail.kms.ciphertext import FORMAT_V1, FORMAT_V3
from keytrail.kms.hsm import HsmCipher
from keytrail.kms.keystores import CloudHsmClusterNotActiveException, CloudHsmClusterNotRelatedException
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import IMPATIENT_TIMEOUT as TIMEOUT
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.flaky_token import Faults
from tests.integration.keystores.in_process import call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm, open_sessions, token_keys

pytestmark = pytest.mark.integration

SECRET = b"the plaintext no log line may hold"
CONTEXT = {"purpose": "failures"}


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm, faults: Faults) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _fresh_session(svc: KmsService, store_id: str) -> Any:
    """Start the store on a new login, so that the next call finds, reads and derives afresh."""
    await cast(HsmCipher, svc.ciphers["hsm"]).connections.drop(await live_session(svc, store_id))
    return await live_session(svc, store_id)


def _operations(svc: KmsService, store_id: str, key_id: str, blob: bytes) -> dict[str, Any]:
    return {
        "Encrypt": lambda: call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET, EncryptionContext=CONTEXT),
        "Decrypt": lambda: call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=CONTEXT),
        "GenerateRandom": lambda: call(svc, "GenerateRandom", NumberOfBytes=16, CustomKeyStoreId=store_id),
        "CreateKey": lambda: call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id),
    }


_LOST = "dropped"
_KEPT = "kept"
CASES = [
    # A blob that is fine, opened while the token fails: not InvalidCiphertextException.
    ("Decrypt", "C_DeriveKey", p11.GeneralError(), errors.KMSInvalidStateException, _LOST),
    ("Decrypt", "C_DeriveKey", p11.FunctionFailed(), errors.KMSInvalidStateException, _LOST),
    ("Decrypt", "C_Decrypt", p11.DeviceMemory(), errors.KMSInvalidStateException, _KEPT),
    ("Decrypt", "C_Decrypt", p11.OperationActive(), errors.KMSInvalidStateException, _LOST),
    # SoftHSM2's answer to a wrong tag, given by a token that dropped the session meanwhile.
    ("Decrypt", "C_Decrypt", p11.GeneralError(), errors.KMSInvalidStateException, _LOST),
    ("Decrypt", "C_FindObjects", p11.GeneralError(), errors.KMSInvalidStateException, _LOST),
    # A refusal of the token leaves the session as it was; a failure that may be the session's does not.
    ("Encrypt", "C_Encrypt", p11.DeviceMemory(), errors.KMSInvalidStateException, _KEPT),
    ("Encrypt", "C_Encrypt", p11.GeneralError(), errors.KMSInvalidStateException, _LOST),
    ("Encrypt", "C_DeriveKey", p11.FunctionFailed(), errors.KMSInvalidStateException, _LOST),
    ("GenerateRandom", "C_GenerateRandom", p11.DeviceMemory(), errors.CustomKeyStoreInvalidStateException, _KEPT),
    ("GenerateRandom", "C_GenerateRandom", p11.FunctionFailed(), errors.CustomKeyStoreInvalidStateException, _LOST),
    ("CreateKey", "C_GenerateKey", p11.TemplateInconsistent(), errors.CustomKeyStoreInvalidStateException, _KEPT),
    ("CreateKey", "C_GenerateKey", p11.GeneralError(), errors.CustomKeyStoreInvalidStateException, _LOST),
]


@pytest.mark.parametrize(("operation", "function", "error", "answer", "session"), CASES)
async def test_a_failing_hsm_answers_the_store_error_and_the_next_call_succeeds(
    svc: KmsService, faults: Faults, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
    operation: str, function: str, error: Exception, answer: type[errors.KmsError], session: str,
) -> None:
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET, EncryptionContext=CONTEXT))["CiphertextBlob"]
    operations, live = _operations(svc, store_id, key_id, blob), await _fresh_session(svc, store_id)
    caplog.set_level(logging.INFO)
    faults.fail(function, error, closing=session == _LOST and isinstance(error, p11.GeneralError))
    with pytest.raises(answer) as refused:
        await operations[operation]()
    assert ((await live_session(svc, store_id)) is live) == (session == _KEPT)
    await operations[operation]()  # the token answers again: so does the store
    assert (await call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=CONTEXT))["Plaintext"] == SECRET
    said = [record.getMessage() for record in caplog.records] + [str(refused.value)]
    assert [line for line in said if SECRET.decode() in line or SECRET.hex() in line] == []
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_format_3_blob_opens_after_the_token_failed_to_set_cka_derive_once(
    svc: KmsService, hsm: SoftHsm, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Setting CKA_DERIVE on a key made before format 3 failed once, as a token failing may: the key
    # must not be taken for one that cannot derive for the rest of the session (its format 3 blobs
    # refused as InvalidCiphertextException, its new blobs format 1). The session is dropped instead.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"]
    assert blob[0] == FORMAT_V3
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open(rw=True)  # shares the service's login
    try:  # as keys were made before format 3 (the blob above opens all the same: it is the key's)
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)[Attribute.DERIVE] = False
    finally:
        session.close()
    live = await _fresh_session(svc, store_id)
    faults.fail("C_SetAttributeValue", p11.GeneralError())
    with pytest.raises(errors.KMSInvalidStateException):
        await call(svc, "Decrypt", CiphertextBlob=blob)
    assert await live_session(svc, store_id) is not live
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == SECRET
    assert (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"][0] == FORMAT_V3
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_key_the_token_will_not_let_derive_still_seals_in_format_1(
    svc: KmsService, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    # A refusal (CKR_KEY_FUNCTION_NOT_PERMITTED, which python-pkcs11 has no class for) is the key's,
    # not the session's: the blob is sealed in format 1 on the same session, as before.
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    live = await _fresh_session(svc, store_id)
    faults.fail("C_DeriveKey", p11.PKCS11Error("Unmapped error code 0x68"))
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"]
    assert blob[0] == FORMAT_V1 and await live_session(svc, store_id) is live
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == SECRET
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_an_hsm_that_stops_answering_fails_the_calls_in_time_and_holds_no_shared_thread(
    impatient: KmsService, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    svc = impatient
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    live = await live_session(svc, store_id)
    faults.hang("C_Encrypt")  # the token stops answering in the middle of an Encrypt

    async def encrypt() -> object:
        try:
            return await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET)
        except errors.KmsError as error:
            return type(error)

    try:
        started = asyncio.get_running_loop().time()
        # Calls pile up on the store while the event loop's default pool still serves everything else.
        answers = await asyncio.gather(*(encrypt() for _ in range(12)), asyncio.to_thread(lambda: "free"))
        waited = asyncio.get_running_loop().time() - started
        assert answers == [errors.KMSInvalidStateException] * 12 + ["free"]
        assert waited < 8 * TIMEOUT  # not one timeout after another (12 of them)
        assert await encrypt() is errors.KMSInvalidStateException  # at once, while the call holds the HSM
    finally:
        faults.hold.set()
    # The token answers again: the next call logs in afresh and is served.
    for _ in range(50):
        if (await encrypt()) is not errors.KMSInvalidStateException:
            break
        await asyncio.sleep(TIMEOUT / 10)
    assert await live_session(svc, store_id) is not live
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == SECRET
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_login_the_hsm_answers_too_late_fails_the_connection_and_is_closed(
    impatient: KmsService, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    svc = impatient
    store_id = (await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName="late", CloudHsmClusterId=next(clusters),
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"]
    faults.hang("C_Login")
    try:
        await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    finally:
        faults.hold.set()
    [store] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    assert (store["ConnectionState"], store["ConnectionErrorCode"]) == ("FAILED", "NETWORK_ERRORS")
    # The login that ended after all was closed: kept, it would refuse the next (USER_ALREADY_LOGGED_IN).
    for _ in range(50):
        if len(faults.sessions) == 1:
            break
        await asyncio.sleep(TIMEOUT / 10)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    [store] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    assert store["ConnectionState"] == "CONNECTED"
    key_id = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == SECRET
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


CHANGED_PIN = "changed-by-the-hsm-admin"


async def pin_changed_under(svc: KmsService, hsm: SoftHsm, cluster: str, store_id: str) -> Any:
    """The cluster's token with its PIN changed by the HSM's admin, and the store's session dropped
    (as a restart would): the store's next call must log in with the PIN it holds."""
    token = pkcs11.lib(hsm.module).get_token(token_label=cluster)
    with token.open(rw=True) as shared:  # shares the service's login
        shared.set_pin(PIN, CHANGED_PIN)
    await cast(HsmCipher, svc.ciphers["hsm"]).connections.drop(await live_session(svc, store_id))
    return token


def put_pin_back(token: Any) -> None:
    with token.open(rw=True, user_pin=CHANGED_PIN) as admin:
        admin.set_pin(CHANGED_PIN, PIN)


async def test_a_password_the_token_refused_is_not_tried_again_until_the_store_is_connected_again(
    svc: KmsService, hsm: SoftHsm, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Each wrong password counts towards locking the HSM user out (AWS CloudHSM: USER_LOCKED_OUT):
    # a store whose token's PIN changed under it must not try its password on every call.
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    token = await pin_changed_under(svc, hsm, cluster, store_id)
    tried = faults.logins
    for _ in range(3):
        with pytest.raises(errors.KMSInvalidStateException):
            await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET)
    assert faults.logins == tried + 1
    put_pin_back(token)
    with pytest.raises(errors.KMSInvalidStateException):  # not tried until the store is connected again
        await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET)
    assert faults.logins == tried + 1
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert (await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET))["CiphertextBlob"]
    assert faults.logins == tried + 2
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_login_the_token_refuses_on_a_call_is_said_once_in_the_log(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The store stays CONNECTED and its calls answer only the store's AWS error: without this line
    # nothing told the operator that the token refused the sealed PIN (changed under keytrail).
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    token = await pin_changed_under(svc, hsm, cluster, store_id)
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        for _ in range(3):
            with pytest.raises(errors.KMSInvalidStateException):
                await call(svc, "Encrypt", KeyId=key_id, Plaintext=SECRET)
    said = [r.getMessage() for r in caplog.records if "login to its token failed" in r.getMessage()]
    assert len(said) == 1
    assert store_id in said[0] and "INVALID_CREDENTIALS" in said[0]
    assert PIN not in caplog.text and CHANGED_PIN not in caplog.text
    put_pin_back(token)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_connect_the_token_refuses_says_why_in_one_warning(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Only DescribeCustomKeyStores said why the store ended FAILED; the log had no line at all.
    store_id = (await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName="wrong-pin", CloudHsmClusterId=next(clusters),
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=CHANGED_PIN,
    ))["CustomKeyStoreId"]
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    [said] = [r.getMessage() for r in caplog.records if store_id in r.getMessage()]
    assert "FAILED (INVALID_CREDENTIALS: PinIncorrect)" in said and "UpdateCustomKeyStore KeyStorePassword" in said
    assert CHANGED_PIN not in caplog.text
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def _created_on_a_loaded_machine_too(svc: KmsService, store_id: str) -> str:
    """A CreateKey in the store once its session was dropped: logging in to the token again can
    outlast TIMEOUT on a loaded machine (CI's, with other tests beside it), so it is tried again."""
    for _ in range(5):
        with contextlib.suppress(errors.CustomKeyStoreInvalidStateException):
            return str((await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))[
                "KeyMetadata"]["KeyId"])
        await asyncio.sleep(TIMEOUT)
    return str((await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"])


async def test_a_backing_key_the_hsm_makes_after_create_key_gave_up_is_removed(
    impatient: KmsService, hsm: SoftHsm, faults: Faults, clusters: Iterator[str], trust_anchor: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The generation went on in the PKCS#11 thread after CreateKey answered the store's error, and
    # the key it made stayed in the HSM with no KMS key pointing to it.
    svc, cluster = impatient, next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    faults.hang("C_GenerateKey")
    try:
        with pytest.raises(errors.CustomKeyStoreInvalidStateException):
            await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    finally:
        faults.hold.set()
    for _ in range(50):
        if "made after CreateKey gave up on the HSM, was removed" in caplog.text:
            break
        await asyncio.sleep(TIMEOUT / 10)
    made = await _created_on_a_loaded_machine_too(svc, store_id)
    for _ in range(50):  # a generation that timed out on a loaded machine removes its key meanwhile
        if token_keys(hsm.module, cluster) == {key_id, made}:
            break
        await asyncio.sleep(TIMEOUT / 10)
    assert token_keys(hsm.module, cluster) == {key_id, made}
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_an_hsm_that_fails_the_check_of_a_new_cluster_s_keys_answers_cluster_not_active(
    impatient: KmsService, hsm: SoftHsm, faults: Faults, clusters: Iterator[str], trust_anchor: str
) -> None:
    # UpdateCustomKeyStore logs in to the new token to look for the store's backing keys: a token
    # that does not answer the login in time, or fails a lookup, cannot be told related or not.
    svc, other = impatient, next(clusters)
    store_id, _ = await hsm_key(svc, next(clusters), trust_anchor)
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    move = {"CustomKeyStoreId": store_id, "CloudHsmClusterId": other}
    faults.hang("C_Login")
    try:
        with pytest.raises(CloudHsmClusterNotActiveException, match="did not answer in time"):
            await call(svc, "UpdateCustomKeyStore", **move)
    finally:
        faults.hold.set()
    for _ in range(50):  # NotActive at once while the login given up on holds the PKCS#11 thread
        try:
            await call(svc, "UpdateCustomKeyStore", **move)
        except CloudHsmClusterNotActiveException:
            await asyncio.sleep(TIMEOUT / 10)
        except CloudHsmClusterNotRelatedException:
            break
    else:
        pytest.fail("the PKCS#11 thread was still held by the login the HSM answered late")
    assert open_sessions(hsm.module, other) == 0  # the login that ended after all was logged out
    faults.fail("C_FindObjects", p11.GeneralError())
    with pytest.raises(CloudHsmClusterNotActiveException, match=r"\(GeneralError\)"):
        await call(svc, "UpdateCustomKeyStore", **move)
    assert open_sessions(hsm.module, other) == 0
    with pytest.raises(CloudHsmClusterNotRelatedException):  # the token answers again
        await call(svc, "UpdateCustomKeyStore", **move)
    [store] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    assert store["CloudHsmClusterId"] != other
