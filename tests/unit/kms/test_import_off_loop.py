"""ImportKeyMaterial of an RSA key: checking an RSA private key's numbers (its primes) takes 0.1 s for
RSA_2048, up to a second for RSA_4096 and several for an RSA-8192 key a caller may send for any RSA
key spec. None of it may run on the event loop, which serves every other call of the node: the
wrapping key, the service's own and authenticated in its store, is read without that check, a key of
the wrong size is refused before it, and the material's own check runs in a worker thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from tests.integration.keystores.wrapping import wrap
from tests.support.allow_all import alice, allow_all_service

_load = serialization.load_der_private_key


def _rsa_pkcs8(bits: int) -> bytes:
    return rsa.generate_private_key(65537, bits).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())



async def _import(service: KmsService, material: bytes, spec: str) -> None:
    key_id = (await service.execute("CreateKey", alice(), {
        "Origin": "EXTERNAL", "KeySpec": spec, "KeyUsage": "SIGN_VERIFY"}))["KeyMetadata"]["KeyId"]
    parameters = await service.execute("GetParametersForImport", alice(), {
        "KeyId": key_id, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await service.execute("ImportKeyMaterial", alice(), {
        "KeyId": key_id, "ImportToken": parameters["ImportToken"], "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", material)})


@pytest.fixture
def checks_on_the_loop(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the RSA keys loaded with their numbers checked on the event loop's thread."""
    found: list[int] = []
    loop_thread = threading.current_thread()

    def load(data: bytes, password: Any, backend: Any = None, *, unsafe_skip_rsa_key_validation: bool = False) -> Any:
        private = _load(data, password, unsafe_skip_rsa_key_validation=unsafe_skip_rsa_key_validation)
        if not unsafe_skip_rsa_key_validation and threading.current_thread() is loop_thread:
            found.append(getattr(private, "key_size", 0))
        return private

    monkeypatch.setattr(serialization, "load_der_private_key", load)
    return found


async def test_an_rsa_import_checks_no_key_on_the_event_loop(tmp_path: Path, checks_on_the_loop: list[int]) -> None:
    _, service = allow_all_service(tmp_path)
    await _import(service, _rsa_pkcs8(2048), "RSA_2048")
    assert checks_on_the_loop == []


async def test_an_rsa_key_of_another_size_is_refused_without_its_check(
        tmp_path: Path, checks_on_the_loop: list[int]) -> None:
    _, service = allow_all_service(tmp_path)
    with pytest.raises(errors.IncorrectKeyMaterialException, match="does not match key spec RSA_2048"):
        await _import(service, _rsa_pkcs8(3072), "RSA_2048")
    assert checks_on_the_loop == []


async def test_an_rsa_key_with_wrong_numbers_is_still_refused(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    good = rsa.generate_private_key(65537, 2048).private_numbers()
    bad = rsa.RSAPrivateNumbers(good.p, good.q, good.d, good.dmp1 + 2, good.dmq1, good.iqmp, good.public_numbers)
    material = bad.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(errors.IncorrectKeyMaterialException, match="not a valid RSA private key"):
        await _import(service, material, "RSA_2048")
