"""Every answer's JSON is typed as the KMS model says, as the strict SDKs read it.

botocore forgives a wire type that is off (a timestamp sent as a string, an integer as `8.0`): the
AWS SDK for Java 2.x does not. Its JSON unmarshaller reads an integer member with
`Integer.parseInt` of the token's text, a timestamp with `DateUtils.parseUnixTimestampInstant`
(epoch seconds, at most 20 characters), a blob as base64 of a string, and a boolean token only as
a boolean; anything else is an `SdkClientException` ("Unable to unmarshall response") on a call that
succeeded. So the answer of each operation a Java service calls is checked here, token by token, as
`serve` sent it, against the output shape of the model the SDKs are generated from.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import pytest
from botocore.model import OperationModel, Shape
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding

from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

_JAVA_TIMESTAMP_CHARS = 20  # software.amazon.awssdk.utils.DateUtils refuses a longer epoch-seconds token


class _Number(float):
    """A JSON number read from an answer, with its text as sent (the Java SDK parses the text)."""

    text: str

    @classmethod
    def read(cls, text: str) -> _Number:
        number = cls(text)
        number.text = text
        return number


def _wire_problems(shape: Shape, value: Any, path: str) -> list[str]:
    """Where `value` (one member of an answer, as sent) is not what `shape` says it is."""
    if value is None:
        return []
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is no object"]
        return [
            problem
            for name, item in value.items()
            for problem in (
                _wire_problems(shape.members[name], item, f"{path}.{name}")
                if name in shape.members
                else [f"{path}.{name}: not in the model"]
            )
        ]
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: {value!r} is no list"]
        return [p for index, item in enumerate(value) for p in _wire_problems(shape.member, item, f"{path}[{index}]")]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: {value!r} is no object"]
        return [p for key, item in value.items() for p in _wire_problems(shape.value, item, f"{path}[{key}]")]
    return _scalar_problems(kind, value, path)


def _scalar_problems(kind: str, value: Any, path: str) -> list[str]:
    if kind == "timestamp":
        text = value.text if isinstance(value, _Number) else str(value)
        is_number = isinstance(value, _Number | int) and not isinstance(value, bool)
        return [] if is_number and len(text) <= _JAVA_TIMESTAMP_CHARS else [f"{path}: timestamp {value!r}"]
    if kind in ("integer", "long"):
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: {kind} {value!r}"]
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: boolean {value!r}"]
    if kind in ("string", "blob"):
        return [] if isinstance(value, str) else [f"{path}: {kind} {value!r}"]
    return [f"{path}: unexpected type {kind}"]


class _AnswerChecker:
    """Registered on a boto3 client: checks each successful answer's body as it came."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.checked: set[str] = set()

    def __call__(self, http_response: Any, model: OperationModel, **_: Any) -> None:
        if http_response.status_code != 200:
            return
        self.checked.add(model.name)
        body = http_response.content
        if model.output_shape is None or not body:
            return
        answer = json.loads(body, parse_float=_Number.read)
        self.problems += _wire_problems(model.output_shape, answer, model.name)


def test_the_checker_finds_what_the_java_sdk_refuses() -> None:
    """The check itself: a timestamp as a string or past 20 characters, an integer written as a
    float, a boolean as a string, a member the model does not name."""
    from botocore.session import get_session

    output = get_session().get_service_model("kms").operation_model("DescribeKey").output_shape
    bad = json.loads(
        '{"KeyMetadata": {"KeyId": "k", "CreationDate": "2026-12-07T00:00:00Z",'
        ' "DeletionDate": 1796666036.6850001234567, "PendingDeletionWindowInDays": 7.0,'
        ' "Enabled": "true", "Nope": 1}}',
        parse_float=_Number.read,
    )
    assert [p.split(":")[0] for p in _wire_problems(output, bad, "DescribeKey")] == [
        "DescribeKey.KeyMetadata.CreationDate",
        "DescribeKey.KeyMetadata.DeletionDate",
        "DescribeKey.KeyMetadata.PendingDeletionWindowInDays",
        "DescribeKey.KeyMetadata.Enabled",
        "DescribeKey.KeyMetadata.Nope",
    ]
    good = json.loads(
        '{"KeyMetadata": {"KeyId": "k", "CreationDate": 1796666036.685, "Enabled": true}}', parse_float=_Number.read
    )
    assert _wire_problems(output, good, "DescribeKey") == []


def _exercise_keys(kms: Any) -> None:
    """Create keys of each kind, and the lifecycle, alias, grant, tag, policy and rotation calls."""
    key = kms.create_key(Description="wire", Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]["KeyId"]
    for spec, usage in [
        ("RSA_2048", "ENCRYPT_DECRYPT"),
        ("ECC_NIST_P256", "SIGN_VERIFY"),
        ("HMAC_256", "GENERATE_VERIFY_MAC"),
        ("ML_DSA_44", "SIGN_VERIFY"),
        ("ECC_NIST_EDWARDS25519", "SIGN_VERIFY"),
        ("ML_KEM_768", "ENCAPSULATE_DECAPSULATE"),
    ]:
        kms.describe_key(KeyId=kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"])
    kms.create_alias(AliasName="alias/wire-types", TargetKeyId=key)
    grant = kms.create_grant(
        KeyId=key,
        GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/bob",
        Operations=["Decrypt"],
        RetiringPrincipal=f"arn:aws:iam::{ACCOUNT}:user/alice",
        Constraints={"EncryptionContextSubset": {"app": "wire"}},
    )
    kms.list_grants(KeyId=key)
    kms.list_retirable_grants(RetiringPrincipal=f"arn:aws:iam::{ACCOUNT}:user/alice")
    kms.retire_grant(GrantToken=grant["GrantToken"])
    kms.tag_resource(KeyId=key, Tags=[{"TagKey": "x", "TagValue": "y"}])
    kms.list_resource_tags(KeyId=key)
    kms.put_key_policy(KeyId=key, PolicyName="default", Policy=kms.get_key_policy(KeyId=key)["Policy"])
    kms.list_key_policies(KeyId=key)
    kms.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    kms.get_key_rotation_status(KeyId=key)
    kms.rotate_key_on_demand(KeyId=key)
    kms.list_key_rotations(KeyId=key)
    for operation in ("list_keys", "list_aliases"):
        for _ in kms.get_paginator(operation).paginate(PaginationConfig={"PageSize": 2}):
            pass
    doomed = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    kms.describe_key(KeyId=doomed)  # DeletionDate
    kms.cancel_key_deletion(KeyId=doomed)
    kms.get_key_last_usage(KeyId=key)
    kms.describe_custom_key_stores()
    primary = kms.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    kms.replicate_key(KeyId=primary, ReplicaRegion="us-west-2")


def _exercise_crypto(kms: Any) -> None:
    """Each cryptographic operation, on keys of its kind."""
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=key, Plaintext=b"wire", EncryptionContext={"app": "wire"})["CiphertextBlob"]
    kms.decrypt(CiphertextBlob=blob, EncryptionContext={"app": "wire"}, GrantTokens=[])
    kms.re_encrypt(CiphertextBlob=blob, SourceEncryptionContext={"app": "wire"}, DestinationKeyId=key)
    kms.generate_data_key(KeyId=key, KeySpec="AES_256")
    kms.generate_data_key_without_plaintext(KeyId=key, NumberOfBytes=32)
    kms.generate_data_key_pair(KeyId=key, KeyPairSpec="ECC_NIST_P256")
    kms.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="RSA_2048")
    kms.generate_random(NumberOfBytes=16)
    signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
    signature = kms.sign(KeyId=signer, Message=b"m", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    kms.verify(KeyId=signer, Message=b"m", MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256", Signature=signature)
    kms.get_public_key(KeyId=signer)
    hmac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"]
    mac = kms.generate_mac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256")["Mac"]
    kms.verify_mac(KeyId=hmac_key, Message=b"m", MacAlgorithm="HMAC_SHA_256", Mac=mac)
    agree = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="KEY_AGREEMENT")["KeyMetadata"]["KeyId"]
    peer = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    kms.derive_shared_secret(KeyId=agree, KeyAgreementAlgorithm="ECDH", PublicKey=peer)
    kem = kms.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["KeyId"]
    capsule = kms.encapsulate(KeyId=kem, EncapsulationAlgorithm="ML_KEM")
    kms.decapsulate(
        KeyId=kem, EncapsulationAlgorithm="ML_KEM", SharedSecretCiphertextBlob=capsule["SharedSecretCiphertextBlob"]
    )


def _exercise_import(kms: Any) -> None:
    """GetParametersForImport and ImportKeyMaterial with an expiry: ParametersValidTo, ValidTo."""
    key = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    parameters = kms.get_parameters_for_import(
        KeyId=key, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    wrapping = serialization.load_der_public_key(parameters["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    wrapped = wrapping.encrypt(os.urandom(32), oaep)  # type: ignore[union-attr]
    valid_to = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
    kms.import_key_material(
        KeyId=key,
        ImportToken=parameters["ImportToken"],
        EncryptedKeyMaterial=wrapped,
        ExpirationModel="KEY_MATERIAL_EXPIRES",
        ValidTo=valid_to,
    )
    kms.describe_key(KeyId=key)


def test_every_answer_is_typed_as_the_model_says(server: KeytrailServer) -> None:
    kms = server.client("alice")
    checker = _AnswerChecker()
    kms.meta.events.register("after-call.kms", checker)
    _exercise_keys(kms)
    _exercise_crypto(kms)
    _exercise_import(kms)
    assert checker.problems == []
    unchecked = {
        "ConnectCustomKeyStore",
        "CreateCustomKeyStore",
        "DeleteCustomKeyStore",
        "DisconnectCustomKeyStore",
        "UpdateCustomKeyStore",
        "UpdatePrimaryRegion",
        "DeleteAlias",
        "RevokeGrant",
        "UntagResource",
        "DisableKey",
        "EnableKey",
        "DisableKeyRotation",
        "UpdateAlias",
        "UpdateKeyDescription",
        "DeleteImportedKeyMaterial",
    }  # custom key stores need an HSM; the rest answer no members
    assert set(kms.meta.service_model.operation_names) - unchecked <= checker.checked
