"""The operations that count as use of a key: what `last-used`, the usage reports' unused mark and
the detector's unused-key, deletion-in-use and unauthorized-use checks all mean by it.

GetKeyLastUsage tracks the successful cryptographic operations (audit-anchors §2.5): Encrypt,
Decrypt, ReEncrypt, the GenerateDataKey family, Sign, Verify, GenerateMac, VerifyMac and
DeriveSharedSecret. The ML-KEM pair, newer than that list, counts too: Decapsulate uses the private
key, and Encapsulate, done in the service with the public key, is use as Verify is. One set, so that
a key Encapsulated daily is never "unused" to the detector while `last-used` names its last use.
"""

from __future__ import annotations

__all__ = ["CRYPTO_OPERATIONS"]

CRYPTO_OPERATIONS = frozenset({
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
})
