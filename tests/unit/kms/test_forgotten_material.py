"""Deleted key material leaves the process's caches with the deletion: DeleteImportedKeyMaterial,
imported material whose ValidTo passed, and DeleteKey after the waiting period. Before, the parsed
private key (`asymmetric.PRIVATE_KEYS`) and the AES-GCM objects and derived keys of
`kms/ciphertext.py` stayed until 1,024 or 4,096 newer entries pushed them out."""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keytrail.clock import ManualClock
from keytrail.kms import asymmetric
from keytrail.kms.importing import without_material
from keytrail.kms.keys import Key
from keytrail.kms.material import secret_cached
from keytrail.kms.sealing import RootKey
from keytrail.kms.secret_cache import SecretCache, reading
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.wrapping import wrap
from tests.support.allow_all import ACCOUNT, AllowAll, alice, allow_all_service


async def _import(service: KmsService, key_id: str, material: bytes, **expiry: Any) -> None:
    parameters = await service.execute("GetParametersForImport", alice(), {
        "KeyId": key_id, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await service.execute("ImportKeyMaterial", alice(), {
        "KeyId": key_id, "ImportToken": parameters["ImportToken"],
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", material),
        **(expiry or {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})})


async def _secret(store: SqliteStore, key_id: str) -> bytes:
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None and key.current_material is not None
    return key.current_material.secret


async def _create(service: KmsService, **params: Any) -> str:
    return str((await service.execute("CreateKey", alice(), params))["KeyMetadata"]["KeyId"])


async def _use(service: KmsService, key_id: str, spec: str) -> None:
    """A call of each kind that caches something made from the key's secret."""
    if spec == "SYMMETRIC_DEFAULT":
        blob = (await service.execute("Encrypt", alice(), {"KeyId": key_id, "Plaintext": b"x"}))["CiphertextBlob"]
        await service.execute("Decrypt", alice(), {"CiphertextBlob": blob})
    else:
        await service.execute("Sign", alice(), {"KeyId": key_id, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"})


def _ecc_pkcs8() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


async def test_delete_imported_key_material_drops_what_was_made_from_it(tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    symmetric = await _create(service, Origin="EXTERNAL")
    signing = await _create(service, Origin="EXTERNAL", KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    await _import(service, symmetric, os.urandom(32))
    await _import(service, signing, _ecc_pkcs8())
    for key_id, spec in ((symmetric, "SYMMETRIC_DEFAULT"), (signing, "ECC_NIST_P256")):
        secret = await _secret(store, key_id)
        await _use(service, key_id, spec)
        assert secret_cached(secret)
        await service.execute("DeleteImportedKeyMaterial", alice(), {"KeyId": key_id})
        assert not secret_cached(secret)


async def test_expired_material_is_dropped_when_the_tick_deletes_it(tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    key_id = await _create(service, Origin="EXTERNAL")
    await _import(service, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES",
                  ValidTo=service.clock.now() + timedelta(days=1))
    secret = await _secret(store, key_id)
    await _use(service, key_id, "SYMMETRIC_DEFAULT")
    assert secret_cached(secret)
    service.clock.advance(2 * 86400)  # type: ignore[attr-defined]
    await service.run_due()
    assert not secret_cached(secret)


async def test_deleting_a_key_drops_its_material_and_only_its(tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    gone = {spec: await _create(service, KeySpec=spec, KeyUsage=usage)
            for spec, usage in (("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), ("ECC_NIST_P256", "SIGN_VERIFY"))}
    kept = await _create(service)
    for spec, key_id in gone.items():
        await _use(service, key_id, spec)
        await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": key_id, "PendingWindowInDays": 7})
    await _use(service, kept, "SYMMETRIC_DEFAULT")
    secrets = [await _secret(store, key_id) for key_id in gone.values()]
    assert all(secret_cached(secret) for secret in secrets)
    service.clock.advance(8 * 86400)  # type: ignore[attr-defined]
    await service.run_due()
    assert await store.get_key(ACCOUNT, "us-east-1", gone["SYMMETRIC_DEFAULT"]) is None
    assert not any(secret_cached(secret) for secret in secrets)
    assert secret_cached(await _secret(store, kept))  # a live key's entries stay


def test_a_secret_cache_forgets_only_the_secrets_named_and_stays_bounded() -> None:
    made: list[bytes] = []
    cache: SecretCache[bytes, bytes] = SecretCache(lambda secret: made.append(secret) or secret[::-1], size=3)
    one, two, three, four = (bytes([n]) * 32 for n in range(1, 5))
    assert cache[one] == one[::-1] and cache[one] == one[::-1] and made == [one]  # made once, then kept
    cache[two], cache[three]
    cache.forget({two})
    assert (cache.holds(one), cache.holds(two), cache.holds(three)) == (True, False, True)
    cache[four], cache[two]  # full: the entry made first goes first
    assert not cache.holds(one) and len(cache) == 3
    assert one.hex() not in repr(cache) and repr(one) not in repr(cache)


def test_a_pair_keyed_cache_forgets_every_pair_of_the_secret() -> None:
    cache: SecretCache[tuple[bytes, bytes], bytes] = SecretCache(lambda pair: pair[0] + pair[1], size=8)
    secret, other = os.urandom(32), os.urandom(32)
    cache[secret, b"a"], cache[secret, b"b"], cache[other, b"a"]
    cache.forget([secret])
    assert not cache.holds(secret) and cache.holds(other) and len(cache) == 1


def test_data_key_pair_private_keys_still_bypass_the_cache() -> None:
    secret = _ecc_pkcs8()
    asymmetric.public_key_der(secret, kept=False)
    assert not asymmetric.PRIVATE_KEYS.holds(secret)


def test_an_entry_made_while_its_secret_was_forgotten_is_not_kept() -> None:
    # A Decrypt or Sign in a worker thread makes the entry of material that DeleteImportedKeyMaterial
    # deletes meanwhile (its forget runs between the make and the insertion): the call gets its value,
    # and the deleted material is not left cached after its deletion.
    secret = os.urandom(32)

    def make(key: bytes) -> bytes:
        cache.forget([secret])  # the deletion, while the entry is being made
        return key[::-1]

    cache: SecretCache[bytes, bytes] = SecretCache(make, size=8)
    assert cache[secret] == secret[::-1]
    assert not cache.holds(secret)


def test_an_entry_made_after_a_forget_from_material_read_before_it_is_not_kept() -> None:
    # The call read its key (its `reading` began), the material was deleted and forgotten, then the
    # call makes its entry: it gets its value, and the deleted material is not cached after it.
    cache: SecretCache[bytes, bytes] = SecretCache(lambda secret: secret[::-1], size=8)
    secret = os.urandom(32)
    with reading():
        cache.forget([os.urandom(32)])  # a deletion (of any material) while the call runs
        assert cache[secret] == secret[::-1]
        assert not cache.holds(secret)
    with reading():  # a call that starts after the deletion read its key after it: kept
        cache[secret]
        assert cache.holds(secret)


def test_a_nested_reading_keeps_the_outer_calls_start() -> None:
    cache: SecretCache[bytes, bytes] = SecretCache(lambda secret: secret[::-1], size=8)
    secret = os.urandom(32)
    with reading():
        cache.forget([os.urandom(32)])
        with reading():  # a call the tick makes, handed material the tick read before the forget
            cache[secret]
    assert not cache.holds(secret)


class _PausingStore(SqliteStore):
    """Holds the next key read (`pause_next`) after reading it, until `resume` is set: the call that
    read the key waits there (for an HSM, a lock) while another call runs."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, RootKey(os.urandom(32)))
        self.paused, self.resume = asyncio.Event(), asyncio.Event()
        self.pause_next = False

    async def get_key(self, account: str, region: str, key_id: str) -> Key | None:
        key = await super().get_key(account, region, key_id)
        if self.pause_next:
            self.pause_next = False
            self.paused.set()
            await self.resume.wait()
        return key


@pytest.mark.parametrize(("spec", "call"), [
    ("SYMMETRIC_DEFAULT", ("Encrypt", {"Plaintext": b"x"})),
    ("ECC_NIST_P256", ("Sign", {"Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"})),
])
async def test_a_call_that_read_the_material_before_its_deletion_leaves_nothing_cached(
        tmp_path: Path, spec: str, call: tuple[str, dict[str, Any]]) -> None:
    # The interleaving, step by step: the call reads the key and waits; DeleteImportedKeyMaterial
    # deletes the material (and forgets it); the call goes on and makes its entries from the
    # material it read. It answers (it read the key before the deletion), and caches nothing of it.
    store = _PausingStore(tmp_path / "keys.db")
    allow = AllowAll()
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=allow, authorizer=allow))
    usage = "ENCRYPT_DECRYPT" if spec == "SYMMETRIC_DEFAULT" else "SIGN_VERIFY"
    key_id = await _create(service, Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)
    await _import(service, key_id, os.urandom(32) if spec == "SYMMETRIC_DEFAULT" else _ecc_pkcs8())
    secret = await _secret(store, key_id)
    name, params = call
    store.pause_next = True
    reader = asyncio.create_task(service.execute(name, alice(), {"KeyId": key_id, **params}))
    await store.paused.wait()
    await service.execute("DeleteImportedKeyMaterial", alice(), {"KeyId": key_id})
    store.resume.set()
    assert await reader
    assert not secret_cached(secret)


@pytest.mark.parametrize(("spec", "usage", "material"), [
    ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", lambda: os.urandom(32)),
    ("ECC_NIST_P256", "SIGN_VERIFY", _ecc_pkcs8),
])
async def test_material_another_node_deleted_is_dropped_at_this_nodes_next_tick(
        tmp_path: Path, spec: str, usage: str, material: Any) -> None:
    # Nodes sharing a PostgreSQL store: another one deletes the material (its write, here made on the
    # store directly) and forgets only its own entries; this one is not told. Its next tick, which
    # reads every key, drops what it made from a secret no key holds any more.
    store, service = allow_all_service(tmp_path)
    key_id = await _create(service, Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)
    kept = await _create(service)
    await _import(service, key_id, material())
    secret, kept_secret = await _secret(store, key_id), await _secret(store, kept)
    await _use(service, key_id, spec)
    await _use(service, kept, "SYMMETRIC_DEFAULT")
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None
    await store.put_key(without_material(key))
    await service.run_due()
    assert not secret_cached(secret)
    assert secret_cached(kept_secret)
