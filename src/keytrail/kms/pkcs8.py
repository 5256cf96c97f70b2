"""The outer structure of a PKCS#8 private key (RFC 5208 PrivateKeyInfo, RFC 5958 OneAsymmetricKey).

`cryptography` loads PKCS#1 (RSAPrivateKey) and SEC1 (ECPrivateKey) DER too, and maps EC keys with
explicit curve parameters to their named curve. AWS KMS takes neither for imported key material
(developer guide, "Requirements for imported key material": PKCS #8, named curves only), so
ImportKeyMaterial reads the algorithm identifier itself before handing the bytes to `cryptography`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EC_PUBLIC_KEY", "RSA_ENCRYPTION", "Pkcs8Algorithm", "multi_prime_rsa", "pkcs8_algorithm"]

_SEQUENCE, _INTEGER, _OID, _OCTET_STRING = 0x30, 0x02, 0x06, 0x04
EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # id-ecPublicKey, 1.2.840.10045.2.1 (DER contents)
RSA_ENCRYPTION = bytes.fromhex("2a864886f70d010101")  # rsaEncryption, 1.2.840.113549.1.1.1
_MULTI_PRIME = b"\x01"  # RSAPrivateKey version "multi" (RFC 8017 A.1.2): more than two primes


@dataclass(frozen=True, slots=True)
class Pkcs8Algorithm:
    """The privateKeyAlgorithm of a PrivateKeyInfo: its OID and the tag of its parameters (None if absent)."""

    oid: bytes
    parameters_tag: int | None


def _element(data: bytes, at: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the DER element at `at`, within `end`."""
    tag, first = data[at], data[at + 1]
    at += 2
    if first & 0x80:
        count = first & 0x7F
        if not 0 < count <= 4 or at + count > end:
            raise ValueError("length")
        length, at = int.from_bytes(data[at : at + count], "big"), at + count
    else:
        length = first
    if at + length > end:
        raise ValueError("length")
    return tag, at, at + length


def _expect(data: bytes, at: int, end: int, tag: int) -> tuple[int, int]:
    found, start, stop = _element(data, at, end)
    if found != tag:
        raise ValueError("tag")
    return start, stop


def pkcs8_algorithm(der: bytes) -> Pkcs8Algorithm | None:
    """The algorithm a PKCS#8 PrivateKeyInfo names, or None if `der` is not one (a PKCS#1 or SEC1
    key, whose second element is an INTEGER or an OCTET STRING, not an AlgorithmIdentifier)."""
    try:
        start, stop = _expect(der, 0, len(der), _SEQUENCE)
        if stop != len(der):
            return None
        _, after_version = _expect(der, start, stop, _INTEGER)
        algorithm_start, algorithm_end = _expect(der, after_version, stop, _SEQUENCE)
        oid_start, oid_end = _expect(der, algorithm_start, algorithm_end, _OID)
    except (ValueError, IndexError):
        return None
    parameters = der[oid_end] if oid_end < algorithm_end else None
    return Pkcs8Algorithm(der[oid_start:oid_end], parameters)


def multi_prime_rsa(der: bytes) -> bool:
    """Whether the PKCS#8 PrivateKeyInfo `der` holds an RSAPrivateKey of more than two primes
    (`openssl genpkey -pkeyopt rsa_keygen_primes:3`), which `cryptography` does not load."""
    try:
        start, stop = _expect(der, 0, len(der), _SEQUENCE)
        _, after_version = _expect(der, start, stop, _INTEGER)
        _, after_algorithm = _expect(der, after_version, stop, _SEQUENCE)
        key_start, key_end = _expect(der, after_algorithm, stop, _OCTET_STRING)
        rsa_start, rsa_end = _expect(der, key_start, key_end, _SEQUENCE)
        version_start, version_end = _expect(der, rsa_start, rsa_end, _INTEGER)
    except (ValueError, IndexError):
        return False
    return der[version_start:version_end] == _MULTI_PRIME
