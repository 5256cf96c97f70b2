"""Imported key material (Origin EXTERNAL) through boto3 against a live `keytrail serve`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding

from tests.integration.keystores.wrapping import import_material as _import
from tests.integration.keystores.wrapping import wrap
from tests.support.blobs import open_locally
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration

ALGORITHMS = ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256", "RSA_AES_KEY_WRAP_SHA_1", "RSA_AES_KEY_WRAP_SHA_256"]


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error.get("Message", "")


def _server_now(server: KeytrailServer) -> datetime:
    return datetime.fromisoformat(server.advance(0))


def _external_key(kms: Any, **params: Any) -> str:
    return str(kms.create_key(Origin="EXTERNAL", **params)["KeyMetadata"]["KeyId"])


def test_external_key_is_pending_import_until_material_arrives(kms: Any) -> None:
    meta = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"], meta["Origin"]) == ("PendingImport", False, "EXTERNAL")
    assert "CurrentKeyMaterialId" not in meta
    with pytest.raises(ClientError) as excinfo:
        kms.encrypt(KeyId=meta["KeyId"], Plaintext=b"x")
    assert _error(excinfo) == ("KMSInvalidStateException", f"{meta['Arn']} is pending import.")


def test_get_parameters_for_import_on_aws_kms_key_is_unsupported(kms: Any) -> None:
    meta = kms.create_key()["KeyMetadata"]
    with pytest.raises(ClientError) as excinfo:
        kms.get_parameters_for_import(
            KeyId=meta["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
        )
    assert _error(excinfo) == (
        "UnsupportedOperationException",
        f"{meta['Arn']} origin is AWS_KMS which is not valid for this operation.",
    )


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_import_round_trip_matches_local_aes_gcm(kms: Any, algorithm: str) -> None:
    key_id = _external_key(kms)
    material = os.urandom(32)
    imported = _import(kms, key_id, material, algorithm)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled"
    assert meta["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE"
    assert meta["CurrentKeyMaterialId"] == imported["KeyMaterialId"]
    context = {"purpose": "import-test"}
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"bring your own key", EncryptionContext=context)[
        "CiphertextBlob"
    ]
    assert open_locally(material, blob, key_id, context) == b"bring your own key"


@pytest.mark.parametrize("spec", ["RSA_3072", "RSA_4096"])
def test_larger_wrapping_keys_are_offered(kms: Any, spec: str) -> None:
    key_id = _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256", WrappingKeySpec=spec
    )
    public = serialization.load_der_public_key(params["PublicKey"])
    assert isinstance(public, rsa.RSAPublicKey) and public.key_size == int(spec.split("_")[1])
    _import(kms, key_id, os.urandom(32), "RSA_AES_KEY_WRAP_SHA_256", spec)


def test_expiring_model_without_valid_to_is_a_validation_error(kms: Any) -> None:
    key_id = _external_key(kms)
    with pytest.raises(ClientError) as excinfo:
        _import(kms, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES")
    assert _error(excinfo) == (
        "ValidationException",
        "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES",
    )


def test_expiration_model_defaults_to_expires(kms: Any, server: KeytrailServer) -> None:
    # ImportKeyMaterial: "The default is KEY_MATERIAL_EXPIRES", which needs a ValidTo.
    key_id = _external_key(kms)
    material = os.urandom(32)

    def send(**expiry: Any) -> Any:
        params = kms.get_parameters_for_import(
            KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
        return kms.import_key_material(KeyId=key_id, ImportToken=params["ImportToken"],
                                       EncryptedKeyMaterial=wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", material),
                                       **expiry)

    with pytest.raises(ClientError) as excinfo:
        send()
    assert _error(excinfo) == (
        "ValidationException",
        "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES",
    )
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    send(ValidTo=_server_now(server) + timedelta(days=1))
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"


def test_delete_then_reimport_same_material_decrypts_old_ciphertext(kms: Any) -> None:
    key_id = _external_key(kms)
    material = os.urandom(32)
    first = _import(kms, key_id, material)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    deleted = kms.delete_imported_key_material(KeyId=key_id)
    assert deleted["KeyMaterialId"] == first["KeyMaterialId"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as excinfo:
        kms.decrypt(CiphertextBlob=blob)
    assert _error(excinfo)[0] == "KMSInvalidStateException"
    with pytest.raises(ClientError) as excinfo:
        _import(kms, key_id, os.urandom(32))
    assert _error(excinfo)[0] == "IncorrectKeyMaterialException"
    again = _import(kms, key_id, material, "RSA_AES_KEY_WRAP_SHA_1")
    assert again["KeyMaterialId"] == first["KeyMaterialId"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"old"


def test_reimport_into_a_disabled_or_enabled_key_keeps_its_state(kms: Any) -> None:
    # "Key states of AWS KMS keys": ImportKeyMaterial on an Enabled or Disabled key succeeds when
    # the key has imported material (note [9]). Which state a Disabled key is in afterwards is not
    # documented; keytrail leaves it Disabled. DeleteImportedKeyMaterial makes any key but one
    # pending deletion PendingImport, and an import into a PendingImport key enables it.
    key_id = _external_key(kms)
    material = os.urandom(32)
    _import(kms, key_id, material)
    kms.disable_key(KeyId=key_id)
    _import(kms, key_id, material)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"]) == ("Disabled", False)
    kms.enable_key(KeyId=key_id)
    _import(kms, key_id, material)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.disable_key(KeyId=key_id)
    kms.delete_imported_key_material(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    _import(kms, key_id, material)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["Enabled"]) == ("Enabled", True)


def _import_error(kms: Any, key_id: str, params: dict[str, Any]) -> tuple[str, str]:
    """The error of importing fresh material into `key_id` with the import parameters `params`."""
    with pytest.raises(ClientError) as excinfo:
        kms.import_key_material(
            KeyId=key_id,
            ImportToken=params["ImportToken"],
            EncryptedKeyMaterial=wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    return _error(excinfo)


def test_import_token_of_another_key_is_invalid(kms: Any) -> None:
    key_a, key_b = _external_key(kms), _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_a, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    assert _import_error(kms, key_b, params)[0] == "InvalidImportTokenException"


@pytest.mark.parametrize("valid_to", [b"\xff" * 8, (2**63 - 1).to_bytes(8, "big")])
def test_forged_token_with_a_valid_to_past_year_9999_is_invalid(kms: Any, valid_to: bytes) -> None:
    """A token names its parameters and carries its ValidTo: one whose ValidTo is no date (a forged
    or corrupted token) was a KMSInternalException (500) once its parameters were not found."""
    key_id = _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    forged = params["ImportToken"][:5] + os.urandom(32) + valid_to  # format and length of a real token
    assert len(forged) == len(params["ImportToken"])
    assert _import_error(kms, key_id, {**params, "ImportToken": forged}) == (
        "InvalidImportTokenException", "The import token is invalid."
    )


def test_material_wrapped_under_another_key_is_invalid_ciphertext(kms: Any) -> None:
    key_id = _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    stranger = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(ClientError) as excinfo:
        kms.import_key_material(
            KeyId=key_id,
            ImportToken=params["ImportToken"],
            EncryptedKeyMaterial=wrap(stranger, "RSAES_OAEP_SHA_256", os.urandom(32)),
            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
        )
    assert _error(excinfo)[0] == "InvalidCiphertextException"


def test_symmetric_material_of_wrong_length_is_incorrect(kms: Any) -> None:
    with pytest.raises(ClientError) as excinfo:
        _import(kms, _external_key(kms), os.urandom(16))
    assert _error(excinfo)[0] == "IncorrectKeyMaterialException"


def test_hmac_material_imports_and_macs_like_local_hmac(kms: Any) -> None:
    key_id = _external_key(kms, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    material = os.urandom(48)
    _import(kms, key_id, material)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["MacAlgorithms"]) == ("Enabled", ["HMAC_SHA_256"])
    mac = kms.generate_mac(KeyId=key_id, MacAlgorithm="HMAC_SHA_256", Message=b"message")["Mac"]
    assert mac == hmac.new(material, b"message", hashlib.sha256).digest()


def _pkcs8(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,  # type: ignore[no-any-return]
        serialization.NoEncryption(),
    )


def test_rsa_private_key_imports_only_with_two_step_wrap_and_signs(kms: Any) -> None:
    key_id = _external_key(kms, KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as excinfo:
        kms.get_parameters_for_import(
            KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_4096"
        )
    assert _error(excinfo)[0] == "ValidationException"
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _import(kms, key_id, _pkcs8(private), "RSA_AES_KEY_WRAP_SHA_256", "RSA_4096")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    signature = kms.sign(KeyId=key_id, Message=b"signed", SigningAlgorithm="RSASSA_PKCS1_V1_5_SHA_256")
    private.public_key().verify(signature["Signature"], b"signed", asym_padding.PKCS1v15(), hashes.SHA256())


def test_ecc_key_of_another_curve_is_incorrect_material(kms: Any) -> None:
    key_id = _external_key(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as excinfo:
        _import(kms, key_id, _pkcs8(ec.generate_private_key(ec.SECP384R1())), "RSA_AES_KEY_WRAP_SHA_256")
    assert _error(excinfo)[0] == "IncorrectKeyMaterialException"
    _import(kms, key_id, _pkcs8(ec.generate_private_key(ec.SECP256R1())), "RSA_AES_KEY_WRAP_SHA_256")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


@pytest.mark.parametrize("algorithm", ["RSAES_OAEP_SHA_1", "RSAES_OAEP_SHA_256"])
def test_p521_material_is_not_wrapped_directly_under_an_rsa_2048_key(kms: Any, algorithm: str) -> None:
    # GetParametersForImport (WrappingAlgorithm): "You cannot use the RSAES_OAEP_SHA_* wrapping
    # algorithm with the RSA_2048 wrapping key spec to wrap ECC_NIST_P521 key material".
    key_id = _external_key(kms, KeySpec="ECC_NIST_P521", KeyUsage="SIGN_VERIFY")
    with pytest.raises(ClientError) as excinfo:
        kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm=algorithm, WrappingKeySpec="RSA_2048")
    assert _error(excinfo)[0] == "ValidationException"
    _import(kms, key_id, _pkcs8(ec.generate_private_key(ec.SECP521R1())), algorithm, "RSA_3072")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def test_material_expires_with_the_clock_and_comes_back_on_reimport(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key_id = _external_key(kms)
    material = os.urandom(32)
    valid_to = _server_now(fresh_server) + timedelta(days=1)
    _import(kms, key_id, material, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert abs(meta["ValidTo"].timestamp() - valid_to.timestamp()) < 1
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"before expiry")["CiphertextBlob"]
    fresh_server.advance(2 * 86400)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as excinfo:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert _error(excinfo)[0] == "KMSInvalidStateException"
    _import(kms, key_id, material)
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before expiry"


def test_import_token_expires_after_24_hours(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key_id = _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    assert params["ParametersValidTo"] - _server_now(fresh_server) <= timedelta(hours=24)
    fresh_server.advance(24 * 3600 + 1)
    assert _import_error(kms, key_id, params)[0] == "ExpiredImportTokenException"


def test_import_token_stays_expired_after_its_parameters_are_purged(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key_id = _external_key(kms)
    params = kms.get_parameters_for_import(
        KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    fresh_server.advance(3 * 86400)
    # The next GetParametersForImport purges parameters that expired over a day ago.
    kms.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048")
    assert _import_error(kms, key_id, params) == ("ExpiredImportTokenException", "The import token has expired.")


def test_imported_bytes_never_reach_the_store_file(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    material = os.urandom(32)
    key_id = _external_key(kms)
    _import(kms, key_id, material)
    assert kms.encrypt(KeyId=key_id, Plaintext=b"x")["KeyId"].endswith(key_id)
    fresh_server.stop()
    stored = b"".join(path.read_bytes() for path in fresh_server.data_dir.rglob("*") if path.is_file())
    assert key_id.encode() in stored  # the key is there...
    for form in (material, material.hex().encode(), base64.b64encode(material)):
        assert form not in stored  # ...its material is not, in any encoding
    fresh_server.start()
    assert (
        kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=key_id, Plaintext=b"y")["CiphertextBlob"])["Plaintext"]
        == b"y"
    )


def test_key_policy_can_require_expiring_material(server: KeytrailServer) -> None:
    kms = server.client("alice")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::111122223333:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "Material must expire",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:ImportKeyMaterial",
                "Resource": "*",
                "Condition": {"StringEquals": {"kms:ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}},
            },
        ],
    }
    key_id = _external_key(kms, Policy=json.dumps(policy))
    with pytest.raises(ClientError) as excinfo:
        _import(kms, key_id, os.urandom(32))
    assert _error(excinfo)[0] == "AccessDeniedException"
    valid_to = _server_now(server) + timedelta(days=30)
    _import(kms, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)


def test_list_key_rotations_of_imported_material_names_its_import_state_and_expiry(
    kms: Any, server: KeytrailServer,
) -> None:
    # RotationsListEntry: ImportState and ExpirationModel are present for symmetric keys of
    # EXTERNAL origin, and ValidTo with them when the material expires.
    key_id = _external_key(kms)
    valid_to = (_server_now(server) + timedelta(days=1)).replace(microsecond=0)
    imported = _import(kms, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    [entry] = kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial="ALL_KEY_MATERIAL")["Rotations"]
    assert entry["KeyMaterialId"] == imported["KeyMaterialId"]
    assert (entry["ImportState"], entry["KeyMaterialState"]) == ("IMPORTED", "CURRENT")
    assert entry["ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert entry["ValidTo"] == valid_to
    assert "RotationDate" not in entry and "RotationType" not in entry


def test_cancelling_deletion_of_a_key_without_material_leaves_it_pending_import(kms: Any) -> None:
    # A key of EXTERNAL origin holding no material is PendingImport ("the KMS key can't be used");
    # cancelling its deletion must not make it Disabled, from where EnableKey would report an
    # Enabled key that has nothing to encrypt with. One with material is Disabled, as any key.
    meta = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=meta["KeyId"])
    assert kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"
    with pytest.raises(ClientError) as excinfo:
        kms.enable_key(KeyId=meta["KeyId"])
    assert _error(excinfo) == ("KMSInvalidStateException", f"{meta['Arn']} is pending import.")
    _import(kms, meta["KeyId"], os.urandom(32))
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=meta["KeyId"])
    assert kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"] == "Disabled"


def test_deleting_material_of_a_key_pending_deletion_keeps_it_pending_deletion(kms: Any) -> None:
    # DeleteImportedKeyMaterial (API reference): "When the specified KMS key is in the
    # PendingDeletion state, this operation does not change the KMS key's state."
    meta = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    imported = _import(kms, meta["KeyId"], os.urandom(32))
    kms.schedule_key_deletion(KeyId=meta["KeyId"], PendingWindowInDays=7)
    deleted = kms.delete_imported_key_material(KeyId=meta["KeyId"])
    assert (deleted["KeyId"], deleted["KeyMaterialId"]) == (meta["Arn"], imported["KeyMaterialId"])
    assert kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"] == "PendingDeletion"
    with pytest.raises(ClientError) as excinfo:
        kms.get_parameters_for_import(KeyId=meta["KeyId"], WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                      WrappingKeySpec="RSA_2048")
    assert _error(excinfo) == ("KMSInvalidStateException", f"{meta['Arn']} is pending deletion.")
    kms.cancel_key_deletion(KeyId=meta["KeyId"])
    assert kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"] == "PendingImport"


def _expirations(server: KeytrailServer) -> dict[str, float]:
    """Key ARN → its imported material's ValidTo, from GET /metrics."""
    text = server.get("/metrics")[1].decode()
    found = re.findall(r'^keytrail_kms_key_material_expiration_timestamp_seconds\{key="([^"]+)"\} (\S+)$', text,
                       flags=re.M)
    return {arn: float(value) for arn, value in found}


def test_metrics_tell_when_imported_material_expires_until_it_has(fresh_server: KeytrailServer) -> None:
    """AWS's SecondsUntilKeyMaterialExpiration, which KeytrailKeyMaterialExpiring alerts on: the
    runbook's re-import with a later ValidTo moves it; expired material, or that of a key scheduled
    for deletion (no call to break), leaves no sample."""
    kms = fresh_server.client("alice")
    expiring, lasting, deleted = _external_key(kms), _external_key(kms), _external_key(kms)
    material = os.urandom(32)
    now = _server_now(fresh_server)
    _import(kms, expiring, material, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=now + timedelta(days=3))
    _import(kms, lasting, os.urandom(32))
    _import(kms, deleted, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=now + timedelta(days=3))
    kms.schedule_key_deletion(KeyId=deleted, PendingWindowInDays=30)
    arn = kms.describe_key(KeyId=expiring)["KeyMetadata"]["Arn"]
    assert _expirations(fresh_server) == {arn: pytest.approx((now + timedelta(days=3)).timestamp(), abs=1)}
    _import(kms, expiring, material, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=now + timedelta(days=30))
    later = (now + timedelta(days=30)).timestamp()
    assert kms.describe_key(KeyId=expiring)["KeyMetadata"]["ValidTo"].timestamp() == pytest.approx(later, abs=1)
    assert _expirations(fresh_server) == {arn: pytest.approx(later, abs=1)}
    fresh_server.advance(31 * 86400)
    assert kms.describe_key(KeyId=expiring)["KeyMetadata"]["KeyState"] == "PendingImport"
    assert _expirations(fresh_server) == {}
