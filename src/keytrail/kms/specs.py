"""Which key specs go with which key usages and algorithms (AWS KMS "Key spec reference")."""

from __future__ import annotations

from typing import Any

from keytrail.kms.model import KeySpec, KeyUsage

__all__ = ["ALLOWED_USAGES", "algorithms_for"]

_RSA = (KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096)
_ECC_NIST = (KeySpec.ECC_NIST_P256, KeySpec.ECC_NIST_P384, KeySpec.ECC_NIST_P521)
_HMAC = (KeySpec.HMAC_224, KeySpec.HMAC_256, KeySpec.HMAC_384, KeySpec.HMAC_512)
_ML_DSA = (KeySpec.ML_DSA_44, KeySpec.ML_DSA_65, KeySpec.ML_DSA_87)
_ML_KEM = (KeySpec.ML_KEM_512, KeySpec.ML_KEM_768, KeySpec.ML_KEM_1024)

ALLOWED_USAGES: dict[KeySpec, tuple[KeyUsage, ...]] = {
    KeySpec.SYMMETRIC_DEFAULT: (KeyUsage.ENCRYPT_DECRYPT,),
    **{spec: (KeyUsage.ENCRYPT_DECRYPT, KeyUsage.SIGN_VERIFY) for spec in _RSA},
    # NIST curves sign or derive shared secrets; secp256k1 only signs (CreateKey KeyUsage).
    **{spec: (KeyUsage.SIGN_VERIFY, KeyUsage.KEY_AGREEMENT) for spec in _ECC_NIST},
    KeySpec.ECC_SECG_P256K1: (KeyUsage.SIGN_VERIFY,),
    KeySpec.ECC_NIST_EDWARDS25519: (KeyUsage.SIGN_VERIFY,),
    **{spec: (KeyUsage.GENERATE_VERIFY_MAC,) for spec in _HMAC},
    **{spec: (KeyUsage.SIGN_VERIFY,) for spec in _ML_DSA},
    **{spec: (KeyUsage.ENCAPSULATE_DECAPSULATE,) for spec in _ML_KEM},
}
_ECDSA = {
    KeySpec.ECC_NIST_P256: "ECDSA_SHA_256", KeySpec.ECC_SECG_P256K1: "ECDSA_SHA_256",
    KeySpec.ECC_NIST_P384: "ECDSA_SHA_384", KeySpec.ECC_NIST_P521: "ECDSA_SHA_512",
}
# In AWS's order (its DescribeKey of an RSA signing key, botocore's kms examples): PKCS #1 v1.5 first.
RSA_SIGNING = [
    "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
    "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512",
]


def algorithms_for(spec: KeySpec, usage: KeyUsage) -> dict[str, Any]:
    """The algorithm lists DescribeKey shows for a key of this spec and usage."""
    if usage is KeyUsage.ENCRYPT_DECRYPT:
        if spec is KeySpec.SYMMETRIC_DEFAULT:
            return {"EncryptionAlgorithms": ["SYMMETRIC_DEFAULT"]}
        return {"EncryptionAlgorithms": ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]}
    if usage is KeyUsage.SIGN_VERIFY:
        if spec in _RSA:
            return {"SigningAlgorithms": list(RSA_SIGNING)}
        if spec in _ECDSA:
            return {"SigningAlgorithms": [_ECDSA[spec]]}
        if spec is KeySpec.ECC_NIST_EDWARDS25519:
            return {"SigningAlgorithms": ["ED25519_SHA_512", "ED25519_PH_SHA_512"]}
        return {"SigningAlgorithms": ["ML_DSA_SHAKE_256"]}
    if usage is KeyUsage.GENERATE_VERIFY_MAC:
        return {"MacAlgorithms": [f"HMAC_SHA_{spec.value.split('_')[1]}"]}
    if usage is KeyUsage.ENCAPSULATE_DECAPSULATE:
        return {"EncapsulationAlgorithms": ["ML_KEM"]}
    return {"KeyAgreementAlgorithms": ["ECDH"]}
