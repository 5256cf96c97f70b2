"""Backing keys made by keytrail before format 3 were allowed python-pkcs11's default for AES keys:
encrypt, decrypt, sign, verify, wrap and unwrap, not derive. The first use of such a key in a session
clears what keytrail never does with it (kms/hsm_key_objects.py), where the token lets it, and the key
goes on serving. SoftHSM2, with the key service in this process (and a failure injected into its session,
flaky_token.py)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any, cast

import pkcs11
import pytest
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import exceptions as p11

from keytrail.kms.ciphertext import FORMAT_V3, blob_header, read_header
from keytrail.kms.hsm import HsmCipher, TokenSession
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.flaky_token import Faults
from tests.integration.keystores.in_process import ACCOUNT, call, hsm_key, live_session, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration

CAPABILITIES = (Attribute.ENCRYPT, Attribute.DECRYPT, Attribute.DERIVE, Attribute.SIGN, Attribute.VERIFY,
                Attribute.WRAP, Attribute.UNWRAP)
AS_MADE_BEFORE = {Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.DERIVE: False, Attribute.SIGN: True,
                  Attribute.VERIFY: True, Attribute.WRAP: True, Attribute.UNWRAP: True}


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm, faults: Faults) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


def _backing_key(hsm: SoftHsm, cluster: str, key_id: str, change: dict[Any, bool] | None = None) -> dict[Any, Any]:
    """The backing key's capabilities, read (after `change`, if any) through a session of this
    process, which shares the service's login."""
    session = pkcs11.lib(hsm.module).get_token(token_label=cluster).open(rw=True)
    try:
        key = session.get_key(object_class=ObjectClass.SECRET_KEY, label=key_id)
        for attribute, value in (change or {}).items():
            key[attribute] = value
        return dict(key.get_attributes(list(CAPABILITIES)))
    finally:
        session.close()


async def test_a_key_made_before_format_3_loses_what_keytrail_never_does_with_it(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    written = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"written before"))["CiphertextBlob"]
    assert _backing_key(hsm, cluster, key_id, change=AS_MADE_BEFORE) == AS_MADE_BEFORE
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    await connections.drop(await live_session(svc, store_id))  # as after a restart or an upgrade
    caplog.set_level(logging.INFO, logger="keytrail.kms.hsm")
    assert (await call(svc, "Decrypt", CiphertextBlob=written))["Plaintext"] == b"written before"
    assert _backing_key(hsm, cluster, key_id) == {
        Attribute.ENCRYPT: True, Attribute.DECRYPT: True, Attribute.DERIVE: True, Attribute.SIGN: False,
        Attribute.VERIFY: False, Attribute.WRAP: False, Attribute.UNWRAP: False,
    }
    blob = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"written after"))["CiphertextBlob"]
    assert read_header(blob).format == FORMAT_V3
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"written after"
    key = await svc.store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None and key.current_material is not None
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [  # once, in this session
        f"HSM key object {key.current_material.handle}, made before keytrail allowed its keys only what it does "
        "with them: cleared CKA_SIGN, CKA_VERIFY, CKA_WRAP, CKA_UNWRAP"]
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


def test_a_key_its_token_will_not_change_keeps_its_capabilities_and_serves(
    hsm: SoftHsm, clusters: Iterator[str], caplog: pytest.LogCaptureFixture
) -> None:
    # A token that keeps the key as it is (CKA_MODIFIABLE false here) refuses each change: the key
    # keeps what it was allowed, and seals and opens as before.
    caplog.set_level(logging.INFO, logger="keytrail.kms.hsm")
    raw = pkcs11.lib(hsm.module).get_token(token_label=next(clusters)).open(rw=True, user_pin=PIN)
    try:
        key = raw.create_object({
            Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.ID: b"fixed",
            Attribute.VALUE: os.urandom(32), Attribute.TOKEN: False, Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.MODIFIABLE: False,
            **AS_MADE_BEFORE,
        })
        session = TokenSession(raw, derives=False)
        header = partial(blob_header, ACCOUNT, "1234abcd-12ab-34cd-56ef-1234567890ab", "ab" * 32)
        blob = session.seal(b"fixed", header, b"still sealed", b"")
        assert session.open(b"fixed", read_header(blob), b"") == b"still sealed"
        assert dict(key.get_attributes(list(CAPABILITIES))) == AS_MADE_BEFORE
    finally:
        raw.close()
    refused = "(Unmapped error code 0x1b)"  # CKR_ACTION_PROHIBITED
    assert [r.getMessage() for r in caplog.records] == [
        f"HSM key object {b'fixed'.hex()}, made before keytrail allowed its keys only what it does with them: "
        f"cleared nothing; CKA_SIGN stays {refused}; CKA_VERIFY stays {refused}; CKA_WRAP stays {refused}; "
        f"CKA_UNWRAP stays {refused}"]


async def test_clearing_them_never_fails_the_call_and_the_next_session_tries_again(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, faults: Faults
) -> None:
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    written = (await call(svc, "Encrypt", KeyId=key_id, Plaintext=b"written before"))["CiphertextBlob"]
    _backing_key(hsm, cluster, key_id, change=AS_MADE_BEFORE)
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    await connections.drop(await live_session(svc, store_id))
    faults.fail("C_SetAttributeValue", p11.GeneralError())  # clearing CKA_SIGN fails
    assert (await call(svc, "Decrypt", CiphertextBlob=written))["Plaintext"] == b"written before"
    assert _backing_key(hsm, cluster, key_id)[Attribute.SIGN] is True
    await connections.drop(await live_session(svc, store_id))
    assert (await call(svc, "Decrypt", CiphertextBlob=written))["Plaintext"] == b"written before"
    assert [on for attribute, on in _backing_key(hsm, cluster, key_id).items()
            if attribute in (Attribute.SIGN, Attribute.VERIFY, Attribute.WRAP, Attribute.UNWRAP)] == [False] * 4
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
