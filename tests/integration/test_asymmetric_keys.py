"""HMAC, key agreement and ML-KEM keys through boto3 (kms-anchors §3d items 6, 7, 17, 23, 29)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mlkem

pytestmark = pytest.mark.integration


def error_of(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"].get("Message", "")


def test_hmac_key_needs_a_key_usage_and_lists_its_algorithm(kms) -> None:
    assert error_of(kms.create_key, KeySpec="HMAC_256") == (
        "ValidationException",
        "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys.",
    )
    meta = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    assert meta["MacAlgorithms"] == ["HMAC_SHA_256"] and "EncryptionAlgorithms" not in meta



def test_sm2_is_refused_with_the_message_of_the_region(server) -> None:
    """AWS offers SM2 only in its China Regions ("KeySpec SM2 is not supported in this Region"
    elsewhere); keytrail has no SM2 at all, and says so in a China Region."""
    for region, message in (
        ("us-east-1", "KeySpec SM2 is not supported in this Region"),
        ("cn-north-1", "KeySpec SM2 is not supported by keytrail."),
    ):
        kms = server.client("alice", region=region)
        for usage in ("ENCRYPT_DECRYPT", "SIGN_VERIFY", "KEY_AGREEMENT"):
            assert error_of(kms.create_key, KeySpec="SM2", KeyUsage=usage) == (
                "UnsupportedOperationException", message)


def test_ml_kem_is_not_offered_in_china_regions(server) -> None:
    kms = server.client("alice", region="cn-northwest-1")
    assert error_of(kms.create_key, KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE") == (
        "UnsupportedOperationException", "KeySpec ML_KEM_768 is not supported in this Region")
    wrapping = kms.create_key()["KeyMetadata"]["KeyId"]
    assert error_of(kms.generate_data_key_pair, KeyId=wrapping, KeyPairSpec="ML_KEM_1024") == (
        "UnsupportedOperationException", "KeyPairSpec ML_KEM_1024 is not supported in this Region")



def test_customer_master_key_spec_is_the_old_name_of_key_spec(kms) -> None:
    meta = kms.create_key(CustomerMasterKeySpec="ECC_NIST_P384", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert meta["KeySpec"] == meta["CustomerMasterKeySpec"] == "ECC_NIST_P384"
    for old_name in ("ECC_NIST_P384", "ECC_NIST_P256"):
        assert error_of(
            kms.create_key, KeySpec="ECC_NIST_P384", CustomerMasterKeySpec=old_name, KeyUsage="SIGN_VERIFY"
        ) == (
            "ValidationException",
            "You cannot specify KeySpec and CustomerMasterKeySpec in the same request. "
            "CustomerMasterKeySpec is deprecated.",
        )

@pytest.mark.parametrize(
    ("spec", "usage"),
    [
        ("RSA_2048", "KEY_AGREEMENT"), ("RSA_4096", "GENERATE_VERIFY_MAC"),
        ("ECC_NIST_P256", "ENCRYPT_DECRYPT"), ("ECC_SECG_P256K1", "GENERATE_VERIFY_MAC"),
        ("ECC_SECG_P256K1", "KEY_AGREEMENT"), ("ECC_NIST_EDWARDS25519", "KEY_AGREEMENT"),
        ("HMAC_512", "SIGN_VERIFY"),
        ("ML_DSA_65", "ENCRYPT_DECRYPT"), ("ML_DSA_87", "KEY_AGREEMENT"), ("ML_KEM_768", "SIGN_VERIFY"),
    ],
)
def test_key_usage_the_key_spec_does_not_offer_is_a_validation_error(kms, spec, usage) -> None:
    assert error_of(kms.create_key, KeySpec=spec, KeyUsage=usage) == (
        "ValidationException", f"KeyUsage {usage} is not compatible with KeySpec {spec}")


@pytest.mark.parametrize("usage", ["SIGN_VERIFY", "GENERATE_VERIFY_MAC", "KEY_AGREEMENT"])
def test_symmetric_default_with_another_key_usage_uses_awss_wording(kms, usage) -> None:
    """The symmetric default spec has its own message (seen from AWS when an SDK dropped KeySpec)."""
    message = (f"The operation failed because the KeyUsage value of the CMK is {usage}. "
               "To perform this operation, the KeyUsage value must be ENCRYPT_DECRYPT.")
    assert error_of(kms.create_key, KeyUsage=usage) == ("ValidationException", message)
    assert error_of(kms.create_key, KeySpec="SYMMETRIC_DEFAULT", KeyUsage=usage) == ("ValidationException", message)

def test_bad_enum_values_use_the_validation_template(server) -> None:
    loose = server.client("alice", parameter_validation=False)
    code, message = error_of(loose.create_key, KeySpec="HMAC_999", KeyUsage="GENERATE_VERIFY_MAC")
    assert code == "ValidationException"
    assert message.startswith(
        "1 validation error detected: Value 'HMAC_999' at 'keySpec' failed to satisfy "
        "constraint: Member must satisfy enum value set: ["
    )
    key_id = loose.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    code, message = error_of(loose.generate_mac, KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_1")
    assert "Value 'HMAC_SHA_1' at 'macAlgorithm' failed to satisfy constraint" in message
    code, message = error_of(loose.create_key, KeySpec="HMAC_256", KeyUsage="MAC")
    assert message.startswith(
        "1 validation error detected: Value 'MAC' at 'keyUsage' failed to satisfy constraint"
    )


@pytest.mark.parametrize("size", ["224", "256", "384", "512"])
def test_generate_and_verify_mac(kms, size) -> None:
    meta = kms.create_key(KeySpec=f"HMAC_{size}", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    algorithm = f"HMAC_SHA_{size}"
    made = kms.generate_mac(KeyId=meta["KeyId"], Message=b"payload", MacAlgorithm=algorithm)
    assert made["KeyId"] == meta["Arn"] and made["MacAlgorithm"] == algorithm
    assert len(made["Mac"]) == hashlib.new(f"sha{size}").digest_size
    checked = kms.verify_mac(KeyId=meta["KeyId"], Message=b"payload", Mac=made["Mac"], MacAlgorithm=algorithm)
    assert checked["MacValid"] is True
    assert error_of(
        kms.verify_mac, KeyId=meta["KeyId"], Message=b"other", Mac=made["Mac"], MacAlgorithm=algorithm
    ) == ("KMSInvalidMacException", "")


def test_verify_mac_dry_run_answers_as_the_call_would_for_a_mac_that_does_not_match(kms) -> None:
    """DryRun "checks if your request will succeed": a VerifyMac that fails KMSInvalidMacException fails
    so with DryRun too; only a MAC that matches is DryRunOperationException."""
    key_id = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    mac = kms.generate_mac(KeyId=key_id, Message=b"payload", MacAlgorithm="HMAC_SHA_256")["Mac"]
    for message, tampered in ((b"other", mac), (b"payload", mac[:-1] + bytes([mac[-1] ^ 1])), (b"payload", mac[:16])):
        assert error_of(
            kms.verify_mac, KeyId=key_id, Message=message, Mac=tampered, MacAlgorithm="HMAC_SHA_256", DryRun=True
        ) == ("KMSInvalidMacException", "")
    assert error_of(
        kms.verify_mac, KeyId=key_id, Message=b"payload", Mac=mac, MacAlgorithm="HMAC_SHA_256", DryRun=True
    ) == ("DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")


def test_mac_errors(kms) -> None:
    key_id = kms.create_key(KeySpec="HMAC_224", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    assert error_of(kms.generate_mac, KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_256") == (
        "InvalidKeyUsageException",
        "Algorithm HMAC_SHA_256 is incompatible with key spec HMAC_224.",
    )
    assert error_of(kms.generate_mac, KeyId="key_id", Message=b"m", MacAlgorithm="HMAC_SHA_256") == (
        "NotFoundException",
        "Invalid keyId 'key_id'",
    )
    symmetric = kms.create_key()["KeyMetadata"]["Arn"]
    assert error_of(kms.generate_mac, KeyId=symmetric, Message=b"m", MacAlgorithm="HMAC_SHA_256") == (
        "InvalidKeyUsageException",
        f"{symmetric} key usage is ENCRYPT_DECRYPT which is not valid for GenerateMac.",
    )
    mac = kms.generate_mac(KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_224")["Mac"]
    kms.disable_key(KeyId=key_id)
    assert (
        error_of(kms.generate_mac, KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_224")[0]
        == "DisabledException"
    )
    assert (
        error_of(kms.verify_mac, KeyId=key_id, Message=b"m", Mac=mac, MacAlgorithm="HMAC_SHA_224")[0]
        == "DisabledException"
    )
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    for call, extra in ((kms.generate_mac, {}), (kms.verify_mac, {"Mac": mac})):
        assert (
            error_of(call, KeyId=key_id, Message=b"m", MacAlgorithm="HMAC_SHA_224", **extra)[0]
            == "KMSInvalidStateException"
        )


@pytest.mark.parametrize(
    ("spec", "curve"),
    [
        ("ECC_NIST_P256", ec.SECP256R1()),
        ("ECC_NIST_P384", ec.SECP384R1()),
        ("ECC_NIST_P521", ec.SECP521R1()),
    ],
)
def test_derive_shared_secret_matches_local_ecdh(kms, spec, curve) -> None:
    meta = kms.create_key(KeySpec=spec, KeyUsage="KEY_AGREEMENT")["KeyMetadata"]
    assert meta["KeyAgreementAlgorithms"] == ["ECDH"]
    described = kms.get_public_key(KeyId=meta["KeyId"])
    assert described["KeyUsage"] == "KEY_AGREEMENT" and described["KeyAgreementAlgorithms"] == ["ECDH"]
    ours = ec.generate_private_key(curve)
    spki = ours.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    derived = kms.derive_shared_secret(KeyId=meta["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=spki)
    assert derived["KeyOrigin"] == "AWS_KMS" and derived["KeyAgreementAlgorithm"] == "ECDH"
    assert derived["KeyId"] == meta["Arn"]
    theirs = serialization.load_der_public_key(described["PublicKey"])
    assert derived["SharedSecret"] == ours.exchange(ec.ECDH(), theirs)


def test_derive_shared_secret_errors(kms, server) -> None:
    assert error_of(kms.create_key, KeySpec="RSA_2048", KeyUsage="KEY_AGREEMENT") == (
        "ValidationException",
        "KeyUsage KEY_AGREEMENT is not compatible with KeySpec RSA_2048",
    )
    key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    assert error_of(
        kms.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=b"not a key"
    ) == ("ValidationException", "")
    loose = server.client("alice", parameter_validation=False)
    code, message = error_of(
        loose.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="DH", PublicKey=b"k"
    )
    assert code == "ValidationException" and message.endswith("Member must satisfy enum value set: [ECDH]")
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert error_of(
        kms.derive_shared_secret, KeyId=signer["KeyId"], KeyAgreementAlgorithm="ECDH", PublicKey=b"k"
    ) == (
        "InvalidKeyUsageException",
        f"{signer['Arn']} key usage is SIGN_VERIFY which is not valid for DeriveSharedSecret.",
    )
    spki = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kms.disable_key(KeyId=key_id)
    assert (
        error_of(kms.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=spki)[0]
        == "DisabledException"
    )
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert (
        error_of(kms.derive_shared_secret, KeyId=key_id, KeyAgreementAlgorithm="ECDH", PublicKey=spki)[0]
        == "KMSInvalidStateException"
    )


@pytest.mark.parametrize(
    ("spec", "private_class"),
    [("ML_KEM_768", mlkem.MLKEM768PrivateKey), ("ML_KEM_1024", mlkem.MLKEM1024PrivateKey)],
)
def test_ml_kem_encapsulate_decapsulate_interop(kms, spec, private_class) -> None:
    meta = kms.create_key(KeySpec=spec, KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]
    described = kms.get_public_key(KeyId=meta["KeyId"])
    assert described["EncapsulationAlgorithms"] == ["ML_KEM"]
    public = serialization.load_der_public_key(described["PublicKey"])
    shared, ciphertext = public.encapsulate()  # local encapsulation ...
    opened = kms.decapsulate(
        KeyId=meta["KeyId"], SharedSecretCiphertextBlob=ciphertext, EncapsulationAlgorithm="ML_KEM"
    )
    assert opened["SharedSecret"] == shared and opened["KeyId"] == meta["Arn"]  # ... service decapsulation
    made = kms.encapsulate(KeyId=meta["KeyId"], EncapsulationAlgorithm="ML_KEM")
    again = kms.decapsulate(
        KeyId=meta["KeyId"],
        SharedSecretCiphertextBlob=made["SharedSecretCiphertextBlob"],
        EncapsulationAlgorithm="ML_KEM",
    )
    assert again["SharedSecret"] == made["SharedSecret"] and len(made["SharedSecret"]) == 32
    # Encapsulate against a data key pair's public key, decapsulate locally with its private key.
    pair = kms.generate_data_key_pair(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], KeyPairSpec=spec)
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)
    assert isinstance(private, private_class)
    pair_shared, pair_ciphertext = serialization.load_der_public_key(pair["PublicKey"]).encapsulate()
    assert private.decapsulate(pair_ciphertext) == pair_shared


def test_ml_kem_implicit_rejection_and_wrong_length(kms) -> None:
    key_id = kms.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["KeyId"]
    made = kms.encapsulate(KeyId=key_id, EncapsulationAlgorithm="ML_KEM")
    blob = made["SharedSecretCiphertextBlob"]
    altered = blob[:-1] + bytes([blob[-1] ^ 1])
    rejected = kms.decapsulate(
        KeyId=key_id, SharedSecretCiphertextBlob=altered, EncapsulationAlgorithm="ML_KEM"
    )
    assert len(rejected["SharedSecret"]) == 32 and rejected["SharedSecret"] != made["SharedSecret"]
    other = kms.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["KeyId"]
    foreign = kms.decapsulate(KeyId=other, SharedSecretCiphertextBlob=blob, EncapsulationAlgorithm="ML_KEM")
    assert foreign["SharedSecret"] != made["SharedSecret"]
    assert error_of(
        kms.decapsulate, KeyId=key_id, SharedSecretCiphertextBlob=blob[:-1], EncapsulationAlgorithm="ML_KEM"
    ) == ("InvalidCiphertextException", "")


def test_ml_kem_key_rules_and_states(kms) -> None:
    code, message = error_of(kms.create_key, KeySpec="ML_KEM_512", KeyUsage="ENCAPSULATE_DECAPSULATE")
    assert code == "UnsupportedOperationException"
    assert message.startswith("KeySpec ML_KEM_512 is not supported by keytrail: no constant-time")
    symmetric = kms.create_key()["KeyMetadata"]["Arn"]
    assert error_of(kms.encapsulate, KeyId=symmetric, EncapsulationAlgorithm="ML_KEM") == (
        "InvalidKeyUsageException",
        f"{symmetric} key usage is ENCRYPT_DECRYPT which is not valid for Encapsulate.",
    )
    key_id = kms.create_key(KeySpec="ML_KEM_1024", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["KeyId"]
    blob = kms.encapsulate(KeyId=key_id, EncapsulationAlgorithm="ML_KEM")["SharedSecretCiphertextBlob"]
    kms.disable_key(KeyId=key_id)
    assert error_of(kms.encapsulate, KeyId=key_id, EncapsulationAlgorithm="ML_KEM")[0] == "DisabledException"
    assert (
        error_of(
            kms.decapsulate, KeyId=key_id, SharedSecretCiphertextBlob=blob, EncapsulationAlgorithm="ML_KEM"
        )[0]
        == "DisabledException"
    )
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert (
        error_of(
            kms.decapsulate, KeyId=key_id, SharedSecretCiphertextBlob=blob, EncapsulationAlgorithm="ML_KEM"
        )[0]
        == "KMSInvalidStateException"
    )
    assert (
        error_of(kms.encapsulate, KeyId=key_id, EncapsulationAlgorithm="ML_KEM")[0]
        == "KMSInvalidStateException"
    )
