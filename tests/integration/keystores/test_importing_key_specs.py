"""Which key specs take imported material, and in which form, through boto3 against a live
`keytrail serve`. Source: AWS KMS developer guide, "Requirements for imported key material"
(docs/imported-key-material.md quotes it)."""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import subprocess
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding

from tests.integration.keystores.wrapping import import_material

pytestmark = pytest.mark.integration

_USAGE = {"ML_DSA": "SIGN_VERIFY", "ML_KEM": "ENCAPSULATE_DECAPSULATE", "ECC_NIST_EDWARDS25519": "SIGN_VERIFY"}
_CURVES = {"ECC_NIST_P256": ec.SECP256R1, "ECC_NIST_P384": ec.SECP384R1, "ECC_NIST_P521": ec.SECP521R1,
           "ECC_SECG_P256K1": ec.SECP256K1}
_ECDSA_HASH = {"ECC_NIST_P256": hashes.SHA256, "ECC_NIST_P384": hashes.SHA384, "ECC_NIST_P521": hashes.SHA512,
               "ECC_SECG_P256K1": hashes.SHA256}


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error.get("Message", "")


def _der(private: Any, form: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    return private.private_bytes(serialization.Encoding.DER, form, serialization.NoEncryption())  # type: ignore[no-any-return]


def _external(kms: Any, spec: str, usage: str) -> str:
    return str(kms.create_key(Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"])


def _key_ids(kms: Any) -> set[str]:
    return {key["KeyId"] for page in kms.get_paginator("list_keys").paginate() for key in page["Keys"]}


@pytest.mark.parametrize("spec", ["ML_DSA_44", "ML_DSA_65", "ML_DSA_87", "ML_KEM_512", "ML_KEM_768",
                                  "ML_KEM_1024", "ECC_NIST_EDWARDS25519"])
def test_external_origin_is_refused_for_key_specs_that_take_no_imported_material(kms: Any, spec: str) -> None:
    # "Importing ML-DSA keys is not supported"; Ed25519 and ML-KEM are not among the key specs
    # AWS imports material into. Such a key used to be made, then stayed PendingImport for ever.
    usage = next(value for prefix, value in _USAGE.items() if spec.startswith(prefix))
    before = _key_ids(kms)
    with pytest.raises(ClientError) as excinfo:
        kms.create_key(Origin="EXTERNAL", KeySpec=spec, KeyUsage=usage)
    assert _error(excinfo) == (
        "UnsupportedOperationException", f"KeySpec {spec} does not support imported key material (Origin EXTERNAL).")
    assert _key_ids(kms) == before
    if spec != "ML_KEM_512":  # refused in every origin (docs/asymmetric-keys.md)
        assert kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["Origin"] == "AWS_KMS"


@pytest.mark.parametrize("spec", list(_CURVES))
def test_every_curve_aws_imports_takes_its_pkcs8_key_and_signs_with_it(kms: Any, spec: str) -> None:
    key_id = _external(kms, spec, "SIGN_VERIFY")
    private = ec.generate_private_key(_CURVES[spec]())
    import_material(kms, key_id, _der(private), "RSA_AES_KEY_WRAP_SHA_256", "RSA_3072")
    algorithm = f"ECDSA_SHA_{_ECDSA_HASH[spec]().digest_size * 8}"
    signature = kms.sign(KeyId=key_id, Message=b"signed", SigningAlgorithm=algorithm)["Signature"]
    private.public_key().verify(signature, b"signed", ec.ECDSA(_ECDSA_HASH[spec]()))


@pytest.mark.parametrize("bits", [3072, 4096])
def test_larger_rsa_keys_import_and_decrypt(kms: Any, bits: int) -> None:
    key_id = _external(kms, f"RSA_{bits}", "ENCRYPT_DECRYPT")
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    import_material(kms, key_id, _der(private), "RSA_AES_KEY_WRAP_SHA_1", "RSA_4096")
    oaep = asym_padding.OAEP(mgf=asym_padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    blob = private.public_key().encrypt(b"offline", oaep)
    assert kms.decrypt(KeyId=key_id, CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256")[
        "Plaintext"] == b"offline"


@pytest.mark.parametrize(("spec", "shortest"), [("HMAC_224", 28), ("HMAC_256", 32), ("HMAC_384", 48),
                                                 ("HMAC_512", 64)])
def test_hmac_material_is_the_digest_size_up_to_1024_bits(kms: Any, spec: str, shortest: int) -> None:
    # "HMAC_224: 224-1024 bits ... HMAC_512: 512-1024 bits": 128 bytes at most for every spec
    # (keytrail took at most 64 for HMAC_224 and HMAC_256).
    for length in (shortest - 1, 129):
        with pytest.raises(ClientError) as excinfo:
            import_material(kms, _external(kms, spec, "GENERATE_VERIFY_MAC"), os.urandom(length))
        assert _error(excinfo) == (
            "IncorrectKeyMaterialException", f"Key material for {spec} must be between {shortest} and 128 bytes.")
    key_id = _external(kms, spec, "GENERATE_VERIFY_MAC")
    material = os.urandom(128)
    import_material(kms, key_id, material)
    digest = f"sha{spec.split('_')[1]}"
    mac = kms.generate_mac(KeyId=key_id, MacAlgorithm=f"HMAC_SHA_{spec.split('_')[1]}", Message=b"m")["Mac"]
    assert mac == hmac.new(material, b"m", getattr(hashlib, digest)).digest()


@pytest.mark.parametrize(("spec", "usage", "private"), [
    ("RSA_2048", "SIGN_VERIFY", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)),
    ("ECC_NIST_P256", "SIGN_VERIFY", lambda: ec.generate_private_key(ec.SECP256R1())),
])
def test_a_pkcs1_or_sec1_private_key_is_not_pkcs8_and_is_refused(kms: Any, spec: str, usage: str, private: Any) -> None:
    # "Asymmetric key material must be ... in ... PKCS #8 format": the traditional forms
    # (PKCS#1 RSAPrivateKey, SEC1 ECPrivateKey) were taken before.
    key_id = _external(kms, spec, usage)
    pair = private()
    with pytest.raises(ClientError) as excinfo:
        import_material(kms, key_id, _der(pair, serialization.PrivateFormat.TraditionalOpenSSL),
                        "RSA_AES_KEY_WRAP_SHA_256")
    assert _error(excinfo) == ("IncorrectKeyMaterialException", "The key material is not a PKCS#8 DER private key.")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    import_material(kms, key_id, _der(pair), "RSA_AES_KEY_WRAP_SHA_256")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_an_ecc_key_with_explicit_curve_parameters_is_refused(kms: Any) -> None:
    # "Parameters: Named curves only (ECC keys with explicit parameters are rejected)";
    # `cryptography` cannot write such a key, the developer guide's tool (openssl) can.
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to write an EC key with explicit parameters")
    pem = subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-param_enc", "explicit", "-genkey",
                          "-noout"], check=True, capture_output=True).stdout
    explicit = subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-outform", "DER"], input=pem,
                              check=True, capture_output=True).stdout
    key_id = _external(kms, "ECC_NIST_P256", "SIGN_VERIFY")
    with pytest.raises(ClientError) as excinfo:
        import_material(kms, key_id, explicit, "RSA_AES_KEY_WRAP_SHA_256")
    assert _error(excinfo) == (
        "IncorrectKeyMaterialException",
        "The ECC key material must name its curve: keys with explicit curve parameters are not supported.")
    named = _der(serialization.load_der_private_key(explicit, None))  # the same key, curve named
    import_material(kms, key_id, named, "RSA_AES_KEY_WRAP_SHA_256")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
