"""ML-DSA, ML-KEM (implicit rejection, ML-KEM-512 refused), HMAC and RSA OAEP limits."""

from __future__ import annotations

import hmac

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from keytrail.kms import asymmetric, errors, hmac_keys, pq
from keytrail.kms.model import KeySpec


def test_ml_dsa_raw_and_external_mu_verify_with_cryptography() -> None:
    secret = asymmetric.generate_pkcs8(KeySpec.ML_DSA_65)
    public = serialization.load_der_public_key(asymmetric.public_key_der(secret))
    assert isinstance(public, mldsa.MLDSA65PublicKey)
    public.verify(asymmetric.sign(secret, "ML_DSA_SHAKE_256", b"post-quantum", "RAW"), b"post-quantum")
    hasher = mldsa.MLDSAMuHasher(public)
    hasher.update(b"a long document")
    mu = hasher.finalize()
    signature = asymmetric.sign(secret, "ML_DSA_SHAKE_256", mu, "EXTERNAL_MU")
    public.verify(signature, b"a long document")  # a mu signature is an ordinary ML-DSA signature
    asymmetric.verify(secret, "ML_DSA_SHAKE_256", mu, "EXTERNAL_MU", signature)
    with pytest.raises(errors.KMSInvalidSignatureException):
        asymmetric.verify(secret, "ML_DSA_SHAKE_256", b"other", "RAW", signature)


@pytest.mark.parametrize("spec", [KeySpec.ML_KEM_768, KeySpec.ML_KEM_1024])
def test_ml_kem_decapsulates_and_rejects_implicitly(spec: KeySpec) -> None:
    private = asymmetric.private_key(asymmetric.generate_pkcs8(spec))
    shared, ciphertext = pq.encapsulate(private)
    assert len(shared) == 32 and len(ciphertext) == pq.KEM_CIPHERTEXT_BYTES[spec]
    assert pq.decapsulate(spec, private, ciphertext) == shared
    altered = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    rejected = pq.decapsulate(spec, private, altered)
    assert len(rejected) == 32 and rejected != shared
    assert pq.decapsulate(spec, private, altered) == rejected  # deterministic, not random noise
    with pytest.raises(errors.InvalidCiphertextException):
        pq.decapsulate(spec, private, ciphertext[:-1])


def test_ml_kem_512_is_refused_with_its_reason() -> None:
    with pytest.raises(errors.UnsupportedOperationException, match="constant-time"):
        asymmetric.generate_pkcs8(KeySpec.ML_KEM_512)


@pytest.mark.parametrize(
    ("spec", "algorithm", "digest"),
    [(KeySpec.HMAC_224, "HMAC_SHA_224", "sha224"), (KeySpec.HMAC_512, "HMAC_SHA_512", "sha512")],
)
def test_hmac_matches_stdlib(spec: KeySpec, algorithm: str, digest: str) -> None:
    name = hmac_keys.check_mac_algorithm(spec, algorithm)
    mac = hmac_keys.generate_mac(b"k" * 28, name, b"message")
    assert mac == hmac.new(b"k" * 28, b"message", digest).digest()
    hmac_keys.verify_mac(b"k" * 28, name, b"message", mac)
    with pytest.raises(errors.KMSInvalidMacException) as caught:
        hmac_keys.verify_mac(b"k" * 28, name, b"message", mac[:-1] + bytes([mac[-1] ^ 1]))
    assert caught.value.message == ""


def test_hmac_algorithm_must_match_the_spec() -> None:
    with pytest.raises(errors.InvalidKeyUsageException) as caught:
        hmac_keys.check_mac_algorithm(KeySpec.HMAC_224, "HMAC_SHA_256")
    assert caught.value.message == "Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224."


@pytest.mark.parametrize(
    ("spec", "sha1", "sha256"),
    [(KeySpec.RSA_2048, 214, 190), (KeySpec.RSA_3072, 342, 318), (KeySpec.RSA_4096, 470, 446)],
)
def test_oaep_limits_match_aws(spec: KeySpec, sha1: int, sha256: int) -> None:
    assert asymmetric.oaep_limit(spec, "RSAES_OAEP_SHA_1") == sha1
    assert asymmetric.oaep_limit(spec, "RSAES_OAEP_SHA_256") == sha256


def test_ecdh_rejects_a_key_on_another_curve() -> None:
    own = asymmetric.generate_pkcs8(KeySpec.ECC_NIST_P256)
    other = asymmetric.public_key_der(asymmetric.generate_pkcs8(KeySpec.ECC_NIST_P384))
    with pytest.raises(errors.ValidationException):
        asymmetric.peer_public_key(other, KeySpec.ECC_NIST_P256)
    with pytest.raises(errors.ValidationException):
        asymmetric.peer_public_key(b"not a key", KeySpec.ECC_NIST_P256)
    peer = asymmetric.generate_pkcs8(KeySpec.ECC_NIST_P256)

    def public_of(secret: bytes) -> ec.EllipticCurvePublicKey:
        return asymmetric.peer_public_key(asymmetric.public_key_der(secret), KeySpec.ECC_NIST_P256)

    assert asymmetric.derive_shared_secret(own, public_of(peer)) == asymmetric.derive_shared_secret(
        peer, public_of(own))


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


_EC_PUBLIC_KEY = _der(0x06, bytes.fromhex("2a8648ce3d0201"))  # id-ecPublicKey
_POINT = _der(0x03, b"\x00\x04" + b"\x01" * 64)  # a BIT STRING holding an uncompressed P-256-sized point


@pytest.mark.parametrize("algorithm", [
    _EC_PUBLIC_KEY + _der(0x06, b"\x2a\x03\x04"),  # a named curve no one knows (1.2.3.4)
    _EC_PUBLIC_KEY + b"\x05\x00",  # NULL where the curve belongs
    _der(0x06, b"\x2a\x03\x04\x05"),  # a key algorithm no one knows (1.2.3.4.5)
], ids=["unknown-curve", "null-curve", "unknown-algorithm"])
def test_ecdh_peer_key_of_an_unknown_algorithm_or_curve_is_a_validation_error(algorithm: bytes) -> None:
    # `cryptography` raises UnsupportedAlgorithm for these, which is no ValueError: it was a 500.
    spki = _der(0x30, _der(0x30, algorithm) + _POINT)
    with pytest.raises(errors.ValidationException):
        asymmetric.peer_public_key(spki, KeySpec.ECC_NIST_P256)
