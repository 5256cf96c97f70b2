"""Signatures made by kms/asymmetric.py verify with `cryptography` alone, and AWS's rules hold."""

from __future__ import annotations

import hashlib

import pytest
from Crypto.Hash import SHA512
from Crypto.Signature import eddsa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from keytrail.kms import asymmetric, errors
from keytrail.kms.model import KeySpec

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}


@pytest.fixture(scope="module")
def secrets() -> dict[KeySpec, bytes]:
    specs = [KeySpec.RSA_2048, *asymmetric.CURVES, KeySpec.ECC_NIST_EDWARDS25519, KeySpec.ML_DSA_44]
    return {spec: asymmetric.generate_pkcs8(spec) for spec in specs}


def _public(secret: bytes):
    return serialization.load_der_public_key(asymmetric.public_key_der(secret))


@pytest.mark.parametrize("algorithm", [a for a in asymmetric.SIGNING if a.startswith("RSASSA")])
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_rsa_signature_verifies_with_cryptography(secrets, algorithm, message_type) -> None:
    secret, algorithm_hash = secrets[KeySpec.RSA_2048], _HASHES[algorithm[-3:]]
    message = b"attack at dawn"
    signed = message if message_type == "RAW" else hashlib.new(algorithm_hash.name, message).digest()
    signature = asymmetric.sign(secret, algorithm, signed, message_type)
    if "PSS" in algorithm:
        scheme = padding.PSS(padding.MGF1(algorithm_hash()), salt_length=algorithm_hash().digest_size)
    else:
        scheme = padding.PKCS1v15()
    _public(secret).verify(signature, message, scheme, algorithm_hash())


def test_pss_salt_is_the_digest_length(secrets) -> None:
    secret = secrets[KeySpec.RSA_2048]
    signature = asymmetric.sign(secret, "RSASSA_PSS_SHA_256", b"m", "RAW")
    wrong_salt = padding.PSS(padding.MGF1(hashes.SHA256()), salt_length=64)
    with pytest.raises(InvalidSignature):
        _public(secret).verify(signature, b"m", wrong_salt, hashes.SHA256())


@pytest.mark.parametrize("spec", list(asymmetric.CURVES))
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_ecdsa_der_signature_verifies_with_cryptography(secrets, spec, message_type) -> None:
    algorithm = {KeySpec.ECC_NIST_P384: "ECDSA_SHA_384", KeySpec.ECC_NIST_P521: "ECDSA_SHA_512"}.get(
        spec, "ECDSA_SHA_256"
    )
    algorithm_hash = _HASHES[algorithm[-3:]]()
    digest = hashlib.new(algorithm_hash.name, b"hello").digest()
    signature = asymmetric.sign(
        secrets[spec], algorithm, b"hello" if message_type == "RAW" else digest, message_type
    )
    _public(secrets[spec]).verify(signature, digest, ec.ECDSA(Prehashed(algorithm_hash)))


def test_ed25519_and_ed25519ph(secrets) -> None:
    secret = secrets[KeySpec.ECC_NIST_EDWARDS25519]
    _public(secret).verify(asymmetric.sign(secret, "ED25519_SHA_512", b"msg", "RAW"), b"msg")
    digest = hashlib.sha512(b"msg").digest()
    signature = asymmetric.sign(secret, "ED25519_PH_SHA_512", digest, "DIGEST")
    raw_public = _public(secret).public_bytes_raw()
    # Ed25519ph over the caller's digest: KMS hashes it once more (FIPS 186-5 §7.8.1 step 1).
    eddsa.new(eddsa.import_public_key(raw_public), "rfc8032").verify(SHA512.new(digest), signature)


def test_ed25519ph_matches_rfc8032_vector() -> None:
    seed = bytes.fromhex("833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42")
    private = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pkcs8 = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # RFC 8032 §7.3 signs "abc" with Ed25519ph: the Message KMS gets is what PH hashes.
    signature = asymmetric.sign(pkcs8, "ED25519_PH_SHA_512", b"abc", "DIGEST")
    assert signature.hex() == (
        "98a70222f0b8121aa9d30f813d683f809e462b469c7ff87639499bb94e6dae41"
        "31f85042463c2a355a2003d062adf5aaa10b8c61e636062aaad11c2a26083406"
    )


def test_bad_signature_is_invalid_signature_with_empty_message(secrets) -> None:
    secret = secrets[KeySpec.ECC_NIST_P256]
    signature = asymmetric.sign(secret, "ECDSA_SHA_256", b"one", "RAW")
    with pytest.raises(errors.KMSInvalidSignatureException) as caught:
        asymmetric.verify(secret, "ECDSA_SHA_256", b"two", "RAW", signature)
    assert caught.value.message == ""
    with pytest.raises(errors.KMSInvalidSignatureException):
        asymmetric.verify(secret, "ECDSA_SHA_256", b"one", "RAW", b"\x00garbage")


@pytest.mark.parametrize(
    ("spec", "algorithm", "message_type", "length", "error", "text"),
    [
        (
            KeySpec.ECC_NIST_P256,
            "ECDSA_SHA_384",
            "RAW",
            3,
            errors.InvalidKeyUsageException,
            "Algorithm ECDSA_SHA_384 is incompatible with key spec ECC_NIST_P256.",
        ),
        (
            KeySpec.RSA_2048,
            "RSASSA_PSS_SHA_512",
            "DIGEST",
            32,
            errors.ValidationException,
            "Digest is invalid length for algorithm RSASSA_PSS_SHA_512.",
        ),
        (
            KeySpec.ECC_NIST_EDWARDS25519,
            "ED25519_SHA_512",
            "DIGEST",
            64,
            errors.ValidationException,
            "Message type DIGEST is incompatible with algorithm ED25519_SHA_512.",
        ),
        (
            KeySpec.ECC_NIST_EDWARDS25519,
            "ED25519_PH_SHA_512",
            "RAW",
            5,
            errors.ValidationException,
            "Message type RAW is incompatible with algorithm ED25519_PH_SHA_512.",
        ),
        (
            KeySpec.ML_DSA_65,
            "ML_DSA_SHAKE_256",
            "EXTERNAL_MU",
            32,
            errors.ValidationException,
            "External Mu is invalid length for algorithm ML_DSA_SHAKE_256.",
        ),
        (
            KeySpec.ML_DSA_65,
            "ML_DSA_SHAKE_256",
            "DIGEST",
            64,
            errors.ValidationException,
            "Message type DIGEST is incompatible with key spec ML_DSA_65.",
        ),
        (
            KeySpec.ECC_NIST_P256,
            "ECDSA_SHA_256",
            "EXTERNAL_MU",
            64,
            errors.ValidationException,
            "Message type EXTERNAL_MU is incompatible with key spec ECC_NIST_P256.",
        ),
    ],
)
def test_signing_request_rules(spec, algorithm, message_type, length, error, text) -> None:
    with pytest.raises(error) as caught:
        asymmetric.check_signing(spec, algorithm, message_type, b"x" * length)
    assert caught.value.message == text


def test_signing_rules_accept_the_right_digest_lengths() -> None:
    asymmetric.check_signing(KeySpec.ECC_NIST_P521, "ECDSA_SHA_512", "DIGEST", b"x" * 64)
    asymmetric.check_signing(KeySpec.RSA_4096, "RSASSA_PKCS1_V1_5_SHA_384", "DIGEST", b"x" * 48)
    asymmetric.check_signing(KeySpec.ML_DSA_87, "ML_DSA_SHAKE_256", "EXTERNAL_MU", b"x" * 64)
