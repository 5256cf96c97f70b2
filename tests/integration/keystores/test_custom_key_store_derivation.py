"""HSM keys seal format 3 blobs under keys their token derives, inside the token, from its own key
and a salt (kms/hsm_derivation.py): SoftHSM2 with the key service in this process, and the token's
objects read through a second session of this process (it shares the service's login, and PKCS#11
session objects are visible to every session of the application that made them)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from keytrail.kms import errors, hsm_derivation
from keytrail.kms.ciphertext import (
    FORMAT_V1,
    FORMAT_V3,
    TOKEN_SALT,
    BlobHeader,
    blob_header,
    encode_context,
    open_blob,
    read_header,
)
from keytrail.kms.hsm import HsmCipher, TokenSession
from keytrail.kms.hsm_derivation import DerivedKeys
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import ACCOUNT, call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm
from tests.unit.kms.test_ciphertext import KNOWN_CONTEXT, KNOWN_V3_BLOB_HEX

pytestmark = pytest.mark.integration

CONTEXT = {"purpose": "format 3"}
KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


@contextmanager
def _token(hsm: SoftHsm, cluster: str, pin: str | None = None) -> Iterator[Any]:
    """A session of this process on the token: logged in already when the service is."""
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open(rw=True, user_pin=pin)
    try:
        yield session
    finally:
        session.close()


def _session_keys(session: Any) -> list[Any]:
    return list(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: False}))


def _gcm(nonce: bytes, aad: bytes) -> dict[str, Any]:
    return {"mechanism": Mechanism.AES_GCM, "mechanism_param": GCMParams(nonce, aad, 128)}


async def _encrypt(svc: KmsService, key_id: str, plaintext: bytes = b"sealed in the HSM") -> bytes:
    return bytes((await call(svc, "Encrypt", KeyId=key_id, Plaintext=plaintext, EncryptionContext=CONTEXT))[
        "CiphertextBlob"])


async def _decrypt(svc: KmsService, blob: bytes) -> bytes:
    return bytes((await call(svc, "Decrypt", CiphertextBlob=blob, EncryptionContext=CONTEXT))["Plaintext"])


async def _refused(svc: KmsService, blob: bytes) -> bool:
    try:
        await _decrypt(svc, blob)
    except errors.InvalidCiphertextException:
        return True
    return False


def _open_in_token(backing: Any, header: BlobHeader, salt: bytes) -> bytes | None:
    """Open a format 3 blob with a key derived here, in the token, as kms/hsm_derivation.py says."""
    derived = backing.derive_key(
        KeyType.AES, 256, capabilities=MechanismFlag.DECRYPT, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
        mechanism_param=b"\x01" + salt + bytes(4) + b"\x02" + salt + bytes(4),
        template={Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
    )
    try:
        nonce = header.seed[TOKEN_SALT:]
        return bytes(derived.decrypt(header.body, **_gcm(nonce, header.header + encode_context(CONTEXT))))
    except p11.PKCS11Error:
        return None
    finally:
        derived.destroy()


async def test_hsm_keys_write_format_3_and_open_it(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str
) -> None:
    _, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    first, second = await _encrypt(svc, key_id, b"first"), await _encrypt(svc, key_id, b"second")
    header = read_header(first)
    assert header.format == FORMAT_V3 and len(header.seed) == TOKEN_SALT + 12
    assert (await _decrypt(svc, first), await _decrypt(svc, second)) == (b"first", b"second")
    # One derived key seals many blobs: same salt, fresh nonce.
    assert read_header(second).seed[:TOKEN_SALT] == header.seed[:TOKEN_SALT]
    assert read_header(second).seed[TOKEN_SALT:] != header.seed[TOKEN_SALT:]
    data_key = await call(svc, "GenerateDataKey", KeyId=key_id, KeySpec="AES_256")
    assert data_key["CiphertextBlob"][0] == FORMAT_V3
    assert (await call(svc, "Decrypt", CiphertextBlob=data_key["CiphertextBlob"]))["Plaintext"] == data_key[
        "Plaintext"]
    with pytest.raises(errors.InvalidCiphertextException):
        await call(svc, "Decrypt", CiphertextBlob=first, EncryptionContext={"purpose": "other"})


async def test_format_1_blobs_of_hsm_keys_still_open(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    cluster = next(clusters)
    _, key_id = await hsm_key(svc, cluster, trust_anchor)
    material_id = read_header(await _encrypt(svc, key_id)).material_id
    # A blob as HSM keys wrote it before format 3: AES-GCM under the token's key itself.
    header = blob_header(ACCOUNT, key_id, material_id, FORMAT_V1)
    nonce = os.urandom(12)
    with _token(hsm, cluster) as session:
        backing = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        body = bytes(backing.encrypt(b"written years ago", **_gcm(nonce, header + encode_context(CONTEXT))))
    assert await _decrypt(svc, header + nonce + body) == b"written years ago"


async def test_tampered_format_3_blobs_are_invalid_ciphertext(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str
) -> None:
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    blob = await _encrypt(svc, key_id)
    live = await live_session(svc, store_id)
    end = len(read_header(blob).header)  # salt at end, nonce at end + 11

    def flipped(index: int, bit: int = 1) -> bytes:
        return blob[:index] + bytes([blob[index] ^ bit]) + blob[index + 1 :]

    tampered = {
        "salt": flipped(end), "last salt byte": flipped(end + TOKEN_SALT - 1), "nonce": flipped(end + TOKEN_SALT),
        "tag": flipped(len(blob) - 1), "material id": flipped(end - 1), "format 3 -> 1": flipped(0, 3 ^ 1),
        "format 3 -> 2": flipped(0, 3 ^ 2), "salt cut short": blob[: end + 5],
        "another blob's salt": blob[:end] + os.urandom(TOKEN_SALT) + blob[end + TOKEN_SALT :],
    }
    assert [name for name, bad in tampered.items() if not await _refused(svc, bad)] == []
    assert await live_session(svc, store_id) is live  # a bad blob is the caller's, not the session's
    assert await _decrypt(svc, blob) == b"sealed in the HSM"


async def test_derived_keys_are_sensitive_session_objects_of_the_token(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    cluster = next(clusters)
    _, key_id = await hsm_key(svc, cluster, trust_anchor)
    blob = await _encrypt(svc, key_id)
    header = read_header(blob)
    with _token(hsm, cluster) as session:
        [derived] = _session_keys(session)
        attributes = {
            attribute: derived[attribute]
            for attribute in (
                Attribute.TOKEN, Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE, Attribute.EXTRACTABLE,
                Attribute.NEVER_EXTRACTABLE, Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.SIGN, Attribute.VERIFY,
                Attribute.WRAP, Attribute.UNWRAP, Attribute.DERIVE, Attribute.VALUE_LEN, Attribute.KEY_TYPE,
            )
        }
        assert attributes == {
            Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.ALWAYS_SENSITIVE: True,
            Attribute.EXTRACTABLE: False, Attribute.NEVER_EXTRACTABLE: True, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.SIGN: False, Attribute.VERIFY: False, Attribute.WRAP: False,
            Attribute.UNWRAP: False, Attribute.DERIVE: False, Attribute.VALUE_LEN: 32, Attribute.KEY_TYPE: KeyType.AES,
        }
        with pytest.raises(p11.AttributeSensitive):  # C_GetAttributeValue(CKA_VALUE) is refused
            derived[Attribute.VALUE]
        for attribute, value in ((Attribute.EXTRACTABLE, True), (Attribute.SENSITIVE, False)):
            with pytest.raises(p11.AttributeReadOnly):
                derived[attribute] = value
        # It is the key the blob was sealed under, and it opens the blob only inside the token.
        nonce, aad = header.seed[TOKEN_SALT:], header.header + encode_context(CONTEXT)
        assert bytes(derived.decrypt(header.body, **_gcm(nonce, aad))) == b"sealed in the HSM"
    # Software never opens format 3: keytrail keeps no secret of an HSM key, and no secret opens it.
    for secret in (b"", bytes(32), os.urandom(32)):
        with pytest.raises(errors.InvalidCiphertextException):
            open_blob(secret, header, CONTEXT)


async def test_blobs_open_through_the_token_derivation_as_documented(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    # The derivation written down in kms/hsm_derivation.py, done here by hand in the token, opens the
    # blob: a blob of a store's key opens in that token, with that salt, and nowhere else.
    cluster = next(clusters)
    _, key_id = await hsm_key(svc, cluster, trust_anchor)
    header = read_header(await _encrypt(svc, key_id))
    with _token(hsm, cluster) as session:
        backing = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        assert _open_in_token(backing, header, header.seed[:TOKEN_SALT]) == b"sealed in the HSM"
        assert _open_in_token(backing, header, os.urandom(TOKEN_SALT)) is None


async def test_a_key_made_before_format_3_is_allowed_to_derive(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str
) -> None:
    cluster = next(clusters)
    _, key_id = await hsm_key(svc, cluster, trust_anchor)
    with _token(hsm, cluster) as session:  # as keys were made before: CKA_DERIVE false
        backing = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        backing[Attribute.DERIVE] = False
    blob = await _encrypt(svc, key_id)
    assert blob[0] == FORMAT_V3 and await _decrypt(svc, blob) == b"sealed in the HSM"
    with _token(hsm, cluster) as session:
        assert session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)[Attribute.DERIVE] is True


async def test_a_token_that_cannot_derive_writes_format_1(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str
) -> None:
    # As on AWS CloudHSM or YubiHSM 2, whose modules lack CKM_AES_ECB_ENCRYPT_DATA.
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    (await live_session(svc, store_id)).derives = False
    blob = await _encrypt(svc, key_id)
    assert blob[0] == FORMAT_V1 and await _decrypt(svc, blob) == b"sealed in the HSM"


async def test_a_derivation_the_token_fails_once_leaves_format_3_blobs_open(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A C_DeriveKey that fails once while sealing (CKR_DEVICE_MEMORY: the token's session objects
    # filled its memory) makes that blob format 1; the key's format 3 blobs must still open.
    store_id, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    written = await _encrypt(svc, key_id)
    await cast(HsmCipher, svc.ciphers["hsm"]).connections.drop(await live_session(svc, store_id))  # a new login
    derive, failures = hsm_derivation.derive, [p11.DeviceMemory()]

    def failing_once(base: Any, salt: bytes) -> Any:
        if failures:
            raise failures.pop()
        return derive(base, salt)

    monkeypatch.setattr(hsm_derivation, "derive", failing_once)
    fallback = await _encrypt(svc, key_id, b"sealed while the token was full")
    assert (failures, fallback[0]) == ([], FORMAT_V1)
    assert await _decrypt(svc, written) == b"sealed in the HSM"
    assert await _decrypt(svc, fallback) == b"sealed while the token was full"
    # Said once, naming the backing key object and the error, and nothing else the token gave.
    key = await svc.store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None and key.current_material is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"HSM key object {key.current_material.handle}: the token refused deriving its keys (DeviceMemory); this "
        "session seals its blobs in format 1, limited to 2^32 (docs/custom-key-stores.md)"]


def test_derived_keys_are_bounded_per_session_and_derived_again(hsm: SoftHsm, clusters: Iterator[str]) -> None:
    with _token(hsm, next(clusters), pin=PIN) as session:
        base = session.generate_key(
            KeyType.AES, 256, store=False, capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT |
            MechanismFlag.DERIVE, template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        keys = DerivedKeys(limit=2, blobs_per_key=2)
        first_salt, first = keys.sealing(base, b"key")
        assert keys.sealing(base, b"key")[0] == first_salt  # two blobs per salt here
        nonce = os.urandom(12)
        sealed = bytes(first.encrypt(b"kept", **_gcm(nonce, b"")))
        assert keys.sealing(base, b"key")[0] != first_salt  # then a fresh salt
        keys.key(base, b"key", os.urandom(TOKEN_SALT))
        assert len(keys) == 2 and len(_session_keys(session)) == 3  # the first derived key was destroyed (+ base)
        again = keys.key(base, b"key", first_salt)
        assert bytes(again.decrypt(sealed, **_gcm(nonce, b""))) == b"kept"


def test_a_format_3_blob_is_written_alike_by_every_release(
    hsm: SoftHsm, clusters: Iterator[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A token key of known value (made for this test: keytrail's own are generated in the token),
    # an all-zero salt and nonce: the blob tests/unit/kms/test_ciphertext.py recomputes with pyca.
    monkeypatch.setattr(os, "urandom", lambda size: bytes(size))
    with _token(hsm, next(clusters), pin=PIN) as raw:
        raw.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.ID: b"known",
            Attribute.VALUE: bytes(range(32)), Attribute.TOKEN: False, Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.DERIVE: True,
        })
        session = TokenSession(raw, derives=True)
        blob = session.seal(b"known", partial(blob_header, ACCOUNT, KEY_ID, "ab" * 32), b"known answer",
                            encode_context(KNOWN_CONTEXT))
        assert blob.hex() == KNOWN_V3_BLOB_HEX
        assert session.open(b"known", read_header(blob), encode_context(KNOWN_CONTEXT)) == b"known answer"


def test_a_key_its_token_will_not_let_derive_keeps_writing_format_1(
    hsm: SoftHsm, clusters: Iterator[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A token policy that forbids changing the key (CKA_MODIFIABLE false) refuses to set CKA_DERIVE
    # on a key made before format 3: it goes on with format 1, and format 3 under it is refused.
    with _token(hsm, next(clusters), pin=PIN) as raw:
        raw.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.ID: b"fixed",
            Attribute.VALUE: os.urandom(32), Attribute.TOKEN: False, Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True, Attribute.DERIVE: False, Attribute.MODIFIABLE: False,
        })
        session = TokenSession(raw, derives=True)
        blob = session.seal(b"fixed", partial(blob_header, ACCOUNT, KEY_ID, "ab" * 32), b"still sealed", b"")
        assert blob[0] == FORMAT_V1
        assert session.open(b"fixed", read_header(blob), b"") == b"still sealed"
        session.seal(b"fixed", partial(blob_header, ACCOUNT, KEY_ID, "ab" * 32), b"said once", b"")
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
            f"HSM key object {b'fixed'.hex()}: the token refused setting CKA_DERIVE (Unmapped error code 0x1b); "
            "this session seals its blobs in format 1, limited to 2^32 (docs/custom-key-stores.md)"]
        relabelled = bytes([FORMAT_V3]) + blob[1:] + bytes(TOKEN_SALT)  # long enough to parse as format 3
        with pytest.raises(errors.InvalidCiphertextException):
            session.open(b"fixed", read_header(relabelled), b"")
