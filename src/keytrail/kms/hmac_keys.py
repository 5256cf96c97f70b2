"""HMAC keys (AWS KMS "HMAC keys in AWS KMS"): each HMAC_<n> key spec takes only HMAC_SHA_<n>."""

from __future__ import annotations

import hashlib
import hmac

from keytrail.kms import errors
from keytrail.kms.model import KeySpec

__all__ = ["MAC_ALGORITHMS", "check_mac_algorithm", "generate_mac", "verify_mac"]

MAC_ALGORITHMS: dict[KeySpec, tuple[str, str]] = {
    KeySpec.HMAC_224: ("HMAC_SHA_224", "sha224"),
    KeySpec.HMAC_256: ("HMAC_SHA_256", "sha256"),
    KeySpec.HMAC_384: ("HMAC_SHA_384", "sha384"),
    KeySpec.HMAC_512: ("HMAC_SHA_512", "sha512"),
}


def check_mac_algorithm(spec: KeySpec, algorithm: str) -> str:
    """The hashlib name for `algorithm`, or AWS's InvalidKeyUsageException if the spec differs."""
    expected = MAC_ALGORITHMS.get(spec)
    if expected is None or expected[0] != algorithm:
        raise errors.InvalidKeyUsageException(f"Algorithm {algorithm} is incompatible with key spec {spec}.")
    return expected[1]


def generate_mac(secret: bytes, digest: str, message: bytes) -> bytes:
    return hmac.digest(secret, message, getattr(hashlib, digest))


def verify_mac(secret: bytes, digest: str, message: bytes, mac: bytes) -> None:
    """Compare in constant time; a mismatch is KMSInvalidMacException with an empty message."""
    if not hmac.compare_digest(generate_mac(secret, digest, message), mac):
        raise errors.KMSInvalidMacException("")
