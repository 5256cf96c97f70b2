"""Damaged or misdirected blobs of HSM keys fail as the caller's InvalidCiphertextException, never as
KMSInternalException, and their audit records say so: SoftHSM2, with the key service in this process."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import pkcs11
import pytest
from pkcs11 import ObjectClass

from keytrail.kms import errors
from keytrail.kms.ciphertext import FORMAT_V2, FORMAT_V3, TOKEN_SALT, blob_header, read_header
from keytrail.kms.hsm import HsmCipher
from keytrail.kms.service import KmsService
from tests.integration.keystores.in_process import ACCOUNT, call, hsm_key, live_session, recorded, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration

CONTEXT = {"purpose": "bad blobs"}


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _encrypt(svc: KmsService, key_id: str) -> bytes:
    answer = await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"kept in the HSM", EncryptionContext=CONTEXT)
    return bytes(answer["CiphertextBlob"])


async def _refusal(svc: KmsService, blob: bytes) -> tuple[str, str | None]:
    """How Decrypt of `blob` failed, as the caller saw it and as its audit record says."""
    try:
        await call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=CONTEXT)
    except errors.KmsError as error:
        record = recorded(svc)[-1]
        assert record.event_name == "Decrypt"
        return error.code, record.error_code
    return "decrypted", recorded(svc)[-1].error_code


def _invalid(refusals: dict[str, tuple[str, str | None]]) -> dict[str, tuple[str, str | None]]:
    """The refusals that were not InvalidCiphertextException both to the caller and in the trail."""
    expected = ("InvalidCiphertextException", "InvalidCiphertextException")
    return {name: refusal for name, refusal in refusals.items() if refusal != expected}


async def test_every_cut_of_a_format_3_blob_is_invalid_ciphertext(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    blob = await _encrypt(svc, key_id)
    live = await live_session(svc, store_id)
    caplog.set_level(logging.WARNING)
    # Through the header, the salt, the nonce and into the tag: every length short of the whole.
    refusals = {f"first {length} bytes": await _refusal(svc, blob[:length]) for length in range(1, len(blob))}
    assert _invalid(refusals) == {}
    assert [r.getMessage() for r in caplog.records] == []  # no traceback logged: the blob is the caller's
    assert await live_session(svc, store_id) is live
    assert (await call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=CONTEXT))["Plaintext"] == (
        b"kept in the HSM")


async def test_blobs_of_another_format_or_key_are_invalid_ciphertext(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    store_id, hsm_key_id = await hsm_key(svc, next(clusters), trust_anchor)
    sibling_id = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"][
        "KeyId"]
    _, stranger_id = await hsm_key(svc, next(clusters), trust_anchor)  # a key of another store and token
    held_id = (await call(svc, "CreateKey"))["KeyMetadata"]["KeyId"]  # a key keytrail holds itself
    hsm_blob, held_blob = read_header(await _encrypt(svc, hsm_key_id)), read_header(await _encrypt(svc, held_id))
    assert (hsm_blob.format, held_blob.format) == (FORMAT_V3, FORMAT_V2)
    caplog.set_level(logging.WARNING)

    def named(key_id: str, material_id: str, form: int, rest: bytes) -> bytes:
        return blob_header(ACCOUNT, key_id, material_id, form) + rest

    async def rewritten_for(key_id: str, form: int, rest: bytes) -> bytes:
        return named(key_id, read_header(await _encrypt(svc, key_id)).material_id, form, rest)

    hsm_rest, held_rest = hsm_blob.seed + hsm_blob.body, held_blob.seed + held_blob.body
    salt_end = len(hsm_blob.header) + TOKEN_SALT
    whole = hsm_blob.header + hsm_rest
    bad = {
        "format 3 given to a keytrail-held key": await rewritten_for(held_id, FORMAT_V3, hsm_rest),
        "format 2 given to an HSM key": await rewritten_for(hsm_key_id, FORMAT_V2, held_rest),
        "format 2 labelled 3 for an HSM key": await rewritten_for(hsm_key_id, FORMAT_V3, held_rest),
        "salt one byte short": whole[: salt_end - 1] + whole[salt_end:],
        "salt one byte long": whole[:salt_end] + b"\x00" + whole[salt_end:],
        "a blob of another key of the store": await rewritten_for(sibling_id, FORMAT_V3, hsm_rest),
        "a blob of a key of another store": await rewritten_for(stranger_id, FORMAT_V3, hsm_rest),
    }
    assert _invalid({name: await _refusal(svc, blob) for name, blob in bad.items()}) == {}
    assert [r.getMessage() for r in caplog.records] == []


async def test_a_key_whose_backing_key_left_the_hsm_is_unavailable_and_spares_the_session(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    # AWS: when the cluster no longer holds a key's material, its cryptographic calls fail with
    # KMSInvalidStateException (not InvalidCiphertextException: the blob is fine), and the store's
    # other keys go on; here they share the store's one session, which must not be dropped.
    cluster = next(clusters)
    store_id, gone_id = await hsm_key(svc, cluster, trust_anchor)
    kept_id = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    blob = await _encrypt(svc, gone_id)
    warm = await live_session(svc, store_id)  # holds the deleted key's handle and derived key
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open(rw=True)  # shares the service's login
    try:
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=gone_id).destroy()
    finally:
        session.close()
    # Nor does the derived key the session keeps open the key's blobs: the key left the HSM.
    assert await _refusal(svc, blob) == ("KMSInvalidStateException", "KMSInvalidStateException")
    # The session still holds the derived key it sealed with; a blob sealed under it now could never
    # be opened once the session ends (only the backing key derives it again): refused, not written.
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # the second finds no handle kept: the token's answer is no such key, again
        with pytest.raises(errors.KMSInvalidStateException):
            await _encrypt(svc, gone_id)
    assert not [r for r in caplog.records if "format 1" in r.getMessage()]  # no key "went back to format 1"
    # Its cached handle is now invalid (CKR_OBJECT_HANDLE_INVALID), which is not the session's failure.
    assert await live_session(svc, store_id) is warm
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    await connections.drop(await live_session(svc, store_id))  # as after a restart: nothing of it kept
    live = await live_session(svc, store_id)
    assert [await _refusal(svc, blob), await _encrypt_refusal(svc, gone_id)] == [
        ("KMSInvalidStateException", "KMSInvalidStateException")] * 2
    assert await live_session(svc, store_id) is live
    assert read_header(await _encrypt(svc, kept_id)).format == FORMAT_V3


async def test_a_backing_key_that_left_the_hsm_is_said_once_per_session_in_the_log(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The caller gets KMSInvalidStateException and the store stays CONNECTED: without the line, nothing
    # told the operator which key object the token no longer holds (deleted with the HSM's tools).
    cluster = next(clusters)
    _, gone_id = await hsm_key(svc, cluster, trust_anchor)
    blob = await _encrypt(svc, gone_id)
    backing_id = (recorded(svc)[-1].additional_event_data or {})["backingKeyId"]
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open(rw=True)  # shares the service's login
    try:
        session.get_key(object_class=ObjectClass.SECRET_KEY, label=gone_id).destroy()
    finally:
        session.close()
    caplog.set_level(logging.WARNING, logger="keytrail")
    for _ in range(3):
        assert await _refusal(svc, blob) == ("KMSInvalidStateException", "KMSInvalidStateException")
        with pytest.raises(errors.KMSInvalidStateException):
            await _encrypt(svc, gone_id)
    said = [r.getMessage() for r in caplog.records if "holds no such key" in r.getMessage()]
    assert len(said) == 1 and backing_id in said[0]


async def _encrypt_refusal(svc: KmsService, key_id: str) -> tuple[str, str | None]:
    try:
        await _encrypt(svc, key_id)
    except errors.KmsError as error:
        return error.code, recorded(svc)[-1].error_code
    return "encrypted", None
