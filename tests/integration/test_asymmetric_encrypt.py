"""RSA ENCRYPT_DECRYPT keys and data key pairs through boto3 (kms-anchors §3d items 12, 16, 21,
30, 31): OAEP limits, ciphertext made outside the service, ReEncrypt, GenerateDataKeyPair."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, mlkem, padding, rsa

pytestmark = pytest.mark.integration

_LIMITS = {"RSA_2048": (214, 190), "RSA_3072": (342, 318), "RSA_4096": (470, 446)}
_OAEP = {"RSAES_OAEP_SHA_1": hashes.SHA1, "RSAES_OAEP_SHA_256": hashes.SHA256}


def error_of(call: Any, **params: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value.response["Error"]["Code"], caught.value.response["Error"].get("Message", "")


@pytest.fixture(scope="module")
def rsa_keys(server) -> dict[str, dict[str, Any]]:
    kms = server.client("alice")
    return {spec: kms.create_key(KeySpec=spec, KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"] for spec in _LIMITS}


@pytest.mark.parametrize("spec", list(_LIMITS))
def test_oaep_plaintext_limits_and_message(kms, rsa_keys, spec) -> None:
    meta = rsa_keys[spec]
    assert meta["EncryptionAlgorithms"] == ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"]
    for algorithm, limit in zip(_OAEP, _LIMITS[spec], strict=True):
        blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"p" * limit, EncryptionAlgorithm=algorithm)
        assert blob["EncryptionAlgorithm"] == algorithm and blob["KeyId"] == meta["Arn"]
        plain = kms.decrypt(
            KeyId=meta["KeyId"], CiphertextBlob=blob["CiphertextBlob"], EncryptionAlgorithm=algorithm
        )
        assert plain["Plaintext"] == b"p" * limit and "KeyMaterialId" not in plain
        assert error_of(
            kms.encrypt, KeyId=meta["KeyId"], Plaintext=b"p" * (limit + 1), EncryptionAlgorithm=algorithm
        ) == (
            "ValidationException",
            f"Algorithm {algorithm} and key spec {spec} cannot encrypt data larger than {limit} bytes.",
        )


@pytest.mark.parametrize("algorithm", list(_OAEP))
def test_ciphertext_made_with_the_public_key_decrypts_in_the_service(kms, rsa_keys, algorithm) -> None:
    meta = rsa_keys["RSA_2048"]
    public = serialization.load_der_public_key(kms.get_public_key(KeyId=meta["KeyId"])["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey)
    hash_type = _OAEP[algorithm]
    blob = public.encrypt(b"made outside", padding.OAEP(padding.MGF1(hash_type()), hash_type(), None))
    plain = kms.decrypt(KeyId=meta["Arn"], CiphertextBlob=blob, EncryptionAlgorithm=algorithm)
    assert plain["Plaintext"] == b"made outside" and plain["EncryptionAlgorithm"] == algorithm


def test_rsa_decrypt_failures(kms, rsa_keys) -> None:
    meta = rsa_keys["RSA_2048"]
    blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256")[
        "CiphertextBlob"
    ]
    assert error_of(
        kms.decrypt, KeyId=meta["KeyId"], CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_1"
    ) == ("InvalidCiphertextException", "")
    # Without an EncryptionAlgorithm (SYMMETRIC_DEFAULT) AWS reads the blob as symmetric ciphertext
    # before it compares the algorithm with the key, and Encrypt refuses the default algorithm.
    assert error_of(kms.decrypt, KeyId=meta["KeyId"], CiphertextBlob=blob) == ("InvalidCiphertextException", "")
    assert error_of(kms.encrypt, KeyId=meta["KeyId"], Plaintext=b"x") == (
        "InvalidKeyUsageException", "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    symmetric = kms.create_key()["KeyMetadata"]["KeyId"]
    assert error_of(kms.encrypt, KeyId=symmetric, Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1") == (
        "InvalidKeyUsageException", "Algorithm RSAES_OAEP_SHA_1 is incompatible with key spec SYMMETRIC_DEFAULT.")
    context_refused = ("ValidationException",
                       "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs.")
    assert error_of(kms.encrypt, KeyId=meta["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_256",
                    EncryptionContext={"app": "x"}) == context_refused
    assert error_of(kms.decrypt, KeyId=meta["KeyId"], CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256",
                    EncryptionContext={"app": "x"}) == context_refused
    recipient = {"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256", "AttestationDocument": b"attestation"}
    assert error_of(
        kms.decrypt, KeyId=meta["KeyId"], CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_256",
        Recipient=recipient,
    ) == ("UnsupportedOperationException", "Recipient (attested enclave) requests are not supported by keytrail.")


def test_an_rsa_algorithm_with_a_symmetric_key_id_is_invalid_key_usage_whatever_the_ciphertext(
        kms, rsa_keys) -> None:
    # Decrypt: InvalidKeyUsageException when the algorithm "is incompatible with the type of key
    # material in the KMS key (KeySpec)"; the named key answers it before the blob is read.
    symmetric = kms.create_key()["KeyMetadata"]["KeyId"]
    sym_blob = kms.encrypt(KeyId=symmetric, Plaintext=b"a")["CiphertextBlob"]
    rsa_blob = kms.encrypt(KeyId=rsa_keys["RSA_2048"]["KeyId"], Plaintext=b"a",
                           EncryptionAlgorithm="RSAES_OAEP_SHA_256")["CiphertextBlob"]
    refused = ("InvalidKeyUsageException",
               "Algorithm RSAES_OAEP_SHA_256 is incompatible with key spec SYMMETRIC_DEFAULT.")
    for blob in (sym_blob, rsa_blob):
        assert error_of(kms.decrypt, CiphertextBlob=blob, KeyId=symmetric,
                        EncryptionAlgorithm="RSAES_OAEP_SHA_256") == refused
        assert error_of(kms.re_encrypt, CiphertextBlob=blob, SourceKeyId=symmetric, DestinationKeyId=symmetric,
                        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256") == refused


def test_rsa_decrypt_dry_run_ignoring_the_ciphertext_checks_the_key_and_algorithm(kms, rsa_keys) -> None:
    key_id = rsa_keys["RSA_2048"]["KeyId"]
    ignore = {"KeyId": key_id, "CiphertextBlob": b"x", "DryRun": True, "DryRunModifiers": ["IGNORE_CIPHERTEXT"]}
    assert error_of(kms.decrypt, EncryptionAlgorithm="RSAES_OAEP_SHA_256", **ignore) == (
        "DryRunOperationException", "The request would have succeeded, but the DryRun option is set.")
    assert error_of(kms.decrypt, **ignore) == (
        "InvalidKeyUsageException",
        "Algorithm SYMMETRIC_DEFAULT is incompatible with key spec RSA_2048.")
    # As the call without DryRun answers, whatever the ciphertext.
    assert error_of(kms.decrypt, EncryptionAlgorithm="RSAES_OAEP_SHA_256", EncryptionContext={"purpose": "test"},
                    **ignore) == (
        "ValidationException", "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs.")


def test_re_encrypt_from_rsa_and_to_a_signing_key(kms, rsa_keys) -> None:
    meta = rsa_keys["RSA_3072"]
    blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"move me", EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    target = kms.create_key()["KeyMetadata"]
    moved = kms.re_encrypt(
        CiphertextBlob=blob["CiphertextBlob"],
        SourceKeyId=meta["KeyId"],
        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
        DestinationKeyId=target["KeyId"],
    )
    assert moved["SourceKeyId"] == meta["Arn"] and moved["KeyId"] == target["Arn"]
    assert moved["SourceEncryptionAlgorithm"] == "RSAES_OAEP_SHA_256"
    assert moved["DestinationEncryptionAlgorithm"] == "SYMMETRIC_DEFAULT"
    assert kms.decrypt(CiphertextBlob=moved["CiphertextBlob"])["Plaintext"] == b"move me"
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    code, message = error_of(
        kms.re_encrypt,
        CiphertextBlob=blob["CiphertextBlob"],
        SourceKeyId=meta["KeyId"],
        SourceEncryptionAlgorithm="RSAES_OAEP_SHA_256",
        DestinationKeyId=signer["KeyId"],
    )
    assert (code, message) == (
        "InvalidKeyUsageException",
        f"{signer['Arn']} key usage is SIGN_VERIFY which is not valid for ReEncrypt.",
    )


def test_encrypt_with_a_signing_key_is_invalid_key_usage(kms) -> None:
    signer = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    assert error_of(
        kms.encrypt, KeyId=signer["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1"
    ) == (
        "InvalidKeyUsageException",
        f"{signer['Arn']} key usage is SIGN_VERIFY which is not valid for Encrypt.",
    )


_PAIRS = {
    "RSA_2048": rsa.RSAPrivateKey,
    "RSA_3072": rsa.RSAPrivateKey,
    "RSA_4096": rsa.RSAPrivateKey,
    "ECC_NIST_P256": ec.EllipticCurvePrivateKey,
    "ECC_NIST_P384": ec.EllipticCurvePrivateKey,
    "ECC_NIST_P521": ec.EllipticCurvePrivateKey,
    "ECC_SECG_P256K1": ec.EllipticCurvePrivateKey,
    "ECC_NIST_EDWARDS25519": ed25519.Ed25519PrivateKey,
    "ML_KEM_768": mlkem.MLKEM768PrivateKey,
    "ML_KEM_1024": mlkem.MLKEM1024PrivateKey,
}


@pytest.mark.parametrize("spec", list(_PAIRS))
def test_generate_data_key_pair_for_every_spec(kms, spec) -> None:
    wrapping = kms.create_key()["KeyMetadata"]
    context = {"purpose": "pair"}
    pair = kms.generate_data_key_pair(KeyId=wrapping["KeyId"], KeyPairSpec=spec, EncryptionContext=context)
    assert pair["KeyId"] == wrapping["Arn"] and pair["KeyPairSpec"] == spec
    private = serialization.load_der_private_key(pair["PrivateKeyPlaintext"], None)  # PKCS#8 DER
    assert isinstance(private, _PAIRS[spec])
    assert (
        private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        == pair["PublicKey"]
    )
    opened = kms.decrypt(CiphertextBlob=pair["PrivateKeyCiphertextBlob"], EncryptionContext=context)
    assert opened["Plaintext"] == pair["PrivateKeyPlaintext"]
    bare = kms.generate_data_key_pair_without_plaintext(KeyId=wrapping["KeyId"], KeyPairSpec=spec)
    assert "PrivateKeyPlaintext" not in bare and bare["KeyPairSpec"] == spec
    assert set(bare) >= {"PrivateKeyCiphertextBlob", "PublicKey", "KeyId"}


def test_ml_kem_data_key_pairs_hold_the_private_key_as_its_seed(kms) -> None:
    """GenerateDataKeyPair: the ML-KEM PKCS#8 PrivateKeyInfo "contains the private key in seed
    format", so its length is "the same for all ML-KEM key pair specs"."""
    wrapping = kms.create_key()["KeyMetadata"]["KeyId"]
    sizes = set()
    for spec in ("ML_KEM_768", "ML_KEM_1024"):
        private = kms.generate_data_key_pair(KeyId=wrapping, KeyPairSpec=spec)["PrivateKeyPlaintext"]
        seed = serialization.load_der_private_key(private, None).private_bytes_raw()
        assert len(seed) == 64 and private.endswith(seed)
        sizes.add(len(private))
    assert len(sizes) == 1


def test_data_key_pair_rules(kms) -> None:
    wrapping = kms.create_key()["KeyMetadata"]["KeyId"]
    assert error_of(kms.generate_data_key_pair, KeyId=wrapping, KeyPairSpec="RSA_2048", DryRun=True) == (
        "DryRunOperationException",
        "The request would have succeeded, but the DryRun option is set.",
    )
    assert error_of(kms.generate_data_key_pair, KeyId=wrapping, KeyPairSpec="SM2") == (
        "UnsupportedOperationException", "KeyPairSpec SM2 is not supported in this Region")
    # The member the caller sent, as for SM2: GenerateDataKeyPair takes no KeySpec.
    code, message = error_of(kms.generate_data_key_pair, KeyId=wrapping, KeyPairSpec="ML_KEM_512")
    assert code == "UnsupportedOperationException"
    assert message.startswith("KeyPairSpec ML_KEM_512 is not supported by keytrail: no constant-time")
    rsa_key = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    assert (
        error_of(kms.generate_data_key_pair, KeyId=rsa_key, KeyPairSpec="ECC_NIST_P256")[0]
        == "InvalidKeyUsageException"
    )
    kms.disable_key(KeyId=wrapping)
    for call in (kms.generate_data_key_pair, kms.generate_data_key_pair_without_plaintext):
        assert error_of(call, KeyId=wrapping, KeyPairSpec="ECC_NIST_P256")[0] == "DisabledException"
    kms.schedule_key_deletion(KeyId=wrapping, PendingWindowInDays=7)
    for call in (kms.generate_data_key_pair, kms.generate_data_key_pair_without_plaintext):
        assert error_of(call, KeyId=wrapping, KeyPairSpec="ECC_NIST_P256")[0] == "KMSInvalidStateException"


def test_sm2_data_key_pair_in_a_china_region_is_not_supported_by_keytrail(server) -> None:
    kms = server.client("alice", region="cn-north-1")
    wrapping = kms.create_key()["KeyMetadata"]["KeyId"]
    for call in (kms.generate_data_key_pair, kms.generate_data_key_pair_without_plaintext):
        assert error_of(call, KeyId=wrapping, KeyPairSpec="SM2") == (
            "UnsupportedOperationException", "KeyPairSpec SM2 is not supported by keytrail.")


def test_rsa_keys_in_disabled_and_pending_deletion_state(kms) -> None:
    meta = kms.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]
    blob = kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1")[
        "CiphertextBlob"
    ]
    kms.disable_key(KeyId=meta["KeyId"])
    assert error_of(
        kms.decrypt, KeyId=meta["KeyId"], CiphertextBlob=blob, EncryptionAlgorithm="RSAES_OAEP_SHA_1"
    ) == ("DisabledException", f"{meta['Arn']} is disabled.")
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    assert error_of(
        kms.encrypt, KeyId=meta["KeyId"], Plaintext=b"x", EncryptionAlgorithm="RSAES_OAEP_SHA_1"
    ) == ("KMSInvalidStateException", f"{meta['Arn']} is pending deletion.")


def test_dry_run_encrypt_under_rsa_refuses_what_the_call_would_refuse(kms, rsa_keys) -> None:
    meta = rsa_keys["RSA_2048"]
    too_long = {"KeyId": meta["KeyId"], "Plaintext": b"p" * 191, "EncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    with_context = {"KeyId": meta["KeyId"], "Plaintext": b"p", "EncryptionAlgorithm": "RSAES_OAEP_SHA_256",
                    "EncryptionContext": {"purpose": "test"}}
    for request in (too_long, with_context):
        assert error_of(kms.encrypt, DryRun=True, **request) == error_of(kms.encrypt, **request)
    assert error_of(kms.encrypt, DryRun=True, **too_long) == (
        "ValidationException",
        "Algorithm RSAES_OAEP_SHA_256 and key spec RSA_2048 cannot encrypt data larger than 190 bytes.")


def test_dry_run_re_encrypt_to_rsa_refuses_what_the_call_would_refuse(kms, rsa_keys) -> None:
    meta = rsa_keys["RSA_2048"]
    source = kms.create_key()["KeyMetadata"]
    blob = kms.encrypt(KeyId=source["KeyId"], Plaintext=b"p" * 191)["CiphertextBlob"]
    too_long = {"CiphertextBlob": blob, "DestinationKeyId": meta["KeyId"],
                "DestinationEncryptionAlgorithm": "RSAES_OAEP_SHA_256"}
    small = kms.encrypt(KeyId=source["KeyId"], Plaintext=b"p")["CiphertextBlob"]
    with_context = {**too_long, "CiphertextBlob": small, "DestinationEncryptionContext": {"purpose": "test"}}
    for request in (too_long, with_context):
        assert error_of(kms.re_encrypt, DryRun=True, **request) == error_of(kms.re_encrypt, **request)
    assert error_of(kms.re_encrypt, DryRun=True, **with_context) == (
        "ValidationException", "EncryptionContext is not supported when encrypting/decrypting with asymmetric CMKs.")
    ignoring = {**with_context, "SourceKeyId": source["KeyId"], "DryRunModifiers": ["IGNORE_CIPHERTEXT"]}
    assert error_of(kms.re_encrypt, DryRun=True, **ignoring) == error_of(kms.re_encrypt, DryRun=True, **with_context)
    from_rsa = {"CiphertextBlob": b"x", "SourceKeyId": meta["KeyId"], "SourceEncryptionAlgorithm": "RSAES_OAEP_SHA_1",
                "SourceEncryptionContext": {"purpose": "test"}, "DestinationKeyId": source["KeyId"]}
    assert error_of(kms.re_encrypt, DryRun=True, DryRunModifiers=["IGNORE_CIPHERTEXT"], **from_rsa) == (
        error_of(kms.re_encrypt, **from_rsa))
