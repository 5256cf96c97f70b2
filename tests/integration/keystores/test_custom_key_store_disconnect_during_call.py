"""DisconnectCustomKeyStore while the store's HSM holds a call (an Encrypt, CreateKey's key
generation) for longer than KEYTRAIL_PKCS11_TIMEOUT. The session's close has to wait behind that
call, and the disconnect stops waiting for it. The close must still run once the HSM answers, before
any later login. When it never ran, the session kept the token's login, and every later
ConnectCustomKeyStore of the store ended FAILED with USER_LOGGED_IN until the process restarted.

SoftHSM2 with the key service in this process; the slow call is held inside the token's session
(flaky_token.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import IMPATIENT_TIMEOUT as TIMEOUT
from tests.integration.keystores.flaky_token import Faults
from tests.integration.keystores.in_process import call, hsm_key
from tests.support.softhsm import SoftHsm, open_sessions

pytestmark = pytest.mark.integration

def _encrypt(svc: KmsService, store_id: str, key_id: str) -> Awaitable[Any]:
    return call(svc, "Encrypt", KeyId=key_id, Plaintext=b"held in the HSM")


def _create_key(svc: KmsService, store_id: str, key_id: str) -> Awaitable[Any]:
    return call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)


HELD = [
    ("C_Encrypt", _encrypt, errors.KMSInvalidStateException),
    ("C_GenerateKey", _create_key, errors.CustomKeyStoreInvalidStateException),
]


async def _describe(svc: KmsService, store_id: str) -> tuple[str, str | None]:
    [store] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return store["ConnectionState"], store.get("ConnectionErrorCode")


@pytest.mark.parametrize(("function", "operation", "answer"), HELD, ids=["Encrypt", "CreateKey"])
async def test_a_store_disconnected_while_its_hsm_holds_a_call_is_logged_out_and_connects_again(
    impatient: KmsService, hsm: SoftHsm, faults: Faults, clusters: Iterator[str], trust_anchor: str,
    function: str, operation: Callable[[KmsService, str, str], Awaitable[Any]], answer: type[errors.KmsError],
) -> None:
    svc, cluster = impatient, next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    faults.hang(function)
    held = asyncio.create_task(operation(svc, store_id, key_id))
    try:
        assert await asyncio.to_thread(faults.holding.wait, 10)  # inside the token, not yet given up on
        # The close of the store's session waits behind the held call, longer than TIMEOUT.
        await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        assert await _describe(svc, store_id) == ("DISCONNECTED", None)
    finally:
        faults.hold.set()
    with pytest.raises(answer):
        await held
    # Once the HSM answers, the close that the disconnect stopped waiting for runs.
    for _ in range(50):
        if open_sessions(hsm.module, cluster) == 0:
            break
        await asyncio.sleep(TIMEOUT / 10)
    assert open_sessions(hsm.module, cluster) == 0
    await asyncio.sleep(TIMEOUT / 10)  # the thread counts as free once the close has given its answer
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    assert await _describe(svc, store_id) == ("CONNECTED", None)  # was FAILED with USER_LOGGED_IN
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"served again"))["CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"served again"
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
