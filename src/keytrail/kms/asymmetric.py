"""Asymmetric key pairs: generation, public keys, signatures, RSA OAEP and ECDH.

The secret of an asymmetric key is its PKCS#8 DER private key. Signatures follow AWS KMS
("Signing algorithm reference"): RSASSA-PSS with salt length = digest length, PKCS#1 v1.5,
DER-encoded ECDSA, Ed25519 and Ed25519ph; ML-DSA lives in `pq.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from keytrail.kms import errors, pq
from keytrail.kms.keys import Key
from keytrail.kms.model import KeySpec, KeyUsage
from keytrail.kms.secret_cache import SecretCache
from keytrail.kms.specs import algorithms_for

__all__ = [
    "CURVES", "PRIVATE_KEYS", "RSA_BITS", "SIGNING", "RsaCipher", "SigningScheme", "check_offered_in_region",
    "check_rsa_request", "check_signing", "derive_shared_secret", "generate_pkcs8", "key_secret", "oaep_limit",
    "peer_public_key", "private_key", "public_key_der", "sign", "verify",
]

PrivateKey = Any  # any private key class of `cryptography` that loads from PKCS#8

RSA_BITS = {KeySpec.RSA_2048: 2048, KeySpec.RSA_3072: 3072, KeySpec.RSA_4096: 4096}
CURVES: dict[KeySpec, ec.EllipticCurve] = {
    KeySpec.ECC_NIST_P256: ec.SECP256R1(), KeySpec.ECC_NIST_P384: ec.SECP384R1(),
    KeySpec.ECC_NIST_P521: ec.SECP521R1(), KeySpec.ECC_SECG_P256K1: ec.SECP256K1(),
}
_OAEP_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "RSAES_OAEP_SHA_1": hashes.SHA1, "RSAES_OAEP_SHA_256": hashes.SHA256,
}


@dataclass(frozen=True, slots=True)
class SigningScheme:
    """One signing algorithm: its family and the hash it applies to RAW messages."""

    family: str  # RSA_PSS | RSA_PKCS1 | ECDSA | ED25519 | ED25519_PH | ML_DSA
    hash: Callable[[], hashes.HashAlgorithm] | None = None

    @property
    def digest_size(self) -> int:
        """The Message length MessageType DIGEST (or EXTERNAL_MU) requires."""
        return self.hash().digest_size if self.hash else 64


_SHA = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
SIGNING: dict[str, SigningScheme] = {
    **{f"RSASSA_PSS_SHA_{n}": SigningScheme("RSA_PSS", h) for n, h in _SHA.items()},
    **{f"RSASSA_PKCS1_V1_5_SHA_{n}": SigningScheme("RSA_PKCS1", h) for n, h in _SHA.items()},
    **{f"ECDSA_SHA_{n}": SigningScheme("ECDSA", h) for n, h in _SHA.items()},
    "ED25519_SHA_512": SigningScheme("ED25519"),
    "ED25519_PH_SHA_512": SigningScheme("ED25519_PH", hashes.SHA512),
    "ML_DSA_SHAKE_256": SigningScheme("ML_DSA"),
}
# Ed25519 signs RAW only and Ed25519ph DIGEST only (AWS Sign MessageType); only ML-DSA takes a mu.
_CLASSIC = ("RAW", "DIGEST")
_MESSAGE_TYPES = {
    "RSA_PSS": _CLASSIC, "RSA_PKCS1": _CLASSIC, "ECDSA": _CLASSIC, "ED25519": ("RAW",),
    "ED25519_PH": ("DIGEST",), "ML_DSA": ("RAW", "EXTERNAL_MU"),
}


# --- keys ------------------------------------------------------------------------------------

_CHINA_ONLY = frozenset({KeySpec.SM2})
_NOT_IN_CHINA = frozenset({KeySpec.ML_KEM_512, KeySpec.ML_KEM_768, KeySpec.ML_KEM_1024})


def check_offered_in_region(member: str, spec: KeySpec, region: str) -> None:
    """AWS offers SM2 only in its China Regions and ML-KEM only outside them (CreateKey KeySpec); a
    spec the Region lacks is "<member> <spec> is not supported in this Region". keytrail has no SM2
    in any Region (`cryptography` offers none), so in a China Region SM2 is refused for that."""
    china = region.startswith("cn-")
    if spec in (_NOT_IN_CHINA if china else _CHINA_ONLY):
        raise errors.UnsupportedOperationException(f"{member} {spec} is not supported in this Region")
    if spec is KeySpec.SM2:
        raise errors.UnsupportedOperationException(f"{member} SM2 is not supported by keytrail.")


def _pkcs8(private: PrivateKey) -> bytes:
    return bytes(private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def generate_pkcs8(spec: KeySpec) -> bytes:
    """A new private key for `spec` as PKCS#8 DER (RSA-4096 can take a second: call off the loop)."""
    if spec in RSA_BITS:
        return _pkcs8(rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS[spec]))
    if spec in CURVES:
        return _pkcs8(ec.generate_private_key(CURVES[spec]))
    if spec is KeySpec.ECC_NIST_EDWARDS25519:
        return _pkcs8(ed25519.Ed25519PrivateKey.generate())
    return pq.generate_pkcs8(spec)


def _load(secret: bytes) -> PrivateKey:
    # The RSA consistency check is skipped: keytrail made the key (or checked it on import), and
    # its sealed storage is authenticated.
    return serialization.load_der_private_key(secret, None, unsafe_skip_rsa_key_validation=True)


PRIVATE_KEYS: SecretCache[bytes, PrivateKey] = SecretCache(_load, size=1024)


def private_key(secret: bytes) -> PrivateKey:
    """The private key object of a KMS key's PKCS#8 secret, cached: parsing an RSA key costs more
    than signing with it. Only for the service's own keys: what passes through is kept, until
    evicted or its material is deleted (`PRIVATE_KEYS.forget`, kms/material.py)."""
    return PRIVATE_KEYS[secret]


def public_key_der(secret: bytes, *, kept: bool = True) -> bytes:
    """The DER SubjectPublicKeyInfo of a PKCS#8 private key (GetPublicKey's PublicKey). `kept=False`
    for a data key pair, whose private key the service must not keep after the call ("AWS KMS does
    not store, manage, or track your data key pairs"): parsed outside the cache."""
    private = private_key(secret) if kept else _load(secret)
    return bytes(private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))


# --- signatures ------------------------------------------------------------------------------

def _rsa_padding(scheme: SigningScheme) -> padding.AsymmetricPadding:
    assert scheme.hash is not None
    if scheme.family == "RSA_PSS":
        # AWS KMS uses a salt as long as the digest (not the PSS maximum).
        return padding.PSS(mgf=padding.MGF1(scheme.hash()), salt_length=scheme.hash().digest_size)
    return padding.PKCS1v15()


def _hash_for(scheme: SigningScheme, message_type: str) -> hashes.HashAlgorithm | Prehashed:
    assert scheme.hash is not None
    return Prehashed(scheme.hash()) if message_type == "DIGEST" else scheme.hash()


def check_signing(spec: KeySpec, algorithm: str, message_type: str, message: bytes) -> None:
    """AWS's rules for a Sign/Verify request: the algorithm must suit the key spec, the message
    type the algorithm, and a DIGEST (or ML-DSA mu) must have the algorithm's digest length."""
    if algorithm not in algorithms_for(spec, KeyUsage.SIGN_VERIFY)["SigningAlgorithms"]:
        raise errors.InvalidKeyUsageException(f"Algorithm {algorithm} is incompatible with key spec {spec}.")
    scheme = SIGNING[algorithm]
    if message_type not in _MESSAGE_TYPES[scheme.family]:
        # Ed25519 keys take both types, one per algorithm, so AWS names the algorithm there.
        named = f"algorithm {algorithm}" if scheme.family.startswith("ED25519") else f"key spec {spec}"
        raise errors.ValidationException(f"Message type {message_type} is incompatible with {named}.")
    if message_type != "RAW" and len(message) != scheme.digest_size:
        what = "External Mu" if message_type == "EXTERNAL_MU" else "Digest"
        raise errors.ValidationException(f"{what} is invalid length for algorithm {algorithm}.")


def sign(secret: bytes, algorithm: str, message: bytes, message_type: str) -> bytes:
    """Sign `message` (or its digest, or ML-DSA's mu) with the key's private key."""
    scheme, key = SIGNING[algorithm], private_key(secret)
    if scheme.family == "ML_DSA":
        return pq.ml_dsa_sign(key, message, message_type)
    if scheme.family == "ED25519":
        return bytes(key.sign(message))
    if scheme.family == "ED25519_PH":
        return bytes(_ed25519ph(key).sign(_sha512_object(message)))
    if scheme.family == "ECDSA":
        return bytes(key.sign(message, ec.ECDSA(_hash_for(scheme, message_type))))
    return bytes(key.sign(message, _rsa_padding(scheme), _hash_for(scheme, message_type)))


def verify(secret: bytes, algorithm: str, message: bytes, message_type: str, signature: bytes) -> None:
    """Check a signature; any failure is KMSInvalidSignatureException with an empty message."""
    scheme, public = SIGNING[algorithm], private_key(secret).public_key()
    try:
        if scheme.family == "ML_DSA":
            pq.ml_dsa_verify(public, signature, message, message_type)
        elif scheme.family == "ED25519":
            public.verify(signature, message)
        elif scheme.family == "ED25519_PH":
            _ed25519ph_verifier(public).verify(_sha512_object(message), signature)
        elif scheme.family == "ECDSA":
            public.verify(signature, message, ec.ECDSA(_hash_for(scheme, message_type)))
        else:
            public.verify(signature, message, _rsa_padding(scheme), _hash_for(scheme, message_type))
    except (InvalidSignature, ValueError):
        raise errors.KMSInvalidSignatureException("") from None


# Ed25519ph (RFC 8032 §5.1, phflag = 1) is not in `cryptography`; pycryptodome's native
# Ed25519 implements it. It signs SHA-512(message): for MessageType DIGEST AWS hashes the
# caller's digest once more (FIPS 186-5 §7.8.1 step 1).

def _sha512_object(message: bytes) -> Any:
    from Crypto.Hash import SHA512

    return SHA512.new(message)


def _ed25519ph(key: ed25519.Ed25519PrivateKey) -> Any:
    from Crypto.Signature import eddsa

    return eddsa.new(eddsa.import_private_key(key.private_bytes_raw()), "rfc8032")


def _ed25519ph_verifier(public: ed25519.Ed25519PublicKey) -> Any:
    from Crypto.Signature import eddsa

    return eddsa.new(eddsa.import_public_key(public.public_bytes_raw()), "rfc8032")


# --- key agreement ---------------------------------------------------------------------------

def peer_public_key(peer_spki: bytes, spec: KeySpec) -> ec.EllipticCurvePublicKey:
    """A peer's DER SubjectPublicKeyInfo on the curve of a key of `spec`. A key that does not
    parse or is on another curve is a ValidationException, empty message. Checked apart from the
    exchange, so a DryRun answers it without using the private key."""
    try:
        peer = serialization.load_der_public_key(peer_spki)
    # UnsupportedAlgorithm (no ValueError): a key algorithm or named curve `cryptography` does not know.
    except (ValueError, TypeError, UnsupportedAlgorithm, errors.KmsError):
        raise errors.ValidationException("") from None
    if not isinstance(peer, ec.EllipticCurvePublicKey) or peer.curve.name != CURVES[spec].name:
        raise errors.ValidationException("")
    return peer


def derive_shared_secret(secret: bytes, peer: ec.EllipticCurvePublicKey) -> bytes:
    """ECDH with a peer's public key on the key's curve (the raw x-coordinate)."""
    return bytes(private_key(secret).exchange(ec.ECDH(), peer))


# --- RSA encryption --------------------------------------------------------------------------

def oaep_limit(spec: KeySpec, algorithm: str) -> int:
    """The longest plaintext RSAES-OAEP takes: k - 2·hLen - 2 (RSA_2048: 214 with SHA-1, 190 with SHA-256)."""
    return RSA_BITS[spec] // 8 - 2 * _OAEP_HASHES[algorithm]().digest_size - 2


def _oaep(algorithm: str) -> padding.OAEP:
    algorithm_hash = _OAEP_HASHES[algorithm]
    return padding.OAEP(mgf=padding.MGF1(algorithm_hash()), algorithm=algorithm_hash(), label=None)


def _check_rsa_use(key: Key, algorithm: str, context: Mapping[str, str] | None) -> None:
    if key.key_spec not in RSA_BITS or algorithm not in _OAEP_HASHES:
        raise errors.InvalidKeyUsageException(f"Algorithm {algorithm} is incompatible with key spec {key.key_spec}.")
    if context:
        # The OAEP ciphertext has no room for it: accepting it would bind nothing.
        raise errors.ValidationException(
            "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs.")


def check_rsa_request(key: Key, context: Mapping[str, str] | None, algorithm: str, size: int = 0) -> None:
    """The refusals of encrypting `size` bytes under, or decrypting with, an RSA key that need no
    crypto (encryption context, OAEP limit), raised before any, so that a DryRun, which stops short
    of it, answers them too ("Testing your permissions": DryRun verifies "that AWS KMS API calls
    will succeed"). Other keys pass."""
    if key.key_spec in RSA_BITS:
        _check_rsa_use(key, algorithm, context)
        _check_oaep_size(key, size, algorithm)


def _check_oaep_size(key: Key, size: int, algorithm: str) -> None:
    limit = oaep_limit(key.key_spec, algorithm)
    if size > limit:
        raise errors.ValidationException(f"Algorithm {algorithm} and key spec {key.key_spec} "
                                         f"cannot encrypt data larger than {limit} bytes.")


class RsaCipher:
    """ENCRYPT_DECRYPT RSA keys: plain RSAES-OAEP ciphertext, so anyone holding the public key
    (GetPublicKey) can make ciphertext that Decrypt opens."""

    async def encrypt(self, key: Key, plaintext: bytes, context: Mapping[str, str] | None,
                      algorithm: str) -> tuple[bytes, str | None]:
        _check_rsa_use(key, algorithm, context)
        _check_oaep_size(key, len(plaintext), algorithm)
        public = private_key(key_secret(key)).public_key()
        return bytes(public.encrypt(plaintext, _oaep(algorithm))), None

    async def decrypt(self, key: Key, blob: bytes, context: Mapping[str, str] | None,
                      algorithm: str) -> tuple[bytes, str | None]:
        _check_rsa_use(key, algorithm, context)
        try:
            return bytes(private_key(key_secret(key)).decrypt(blob, _oaep(algorithm))), None
        except ValueError:
            raise errors.InvalidCiphertextException("") from None


def key_secret(key: Key) -> bytes:
    """The private key (PKCS#8) or HMAC key of `key`'s current material."""
    material = key.current_material
    if material is None:
        raise errors.KMSInvalidStateException(f"{key.arn} is pending import.")
    return material.secret
