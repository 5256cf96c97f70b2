"""Sign, Verify and GetPublicKey through boto3 against a real server; every signature verifies
with `cryptography` using the GetPublicKey SPKI (kms-anchors §3d item 20)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError
from Crypto.Hash import SHA512
from Crypto.Signature import eddsa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

pytestmark = pytest.mark.integration

_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_ECDSA = {
    "ECC_NIST_P256": "ECDSA_SHA_256",
    "ECC_SECG_P256K1": "ECDSA_SHA_256",
    "ECC_NIST_P384": "ECDSA_SHA_384",
    "ECC_NIST_P521": "ECDSA_SHA_512",
}
_KEYS: dict[str, str] = {}


def signing_key(kms: Any, spec: str) -> str:
    """One SIGN_VERIFY key per spec for the module (RSA keys are slow to make)."""
    if spec not in _KEYS:
        _KEYS[spec] = kms.create_key(KeySpec=spec, KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    return _KEYS[spec]


def public_key(kms: Any, key_id: str) -> Any:
    return serialization.load_der_public_key(kms.get_public_key(KeyId=key_id)["PublicKey"])


def error_of(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"].get("Message", "")


@pytest.mark.parametrize("algorithm", [f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in _HASHES])
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_rsa_signatures_verify_locally_and_in_the_service(kms, algorithm, message_type) -> None:
    key_id, algorithm_hash = signing_key(kms, "RSA_2048"), _HASHES[algorithm[-3:]]
    digest = hashlib.new(algorithm_hash.name, b"payload").digest()
    message = b"payload" if message_type == "RAW" else digest
    signed = kms.sign(KeyId=key_id, Message=message, MessageType=message_type, SigningAlgorithm=algorithm)
    assert signed["KeyId"].endswith(key_id) and signed["SigningAlgorithm"] == algorithm
    scheme = (
        padding.PSS(padding.MGF1(algorithm_hash()), salt_length=algorithm_hash().digest_size)
        if "PSS" in algorithm
        else padding.PKCS1v15()
    )
    public_key(kms, key_id).verify(signed["Signature"], digest, scheme, Prehashed(algorithm_hash()))
    verified = kms.verify(
        KeyId=key_id,
        Message=message,
        MessageType=message_type,
        Signature=signed["Signature"],
        SigningAlgorithm=algorithm,
    )
    assert verified["SignatureValid"] is True


@pytest.mark.parametrize("spec", ["RSA_3072", "RSA_4096"])
def test_larger_rsa_keys_sign_with_their_modulus_size(kms, spec) -> None:
    """RSA_2048 is checked per algorithm above; the larger specs make modulus-sized signatures that
    verify with the GetPublicKey SPKI too."""
    key_id = signing_key(kms, spec)
    public = public_key(kms, key_id)
    assert public.key_size == int(spec[-4:])
    for algorithm, scheme in (
        ("RSASSA_PSS_SHA_512", padding.PSS(padding.MGF1(hashes.SHA512()), salt_length=64)),
        ("RSASSA_PKCS1_V1_5_SHA_384", padding.PKCS1v15()),
    ):
        algorithm_hash = _HASHES[algorithm[-3:]]()
        signature = kms.sign(KeyId=key_id, Message=b"firmware", SigningAlgorithm=algorithm)["Signature"]
        assert len(signature) == public.key_size // 8
        public.verify(signature, b"firmware", scheme, algorithm_hash)

@pytest.mark.parametrize("spec", list(_ECDSA))
@pytest.mark.parametrize("message_type", ["RAW", "DIGEST"])
def test_ecdsa_der_signatures_verify_locally(kms, spec, message_type) -> None:
    key_id, algorithm = signing_key(kms, spec), _ECDSA[spec]
    algorithm_hash = _HASHES[algorithm[-3:]]()
    digest = hashlib.new(algorithm_hash.name, b"ledger").digest()
    message = b"ledger" if message_type == "RAW" else digest
    signature = kms.sign(KeyId=key_id, Message=message, MessageType=message_type, SigningAlgorithm=algorithm)[
        "Signature"
    ]
    public_key(kms, key_id).verify(signature, digest, ec.ECDSA(Prehashed(algorithm_hash)))
    kms.verify(
        KeyId=key_id,
        Message=message,
        MessageType=message_type,
        Signature=signature,
        SigningAlgorithm=algorithm,
    )


def test_data_key_pair_signature_verifies_with_its_public_key(kms) -> None:
    pair = kms.generate_data_key_pair(
        KeyId=kms.create_key()["KeyMetadata"]["KeyId"], KeyPairSpec="ECC_NIST_P256"
    )
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    signature = private.sign(b"local", ec.ECDSA(hashes.SHA256()))
    serialization.load_der_public_key(pair["PublicKey"]).verify(
        signature, b"local", ec.ECDSA(hashes.SHA256())
    )


def test_ed25519_and_ed25519ph(kms) -> None:
    key_id = signing_key(kms, "ECC_NIST_EDWARDS25519")
    public = public_key(kms, key_id)
    signature = kms.sign(KeyId=key_id, Message=b"edwards", SigningAlgorithm="ED25519_SHA_512")["Signature"]
    public.verify(signature, b"edwards")
    digest = hashlib.sha512(b"edwards").digest()
    ph = kms.sign(KeyId=key_id, Message=digest, MessageType="DIGEST", SigningAlgorithm="ED25519_PH_SHA_512")
    verifier = eddsa.new(eddsa.import_public_key(public.public_bytes_raw()), "rfc8032")
    verifier.verify(SHA512.new(digest), ph["Signature"])
    kms.verify(
        KeyId=key_id,
        Message=digest,
        MessageType="DIGEST",
        Signature=ph["Signature"],
        SigningAlgorithm="ED25519_PH_SHA_512",
    )
    assert error_of(kms.sign, KeyId=key_id, Message=b"x", SigningAlgorithm="ED25519_PH_SHA_512") == (
        "ValidationException", "Message type RAW is incompatible with algorithm ED25519_PH_SHA_512.")
    assert error_of(
        kms.verify, KeyId=key_id, Message=digest, MessageType="DIGEST", Signature=ph["Signature"],
        SigningAlgorithm="ED25519_SHA_512",
    ) == ("ValidationException", "Message type DIGEST is incompatible with algorithm ED25519_SHA_512.")


@pytest.mark.parametrize(
    ("spec", "public_class"),
    [
        ("ML_DSA_44", mldsa.MLDSA44PublicKey),
        ("ML_DSA_65", mldsa.MLDSA65PublicKey),
        ("ML_DSA_87", mldsa.MLDSA87PublicKey),
    ],
)
def test_ml_dsa_raw_and_external_mu(kms, spec, public_class) -> None:
    key_id = signing_key(kms, spec)
    described = kms.get_public_key(KeyId=key_id)
    assert described["SigningAlgorithms"] == ["ML_DSA_SHAKE_256"] and described["KeySpec"] == spec
    assert described["CustomerMasterKeySpec"] == spec  # as AWS's KeyMetadata has it for ML-DSA keys
    public = serialization.load_der_public_key(described["PublicKey"])
    assert isinstance(public, public_class)
    raw = kms.sign(KeyId=key_id, Message=b"pq", SigningAlgorithm="ML_DSA_SHAKE_256")["Signature"]
    public.verify(raw, b"pq")
    hasher = mldsa.MLDSAMuHasher(public)
    hasher.update(b"a message too large to send" * 400)
    mu = hasher.finalize()
    signature = kms.sign(
        KeyId=key_id, Message=mu, MessageType="EXTERNAL_MU", SigningAlgorithm="ML_DSA_SHAKE_256"
    )["Signature"]
    public.verify(signature, b"a message too large to send" * 400)
    kms.verify(
        KeyId=key_id,
        Message=mu,
        MessageType="EXTERNAL_MU",
        Signature=signature,
        SigningAlgorithm="ML_DSA_SHAKE_256",
    )


@pytest.mark.parametrize(
    ("spec", "algorithm", "length"),
    [
        ("RSA_2048", "RSASSA_PSS_SHA_256", 31),
        ("ECC_NIST_P384", "ECDSA_SHA_384", 32),
        ("ECC_SECG_P256K1", "ECDSA_SHA_256", 64),
        ("ML_DSA_44", "ML_DSA_SHAKE_256", 32),
    ],
)
def test_wrong_digest_length_is_a_validation_error_on_sign_and_verify(kms, spec, algorithm, length) -> None:
    key_id = signing_key(kms, spec)
    message_type = "EXTERNAL_MU" if spec.startswith("ML_DSA") else "DIGEST"
    params = {
        "KeyId": key_id,
        "Message": b"d" * length,
        "MessageType": message_type,
        "SigningAlgorithm": algorithm,
    }
    what = "External Mu" if message_type == "EXTERNAL_MU" else "Digest"
    expected = ("ValidationException", f"{what} is invalid length for algorithm {algorithm}.")
    assert error_of(kms.sign, **params) == expected
    assert error_of(kms.verify, Signature=b"s" * 64, **params) == expected


@pytest.mark.parametrize(("spec", "algorithm", "message_type"), [
    ("ML_DSA_44", "ML_DSA_SHAKE_256", "DIGEST"),
    ("RSA_2048", "RSASSA_PSS_SHA_256", "EXTERNAL_MU"),
    ("ECC_NIST_P256", "ECDSA_SHA_256", "EXTERNAL_MU"),
])
def test_message_type_the_key_spec_does_not_take_names_the_spec(kms, spec, algorithm, message_type) -> None:
    params = {"KeyId": signing_key(kms, spec), "Message": b"m" * 64, "MessageType": message_type,
              "SigningAlgorithm": algorithm}
    expected = ("ValidationException", f"Message type {message_type} is incompatible with key spec {spec}.")
    assert error_of(kms.sign, **params) == expected
    assert error_of(kms.verify, Signature=b"s" * 64, **params) == expected


@pytest.mark.parametrize("spec", ["RSA_2048", "ECC_NIST_P256", "ECC_NIST_EDWARDS25519", "ML_DSA_44"])
def test_bad_signature_raises_invalid_signature_with_empty_message(kms, spec) -> None:
    key_id = signing_key(kms, spec)
    algorithm = kms.get_public_key(KeyId=key_id)["SigningAlgorithms"][0]
    signature = kms.sign(KeyId=key_id, Message=b"right", SigningAlgorithm=algorithm)["Signature"]
    assert error_of(
        kms.verify, KeyId=key_id, Message=b"wrong", Signature=signature, SigningAlgorithm=algorithm
    ) == ("KMSInvalidSignatureException", "")
    tampered = bytes([signature[0] ^ 0xFF]) + signature[1:]
    assert (
        error_of(kms.verify, KeyId=key_id, Message=b"right", Signature=tampered, SigningAlgorithm=algorithm)[
            0
        ]
        == "KMSInvalidSignatureException"
    )


def test_algorithm_not_of_the_key_spec_is_invalid_key_usage(kms) -> None:
    key_id = signing_key(kms, "ECC_NIST_P256")
    code, message = error_of(kms.sign, KeyId=key_id, Message=b"m", SigningAlgorithm="ECDSA_SHA_384")
    assert (code, message) == (
        "InvalidKeyUsageException",
        "Algorithm ECDSA_SHA_384 is incompatible with key spec ECC_NIST_P256.",
    )
    code, _ = error_of(
        kms.sign, KeyId=signing_key(kms, "RSA_2048"), Message=b"m", SigningAlgorithm="ECDSA_SHA_256"
    )
    assert code == "InvalidKeyUsageException"


def test_wrong_key_usage_names_the_usage_and_operation(kms) -> None:
    hmac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    code, message = error_of(
        kms.sign, KeyId=hmac_key["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256"
    )
    assert (code, message) == (
        "InvalidKeyUsageException",
        f"{hmac_key['Arn']} key usage is GENERATE_VERIFY_MAC which is not valid for Sign.",
    )
    symmetric = kms.create_key()["KeyMetadata"]
    code, message = error_of(
        kms.verify, KeyId=symmetric["Arn"], Message=b"m", Signature=b"s", SigningAlgorithm="ECDSA_SHA_256"
    )
    assert (code, message) == (
        "InvalidKeyUsageException",
        f"{symmetric['Arn']} key usage is ENCRYPT_DECRYPT which is not valid for Verify.",
    )


def test_disabled_and_pending_deletion_keys(kms) -> None:
    meta = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    sign = {"KeyId": meta["KeyId"], "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"}
    signature = kms.sign(**sign)["Signature"]
    kms.disable_key(KeyId=meta["KeyId"])
    disabled = ("DisabledException", f"{meta['Arn']} is disabled.")
    assert error_of(kms.sign, **sign) == disabled
    assert error_of(kms.verify, Signature=signature, **sign) == disabled
    assert error_of(kms.get_public_key, KeyId=meta["KeyId"]) == disabled
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    pending = ("KMSInvalidStateException", f"{meta['Arn']} is pending deletion.")
    assert error_of(kms.sign, **sign) == pending
    assert error_of(kms.verify, Signature=signature, **sign) == pending
    assert error_of(kms.get_public_key, KeyId=meta["KeyId"]) == pending


def test_get_public_key_lists_usage_and_algorithms(kms) -> None:
    described = kms.get_public_key(KeyId=signing_key(kms, "RSA_2048"))
    assert described["KeyUsage"] == "SIGN_VERIFY" and described["KeySpec"] == "RSA_2048"
    assert described["CustomerMasterKeySpec"] == "RSA_2048"
    assert described["SigningAlgorithms"] == [  # in AWS's order (botocore's DescribeKey example)
        "RSASSA_PKCS1_V1_5_SHA_256", "RSASSA_PKCS1_V1_5_SHA_384", "RSASSA_PKCS1_V1_5_SHA_512",
        "RSASSA_PSS_SHA_256", "RSASSA_PSS_SHA_384", "RSASSA_PSS_SHA_512"]
    assert "EncryptionAlgorithms" not in described
    symmetric = kms.create_key()["KeyMetadata"]
    assert error_of(kms.get_public_key, KeyId=symmetric["KeyId"]) == (
        "UnsupportedOperationException",
        f"{symmetric['Arn']} key spec is SYMMETRIC_DEFAULT which is not valid for GetPublicKey.",
    )
    hmac_key = kms.create_key(KeySpec="HMAC_384", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert error_of(kms.get_public_key, KeyId=hmac_key["KeyId"]) == (
        "UnsupportedOperationException",
        f"{hmac_key['Arn']} key spec is HMAC_384 which is not valid for GetPublicKey.",
    )


@pytest.mark.parametrize(
    ("spec", "usage"),
    [("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"), ("ML_KEM_768", "ENCAPSULATE_DECAPSULATE")],
)
def test_get_public_key_names_the_deprecated_spec_also_for_specs_newer_than_its_enum(kms, spec, usage) -> None:
    """GetPublicKey: "The KeySpec and CustomerMasterKeySpec fields have the same value"; AWS
    fills the deprecated member for specs its enum lacks (KeyMetadata of an ML-DSA key)."""
    key_id = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
    described = kms.get_public_key(KeyId=key_id)
    assert described["KeySpec"] == described["CustomerMasterKeySpec"] == spec


@pytest.mark.parametrize("spec", ["ECC_NIST_P256", "RSA_2048", "ECC_NIST_EDWARDS25519", "ML_DSA_44"])
def test_verify_dry_run_answers_as_the_call_would_for_a_signature_that_does_not_verify(kms, spec) -> None:
    """DryRun "checks if your request will succeed": a Verify that fails KMSInvalidSignatureException
    fails so with DryRun too, as a Decrypt's DryRun fails for a ciphertext that does not open; only a
    signature that verifies is DryRunOperationException."""
    key_id = signing_key(kms, spec)
    algorithm = kms.get_public_key(KeyId=key_id)["SigningAlgorithms"][0]
    signature = kms.sign(KeyId=key_id, Message=b"right", SigningAlgorithm=algorithm)["Signature"]
    for message, tampered in ((b"wrong", signature), (b"right", bytes([signature[0] ^ 0xFF]) + signature[1:])):
        assert error_of(
            kms.verify, KeyId=key_id, Message=message, Signature=tampered, SigningAlgorithm=algorithm, DryRun=True
        ) == ("KMSInvalidSignatureException", "")
    assert error_of(
        kms.verify, KeyId=key_id, Message=b"right", Signature=signature, SigningAlgorithm=algorithm, DryRun=True
    ) == ("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")


def test_sign_dry_run(kms) -> None:
    code, message = error_of(
        kms.sign,
        KeyId=signing_key(kms, "ECC_NIST_P256"),
        Message=b"m",
        SigningAlgorithm="ECDSA_SHA_256",
        DryRun=True,
    )
    assert (code, message) == (
        "DryRunOperationException",
        "The request would have succeeded, but the DryRun option is set.",
    )
