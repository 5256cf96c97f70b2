"""Many Encrypt and Decrypt calls at once on HSM keys, through the key service and from threads on
its PKCS#11 session, with derived keys evicted all the time (kms/hsm_derivation.py): every blob
opens, and no derived key outlives its place in the session's cache. SoftHSM2, in this process."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass

from keytrail.kms import hsm_derivation
from keytrail.kms.ciphertext import FORMAT_V3, TOKEN_SALT, blob_header, encode_context, read_header
from keytrail.kms.hsm import TokenSession
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import ACCOUNT, REGION, call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration

KEPT, BLOBS_PER_SALT = 3, 2  # so that nearly every call derives a key and evicts another
CALLS, THREADS, THREAD_CALLS = 200, 4, 25


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KmsService]:
    monkeypatch.setattr(hsm_derivation, "DERIVED_KEYS_PER_SESSION", KEPT)
    monkeypatch.setattr(hsm_derivation, "SUBKEY_BLOBS", BLOBS_PER_SALT)
    async with service(tmp_path) as running:
        yield running


def _derived_keys_in_token(hsm: SoftHsm, cluster: str) -> int:
    """Session objects of this process on the token: the derived keys not destroyed yet."""
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open()
    try:
        return len(list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False})))
    finally:
        session.close()


def _hammer(session: TokenSession, handle: bytes, key_id: str, failures: list[BaseException]) -> None:
    """Seal and open on the service's session straight from a thread of our own."""
    header = partial(blob_header, ACCOUNT, key_id, "cd" * 32)
    try:
        for number in range(THREAD_CALLS):
            plaintext, context = f"{threading.get_ident()}-{number}".encode(), encode_context({"n": str(number)})
            blob = session.seal(handle, header, plaintext, context)
            if session.open(handle, read_header(blob), context) != plaintext:
                raise AssertionError(f"{plaintext!r} came back different")
    except BaseException as exc:  # handed to the test, which runs in another thread
        failures.append(exc)


async def _round_trip(svc: KmsService, key_id: str, number: int) -> tuple[bytes, bytes]:
    plaintext, context = f"call {number}".encode(), {"call": str(number)}
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=plaintext, EncryptionContext=context))[
        "CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=context))["Plaintext"] == plaintext
    return bytes(blob), plaintext


async def _token_handle(svc: KmsService, key_id: str) -> bytes:
    key = await svc.store.get_key(ACCOUNT, REGION, key_id)
    assert key is not None and key.current_material is not None and key.current_material.handle is not None
    return bytes.fromhex(key.current_material.handle)


async def test_parallel_calls_with_evictions_open_every_blob(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    cluster = next(clusters)
    store_id, first = await hsm_key(svc, cluster, trust_anchor)
    second = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    live, handle = await live_session(svc, store_id), await _token_handle(svc, first)
    failures: list[BaseException] = []
    threads = [threading.Thread(target=_hammer, args=(live, handle, first, failures)) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    results = await asyncio.gather(*(_round_trip(svc, (first, second)[n % 2], n) for n in range(CALLS)))
    for thread in threads:
        await asyncio.to_thread(thread.join)
    assert failures == []
    assert {read_header(blob).format for blob, _ in results} == {FORMAT_V3}
    assert len({read_header(blob).seed[:TOKEN_SALT] for blob, _ in results}) >= CALLS // BLOBS_PER_SALT
    # Opened again once their derived keys are long evicted: derived again, the same keys.
    again = await asyncio.gather(*(
        call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext={"call": str(n)})
        for n, (blob, _) in enumerate(results)
    ))
    assert [answer["Plaintext"] for answer in again] == [plaintext for _, plaintext in results]
    assert await live_session(svc, store_id) is live  # no call failed the session
    assert _derived_keys_in_token(hsm, cluster) <= KEPT  # each evicted key was destroyed in the token


def test_two_sessions_racing_to_let_a_key_derive_both_write_format_3(hsm: SoftHsm, clusters: Iterator[str]) -> None:
    # Keys made before format 3 lack CKA_DERIVE; two sessions (two nodes of one store) using such a
    # key first at the same moment both read it false and both set it: each must write format 3 and
    # open the other's blobs, with no session going back to format 1.
    token = pkcs11.lib(hsm.module).get_token(token_label=next(clusters))
    first, second = token.open(rw=True, user_pin=PIN), token.open(rw=True)  # one login serves both
    try:
        handles = [f"legacy-{n}".encode() for n in range(40)]
        allowed, template = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT, {Attribute.EXTRACTABLE: False}
        for handle in handles:  # CKA_DERIVE false, as keys were made before format 3
            first.generate_key(KeyType.AES, 256, id=handle, store=False, capabilities=allowed, template=template)
        sessions = [TokenSession(first, derives=True), TokenSession(second, derives=True)]
        start = threading.Barrier(2, timeout=30)
        blobs: dict[int, list[bytes]] = {0: [], 1: []}
        failures: list[BaseException] = []

        def first_use(index: int) -> None:
            header = partial(blob_header, ACCOUNT, "1234abcd-12ab-34cd-56ef-1234567890ab", "ef" * 32)
            try:
                for handle in handles:
                    start.wait()
                    blobs[index].append(sessions[index].seal(handle, header, handle, b""))
            except BaseException as exc:  # handed to the test; the other thread's wait then breaks
                failures.append(exc)
                start.abort()

        threads = [threading.Thread(target=first_use, args=(index,)) for index in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert [repr(failure) for failure in failures] == []
        assert {blob[0] for blob in blobs[0] + blobs[1]} == {FORMAT_V3}
        for index, other in ((0, 1), (1, 0)):
            opened = [sessions[index].open(h, read_header(b), b"") for h, b in zip(handles, blobs[other], strict=True)]
            assert opened == handles
    finally:
        first.close()
        second.close()


async def test_parallel_calls_on_the_keys_of_two_stores_all_succeed(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Two stores are two tokens of one PKCS#11 module, and two sessions: calls on each run in worker
    # threads at the same time, into a module python-pkcs11 initialised with C_Initialize(NULL).
    keys = [(await hsm_key(svc, next(clusters), trust_anchor))[1] for _ in range(2)]
    results = await asyncio.gather(*(_round_trip(svc, keys[n % 2], n) for n in range(CALLS)), return_exceptions=True)
    assert [r for r in results if isinstance(r, BaseException)] == []
