"""Key store domain pieces: token labels, sealed store rows, material checks, ids."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.hsm import TOKENS_ENV, token_label
from keytrail.kms.hsm_derivation import derivation_data
from keytrail.kms.importing import (
    ImportParameters,
    check_material,
    check_wrapping,
    imported_material_id,
    token_bytes,
    token_id_of,
    token_valid_to,
    with_material_salt,
)
from keytrail.kms.keys import Key
from keytrail.kms.keystores import ConnectionState, CustomKeyStore, new_custom_key_store_id
from keytrail.kms.model import KeySpec, Origin
from keytrail.kms.sealing import RootKey
from keytrail.kms.shared_tokens import connected_after_another
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.ledger_calls import service_over

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = RootKey(os.urandom(32))


def _key(spec: KeySpec = KeySpec.SYMMETRIC_DEFAULT, key_id: str = "1234abcd-12ab-34cd-56ef-1234567890ab") -> Key:
    return Key("111122223333", "us-east-1", key_id, NOW, key_spec=spec, origin=Origin.EXTERNAL)


def test_cluster_ids_map_to_token_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    assert token_label("cluster-abcdefghijk") == "cluster-abcdefghijk"
    monkeypatch.setenv(TOKENS_ENV, "cluster-abcdefghijk=hsm1; cluster-zzzzzzzzzzz = YubiHSM")
    assert token_label("cluster-abcdefghijk") == "hsm1"
    assert token_label("cluster-zzzzzzzzzzz") == "YubiHSM"
    assert token_label("cluster-unmappedaaa") == "cluster-unmappedaaa"


async def test_store_rows_keep_their_secrets_sealed(tmp_path: Path) -> None:
    password, private = "kmsuser-secret-pin", os.urandom(600)
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    cks = CustomKeyStore("111122223333", "us-east-1", "cks-0123456789abcdef0", "name", "cluster-abcdefghijk",
                         "-----BEGIN CERTIFICATE-----", password, NOW, ConnectionState.CONNECTED)
    parameters = ImportParameters("ab" * 32, "111122223333", "us-east-1", "k", "RSAES_OAEP_SHA_256", "RSA_2048",
                                  private, NOW)
    await store.put_custom_key_store(cks)
    await store.put_import_parameters(parameters)
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert password.encode() not in raw and private not in raw
    reopened = SqliteStore(tmp_path / "keys.db", ROOT)
    assert await reopened.list_custom_key_stores("111122223333", "us-east-1") == [cks]
    assert await reopened.get_import_parameters("ab" * 32) == parameters
    elsewhere = replace(cks, account="444455556666", region="eu-west-1", store_id="cks-0123456789abcdef1")
    await reopened.put_custom_key_store(elsewhere)
    assert sorted(await reopened.all_custom_key_stores(), key=lambda s: s.account) == [cks, elsewhere]
    await reopened.delete_custom_key_store(cks)
    assert await reopened.list_custom_key_stores("111122223333", "us-east-1") == []
    assert await reopened.all_custom_key_stores() == [elsewhere]
    assert "kmsuser-secret-pin" not in repr(cks) and "kmsuser" not in repr(cks)


async def test_the_scheduler_tick_drops_the_wrapping_keys_of_expired_import_tokens(tmp_path: Path) -> None:
    # They stayed sealed in keys.db until a later GetParametersForImport, a day after at the soonest
    # and for good without one: each still unwrapped a copy of the EncryptedKeyMaterial sent with it.
    clock = ManualClock()
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    service = service_over(store, clock)
    context = CallContext(Principal.account_root("111122223333", "AKIAROOT000000000001"), "us-east-1", "req-1")
    key_id = (await service.execute("CreateKey", context, {"Origin": "EXTERNAL"}))["KeyMetadata"]["KeyId"]
    parameters = await service.execute("GetParametersForImport", context, {
        "KeyId": key_id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    token_id = token_id_of(parameters["ImportToken"])
    with sqlite3.connect(tmp_path / "keys.db") as db:
        (doc,) = db.execute("SELECT doc FROM import_parameters").fetchone()
    sealed = json.loads(doc)["sealed"].encode()
    clock.advance(24 * 3600 - 1)
    await service.run_due()
    assert await store.get_import_parameters(token_id) is not None  # the token is still good
    clock.advance(2)
    await service.run_due()
    assert await store.get_import_parameters(token_id) is None
    assert sealed not in b"".join(path.read_bytes() for path in tmp_path.iterdir())  # nor in freed space
    with pytest.raises(errors.ExpiredImportTokenException):  # as its own ValidTo says
        await service.execute("ImportKeyMaterial", context, {
            "KeyId": key_id, "ImportToken": parameters["ImportToken"], "EncryptedKeyMaterial": os.urandom(256),
            "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    await store.close()


def test_import_token_names_only_its_parameters() -> None:
    token_id = os.urandom(32).hex()
    assert token_id_of(token_bytes(token_id, NOW)) == token_id
    for bad in (b"", b"KTIT\x01" + b"x" * 5, b"other" + bytes(32)):
        with pytest.raises(errors.InvalidImportTokenException):
            token_id_of(bad)


def test_import_token_carries_its_valid_to_and_first_format_tokens_still_read() -> None:
    token_id, valid_to = os.urandom(32).hex(), NOW + timedelta(hours=24, microseconds=1500)
    assert token_valid_to(token_bytes(token_id, valid_to)) == NOW + timedelta(hours=24, milliseconds=1)
    first_format = b"KTIT\x01" + bytes.fromhex(token_id)  # made before tokens carried ValidTo
    assert (token_id_of(first_format), token_valid_to(first_format)) == (token_id, None)
    with pytest.raises(errors.InvalidImportTokenException):
        token_id_of(first_format + bytes(8))


def test_material_checks_follow_the_key_spec() -> None:
    assert check_material(_key(), b"k" * 32) == b"k" * 32
    with pytest.raises(errors.IncorrectKeyMaterialException):
        check_material(_key(), b"k" * 31)
    assert check_material(_key(KeySpec.HMAC_384), b"h" * 48)
    with pytest.raises(errors.IncorrectKeyMaterialException):
        check_material(_key(KeySpec.HMAC_384), b"h" * 47)
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert check_material(_key(KeySpec.ECC_NIST_P256), p256) == p256
    with pytest.raises(errors.IncorrectKeyMaterialException):
        check_material(_key(KeySpec.RSA_2048), p256)


def test_wrapping_choices() -> None:
    check_wrapping("RSAES_OAEP_SHA_1", "RSA_2048", KeySpec.SYMMETRIC_DEFAULT)
    with pytest.raises(errors.ValidationException):
        check_wrapping("RSAES_OAEP_SHA_256", "RSA_4096", KeySpec.RSA_2048)
    for algorithm, spec in (("RSAES_PKCS1_V1_5", "RSA_2048"), ("SM2PKE", "SM2"), ("RSAES_OAEP_SHA_1", "SM2")):
        with pytest.raises(errors.UnsupportedOperationException):
            check_wrapping(algorithm, spec, KeySpec.SYMMETRIC_DEFAULT)


def test_imported_material_id_depends_on_key_salt_and_material() -> None:
    material = os.urandom(32)
    key = with_material_salt(_key())
    first = imported_material_id(key, material)
    assert re.fullmatch(r"[0-9a-f]{64}", first) and first == imported_material_id(key, material)
    assert first != imported_material_id(key, os.urandom(32))
    assert first != imported_material_id(with_material_salt(_key()), material)
    assert with_material_salt(key) is key


def test_imported_material_id_is_not_a_plain_digest_of_the_material() -> None:
    material = os.urandom(32)
    material_id = imported_material_id(with_material_salt(_key()), material)
    assert material_id != hashlib.sha256(material).hexdigest()


def test_custom_key_store_ids_look_like_aws_ones() -> None:
    assert re.fullmatch(r"cks-[0-9a-f]{17}", new_custom_key_store_id(os.urandom(9)))


def test_format_3_derivation_blocks_are_never_blocks_the_token_key_encrypts_for_gcm() -> None:
    # The token key also opens format 1 blobs: AES-GCM with 96-bit nonces encrypts nonce ‖ ctr with
    # ctr >= 1, and 0^128 for its hash key. A derivation block ends in a zero counter and is not zero.
    salt = bytes(range(1, 12))
    data = derivation_data(salt)
    assert data == b"\x01" + salt + bytes(4) + b"\x02" + salt + bytes(4)
    for block in (data[:16], data[16:], derivation_data(bytes(11))[16:]):
        assert block[12:] == bytes(4) and block != bytes(16)
    for wrong in (bytes(10), bytes(12), b""):
        with pytest.raises(ValueError):
            derivation_data(wrong)


def _cks(store_id: str, cluster: str, days: int, state: ConnectionState = ConnectionState.CONNECTED) -> CustomKeyStore:
    return CustomKeyStore("111122223333", "us-east-1", store_id, store_id, cluster, "-----BEGIN CERTIFICATE-----",
                          "pin", NOW + timedelta(days=days), state)


def test_of_stores_connected_on_one_token_each_but_the_first_created_is_paired_with_it() -> None:
    first, tie, late = _cks("cks-b", "cluster-aaaaaaaaaaa", 0), _cks("cks-c", "cluster-aaaaaaaaaaa", 0), _cks(
        "cks-a", "cluster-aaaaaaaaaaa", 1)
    alone = _cks("cks-d", "cluster-bbbbbbbbbbb", 0)
    failed = _cks("cks-e", "cluster-aaaaaaaaaaa", -1, ConnectionState.FAILED)
    # Whatever order they are read in, every node pairs them alike: CreationDate, then id.
    assert connected_after_another([late, alone, failed, tie, first]) == [(first, tie), (first, late)]
    assert connected_after_another([first, alone, failed]) == []
