"""Sealing under the root key: each sealed value opens only where it was written (its key and
version, its store, its import token), and an unchanged value is not sealed anew on each write."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from keytrail.kms.codec import key_from_doc, key_to_doc
from keytrail.kms.importing import ImportParameters
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.sealed_docs import (
    custom_key_store_from_doc,
    custom_key_store_to_doc,
    import_parameters_from_doc,
    import_parameters_to_doc,
)
from keytrail.kms.sealing import RootKey, SealError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _key(key_id: str, *secrets: bytes, account: str = "111122223333") -> Key:
    materials = tuple(KeyMaterial(f"{n:02x}" * 32, secret, NOW) for n, secret in enumerate(secrets))
    return Key(account, "us-east-1", key_id, NOW, materials=materials, policy="{}")


def _sealed(doc: str) -> list[str]:
    return [material["sealed"] for material in json.loads(doc)["materials"]]


def _store(account: str, password: str) -> CustomKeyStore:
    return CustomKeyStore(account=account, region="us-east-1", store_id="cks-1234567890abcdef0", name="hsm",
                          cluster_id="token-a", trust_anchor="-----BEGIN CERTIFICATE-----", creation_date=NOW,
                          state=ConnectionState.DISCONNECTED, password=password)


def test_material_sealed_for_one_key_does_not_open_in_another_keys_document() -> None:
    root = RootKey(os.urandom(32))
    a = json.loads(key_to_doc(_key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32)), root))
    b = json.loads(key_to_doc(_key("0987dcba-09fe-87dc-65ba-ab0987654321", os.urandom(32)), root))
    b["materials"][0]["sealed"] = a["materials"][0]["sealed"]
    with pytest.raises(SealError):
        key_from_doc(json.dumps(b), root)


def test_material_sealed_for_one_account_does_not_open_under_another() -> None:
    root = RootKey(os.urandom(32))
    doc = json.loads(key_to_doc(_key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32)), root))
    doc["account"] = "444455556666"  # the same key id, moved to another account's row
    with pytest.raises(SealError):
        key_from_doc(json.dumps(doc), root)


def test_one_version_of_a_key_does_not_open_as_another_version() -> None:
    root = RootKey(os.urandom(32))
    doc = json.loads(key_to_doc(_key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32), os.urandom(32)), root))
    first, second = doc["materials"]
    first["sealed"], second["sealed"] = second["sealed"], first["sealed"]
    with pytest.raises(SealError):
        key_from_doc(json.dumps(doc), root)


def test_a_key_store_password_does_not_open_under_another_account() -> None:
    root = RootKey(os.urandom(32))
    theirs = json.loads(custom_key_store_to_doc(_store("111122223333", "their-pin"), root))
    ours = json.loads(custom_key_store_to_doc(_store("444455556666", "our-pin"), root))
    ours["sealed_password"] = theirs["sealed_password"]
    with pytest.raises(SealError):
        custom_key_store_from_doc(json.dumps(ours), root)


def test_an_import_tokens_wrapping_key_does_not_open_under_another_token() -> None:
    root = RootKey(os.urandom(32))

    def parameters(token_id: str) -> ImportParameters:
        return ImportParameters(token_id, "111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab",
                                "RSAES_OAEP_SHA_256", "RSA_2048", os.urandom(64), NOW + timedelta(days=1))

    first = json.loads(import_parameters_to_doc(parameters("aa" * 16), root))
    second = json.loads(import_parameters_to_doc(parameters("bb" * 16), root))
    second["sealed"] = first["sealed"]
    with pytest.raises(SealError):
        import_parameters_from_doc(json.dumps(second), root)


def test_writing_a_key_again_keeps_the_sealed_values_of_unchanged_material() -> None:
    # Every write carries every version: sealing each anew spent a random nonce per version per
    # tag or policy change, towards AES-GCM's 2^32 random-nonce seals under one root key.
    root = RootKey(os.urandom(32))
    key = _key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32), os.urandom(32))
    first = key_to_doc(key, root)
    again = key_to_doc(replace(key, description="changed", policy='{"changed": true}'), root)
    assert _sealed(again) == _sealed(first)


def test_a_store_reopened_writes_the_sealed_values_it_read() -> None:
    doc = key_to_doc(_key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32)), RootKey(secret := os.urandom(32)))
    reopened = RootKey(secret)  # a new process: the values were sealed by another
    key = key_from_doc(doc, reopened)
    assert _sealed(key_to_doc(replace(key, description="changed"), reopened)) == _sealed(doc)


def test_new_or_changed_material_is_sealed_anew() -> None:
    root = RootKey(os.urandom(32))
    key = _key("1234abcd-12ab-34cd-56ef-1234567890ab", os.urandom(32))
    first = _sealed(key_to_doc(key, root))
    changed = replace(key, materials=(replace(key.materials[0], secret=os.urandom(32)),))
    resealed = _sealed(key_to_doc(changed, root))
    assert resealed != first
    assert key_from_doc(key_to_doc(changed, root), root).materials == changed.materials
    rotated = _sealed(key_to_doc(_key(key.key_id, changed.materials[0].secret, os.urandom(32)), root))
    assert rotated[0] == resealed[0] and rotated[1] not in resealed + first
