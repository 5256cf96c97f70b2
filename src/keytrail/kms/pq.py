"""Post-quantum keys: ML-DSA signatures (FIPS 204) and ML-KEM key encapsulation (FIPS 203).

Both come from `cryptography` (OpenSSL). ML-KEM-512 is refused: `cryptography` does not offer
it, and the PyPI alternatives are either pure Python (not constant-time, so decapsulation would
leak the secret key through timing) or wrap unaudited 0.x crates (see docs/asymmetric-keys.md).
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import mldsa, mlkem

from keytrail.kms import errors
from keytrail.kms.model import KeySpec

__all__ = [
    "KEM_CIPHERTEXT_BYTES", "decapsulate", "encapsulate", "generate_pkcs8",
    "ml_dsa_sign", "ml_dsa_verify", "ml_kem_512_refused",
]


def ml_kem_512_refused(member: str = "KeySpec") -> str:
    """Why ML_KEM_512 is refused, naming the request's member as the SM2 refusal does: KeySpec
    (CreateKey) or KeyPairSpec (GenerateDataKeyPair, whose caller sent no KeySpec)."""
    return (f"{member} ML_KEM_512 is not supported by keytrail: no constant-time ML-KEM-512 implementation "
            "is available to it. Use ML_KEM_768 or ML_KEM_1024.")


_GENERATE: dict[KeySpec, Any] = {
    KeySpec.ML_DSA_44: mldsa.MLDSA44PrivateKey.generate,
    KeySpec.ML_DSA_65: mldsa.MLDSA65PrivateKey.generate,
    KeySpec.ML_DSA_87: mldsa.MLDSA87PrivateKey.generate,
    KeySpec.ML_KEM_768: mlkem.MLKEM768PrivateKey.generate,
    KeySpec.ML_KEM_1024: mlkem.MLKEM1024PrivateKey.generate,
}
# FIPS 203 ciphertext sizes; any other length is InvalidCiphertextException (AWS Decapsulate).
KEM_CIPHERTEXT_BYTES = {KeySpec.ML_KEM_512: 768, KeySpec.ML_KEM_768: 1088, KeySpec.ML_KEM_1024: 1568}
_MU_BYTES = 64


def generate_pkcs8(spec: KeySpec) -> bytes:
    """A new ML-DSA or ML-KEM private key as PKCS#8 DER (the 32/64-byte seed form)."""
    if spec is KeySpec.ML_KEM_512:
        raise errors.UnsupportedOperationException(ml_kem_512_refused())
    generate = _GENERATE.get(spec)
    if generate is None:
        raise errors.UnsupportedOperationException(f"KeySpec {spec} is not supported.")
    return bytes(generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def ml_dsa_sign(private: Any, message: bytes, message_type: str) -> bytes:
    """Pure ML-DSA with an empty context (RAW), or over a caller-computed mu (EXTERNAL_MU)."""
    if message_type == "EXTERNAL_MU":
        return bytes(private.sign_mu(message))
    return bytes(private.sign(message))


def ml_dsa_verify(public: Any, signature: bytes, message: bytes, message_type: str) -> None:
    """Raises InvalidSignature (or ValueError for a malformed signature) when it does not verify."""
    if message_type == "EXTERNAL_MU":
        if len(message) != _MU_BYTES:
            raise ValueError("mu must be 64 bytes")
        public.verify_mu(signature, message)
    else:
        public.verify(signature, message)


def encapsulate(private: Any) -> tuple[bytes, bytes]:
    """A fresh 32-byte shared secret and its ciphertext under the key's public key."""
    shared_secret, ciphertext = private.public_key().encapsulate()
    return bytes(shared_secret), bytes(ciphertext)


def decapsulate(spec: KeySpec, private: Any, ciphertext: bytes) -> bytes:
    """The shared secret in `ciphertext`. FIPS 203 implicit rejection: a wrong ciphertext of the
    right length gives a pseudo-random secret, never an error; a wrong length is invalid."""
    if len(ciphertext) != KEM_CIPHERTEXT_BYTES[spec]:
        raise errors.InvalidCiphertextException("")
    try:
        return bytes(private.decapsulate(ciphertext))
    except ValueError:
        raise errors.InvalidCiphertextException("") from None
