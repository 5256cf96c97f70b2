"""Reading a PKCS#8 PrivateKeyInfo's algorithm, and telling it from PKCS#1, SEC1 and garbage."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from keytrail.kms import errors
from keytrail.kms.importing import IMPORTABLE_SPECS, check_material, check_wrapping
from keytrail.kms.keys import Key
from keytrail.kms.model import KeySpec, KeyUsage, Origin
from keytrail.kms.pkcs8 import EC_PUBLIC_KEY, multi_prime_rsa, pkcs8_algorithm

_PKCS8, _TRADITIONAL = serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL


def _der(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey,
         form: serialization.PrivateFormat) -> bytes:
    return private.private_bytes(serialization.Encoding.DER, form, serialization.NoEncryption())


def test_a_pkcs8_ec_key_names_id_ec_public_key_and_its_curve_by_oid() -> None:
    algorithm = pkcs8_algorithm(_der(ec.generate_private_key(ec.SECP384R1()), _PKCS8))
    assert algorithm is not None and (algorithm.oid, algorithm.parameters_tag) == (EC_PUBLIC_KEY, 0x06)


def test_pkcs8_rsa_and_ed25519_keys_are_read() -> None:
    rsa_key = pkcs8_algorithm(_der(rsa.generate_private_key(public_exponent=65537, key_size=2048), _PKCS8))
    assert rsa_key is not None and rsa_key.oid == bytes.fromhex("2a864886f70d010101")  # rsaEncryption
    ed = pkcs8_algorithm(_der(ed25519.Ed25519PrivateKey.generate(), _PKCS8))
    assert ed is not None and (ed.oid, ed.parameters_tag) == (bytes.fromhex("2b6570"), None)  # no parameters


def test_pkcs1_and_sec1_keys_are_not_pkcs8() -> None:
    assert pkcs8_algorithm(_der(rsa.generate_private_key(public_exponent=65537, key_size=2048), _TRADITIONAL)) is None
    assert pkcs8_algorithm(_der(ec.generate_private_key(ec.SECP256R1()), _TRADITIONAL)) is None


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x05\x02\x01\x00\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x00",
                                 bytes(64), b"\x30\x03\x02\x01\x00" + b"trailing"])
def test_truncated_or_malformed_input_is_not_pkcs8(der: bytes) -> None:
    assert pkcs8_algorithm(der) is None


@pytest.mark.parametrize("spec", [s for s in KeySpec if s not in IMPORTABLE_SPECS])
def test_get_parameters_for_import_refuses_a_key_spec_that_takes_no_imported_material(spec: KeySpec) -> None:
    # Keys of EXTERNAL origin made with these specs before CreateKey refused them.
    with pytest.raises(errors.UnsupportedOperationException):
        check_wrapping("RSA_AES_KEY_WRAP_SHA_256", "RSA_4096", spec)


def _openssl_rsa_der(primes: int) -> bytes:
    """A PKCS#8 DER RSA_2048 key of `primes` primes, as openssl writes it (`cryptography` makes two only)."""
    made = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                           "-pkeyopt", f"rsa_keygen_primes:{primes}"], capture_output=True, check=True, timeout=60)
    pkcs8 = subprocess.run(["openssl", "pkcs8", "-topk8", "-nocrypt", "-outform", "DER"],  # the AWS guide's step
                           input=made.stdout, capture_output=True, check=True, timeout=60)
    return pkcs8.stdout


def test_a_multi_prime_rsa_key_is_refused_for_its_primes_not_its_encoding() -> None:
    # A valid PKCS#8 key of three primes was refused as "not a PKCS#8 DER private key", sending the
    # user back to the encoding the AWS guide's openssl steps had already made right.
    three = _openssl_rsa_der(3)
    assert multi_prime_rsa(three) and not multi_prime_rsa(_openssl_rsa_der(2))
    key = Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", datetime.now(UTC),
              key_spec=KeySpec.RSA_2048, key_usage=KeyUsage.SIGN_VERIFY, origin=Origin.EXTERNAL)
    with pytest.raises(errors.IncorrectKeyMaterialException) as refused:
        check_material(key, three)
    assert refused.value.message == ("The RSA key material has more than two primes: multi-prime RSA keys are "
                                     "not supported.")
