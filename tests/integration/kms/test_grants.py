"""Grants through boto3: how CreateGrant names its key and which key states take a grant."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer

BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"


def test_create_grant_refuses_aliases_with_invalid_arn(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    name = f"alias/g-{uuid.uuid4().hex[:12]}"
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    for alias in (name, f"arn:aws:kms:us-east-1:{ACCOUNT}:{name}", "alias/never-made"):
        code, message, status = aws_error(kms.create_grant, KeyId=alias, GranteePrincipal=BOB, Operations=["Decrypt"])
        assert (code, message, status) == ("InvalidArnException", "Key Aliases are not supported for this operation.",
                                           400)
    assert kms.list_grants(KeyId=key_id)["Grants"] == []


def test_create_grant_on_a_disabled_or_pending_import_key_is_refused(kms) -> None:
    disabled = kms.create_key()["KeyMetadata"]
    kms.disable_key(KeyId=disabled["KeyId"])
    code, message, _ = aws_error(kms.create_grant, KeyId=disabled["KeyId"], GranteePrincipal=BOB,
                                 Operations=["Decrypt"])
    assert (code, message) == ("DisabledException", f"{disabled['Arn']} is disabled.")
    external = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    code, message, _ = aws_error(kms.create_grant, KeyId=external["KeyId"], GranteePrincipal=BOB,
                                 Operations=["Decrypt"])
    assert (code, message) == ("KMSInvalidStateException", f"{external['Arn']} is pending import.")
    kms.enable_key(KeyId=disabled["KeyId"])
    assert kms.create_grant(KeyId=disabled["KeyId"], GranteePrincipal=BOB, Operations=["Decrypt"])["GrantId"]


def test_a_principal_and_a_service_principal_together_are_refused(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    code, message, _ = aws_error(kms.create_grant, KeyId=key_id, GranteePrincipal=BOB,
                                 GranteeServicePrincipal="rds.amazonaws.com", Operations=["Decrypt"])
    assert (code, message) == ("ValidationException",
                               "You must specify either GranteePrincipal or GranteeServicePrincipal, but not both.")
    code, message, _ = aws_error(kms.create_grant, KeyId=key_id, GranteePrincipal=BOB, RetiringPrincipal=BOB,
                                 RetiringServicePrincipal="rds.amazonaws.com", Operations=["Decrypt"])
    assert (code, message) == ("ValidationException",
                               "You can specify either RetiringPrincipal or RetiringServicePrincipal, but not both.")
    code, _, _ = aws_error(kms.list_grants, KeyId=key_id, GranteePrincipal=BOB,
                           GranteeServicePrincipal="rds.amazonaws.com")
    assert code == "ValidationException"
    code, _, _ = aws_error(kms.list_retirable_grants, RetiringPrincipal=BOB,
                           RetiringServicePrincipal="rds.amazonaws.com")
    assert code == "ValidationException"
    code, _, _ = aws_error(kms.create_grant, KeyId=key_id, GranteePrincipal=BOB,
                           RetiringServicePrincipal="rds.amazonaws.com", Operations=["Decrypt"])
    assert code == "UnsupportedOperationException"  # not dropped: no service can retire it here
    assert kms.list_grants(KeyId=key_id)["Grants"] == []


def test_a_service_principal_standing_alone_is_unsupported_not_a_missing_member(kms) -> None:
    # The model lets GranteeServicePrincipal (RetiringServicePrincipal) stand in for GranteePrincipal
    # (RetiringPrincipal); it was refused as "Value null at 'granteePrincipal'", as if forgotten.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    unsupported = ("UnsupportedOperationException", "{} is not supported: no AWS service principal calls keytrail.")
    code, message, _ = aws_error(kms.create_grant, KeyId=key_id, GranteeServicePrincipal="rds.amazonaws.com",
                                 Operations=["Decrypt"])
    assert (code, message) == (unsupported[0], unsupported[1].format("GranteeServicePrincipal"))
    code, message, _ = aws_error(kms.list_retirable_grants, RetiringServicePrincipal="rds.amazonaws.com")
    assert (code, message) == (unsupported[0], unsupported[1].format("RetiringServicePrincipal"))
    code, message, _ = aws_error(kms.create_grant, KeyId=key_id, Operations=["Decrypt"])  # neither: still missing
    assert code == "ValidationException" and "Value null at 'granteePrincipal'" in message
    assert kms.list_grants(KeyId=key_id)["Grants"] == []


def test_list_grants_by_grantee_service_principal_lists_no_grant_of_a_principal(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Decrypt"])
    listed = kms.list_grants(KeyId=key_id, GranteeServicePrincipal="rds.amazonaws.com")
    assert (listed["Grants"], listed["Truncated"]) == ([], False)
    assert len(kms.list_grants(KeyId=key_id)["Grants"]) == 1


def test_grant_tokens_that_are_not_grant_tokens_are_refused(server: KeytrailServer) -> None:
    # Outside the model's bounds (at most 10 tokens of 1..8192 characters): its ValidationException.
    # Within them but not returned by CreateGrant: InvalidGrantTokenException, "the specified grant
    # token is not valid" (API reference of Encrypt and every operation taking GrantTokens).
    kms = server.client(parameter_validation=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    for tokens, where in (([""], "grantTokens.1.member"), (["t" * 8193], "grantTokens.1.member"),
                          (["t"] * 11, "grantTokens")):
        code, message, status = aws_error(kms.encrypt, KeyId=key_id, Plaintext=b"x", GrantTokens=tokens)
        assert (code, status) == ("ValidationException", 400) and f"at '{where}' failed to satisfy" in message
    code, message, status = aws_error(kms.encrypt, KeyId=key_id, Plaintext=b"x", GrantTokens=["my-grant-token"])
    assert (code, message, status) == ("InvalidGrantTokenException", "The grant token is invalid.", 400)
    token = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt"])["GrantToken"]
    assert kms.encrypt(KeyId=key_id, Plaintext=b"x", GrantTokens=[token] * 10)["KeyId"].endswith(key_id)


def _calls_taking_grant_tokens(kms: Any) -> dict[str, tuple[Callable[..., Any], dict[str, Any]]]:
    """A valid request of every operation whose input has GrantTokens, by operation name."""
    def key(spec: str, usage: str) -> str:
        return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]
    symmetric, mac = key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"), key("HMAC_256", "GENERATE_VERIFY_MAC")
    signing, agreeing = key("ECC_NIST_P256", "SIGN_VERIFY"), key("ECC_NIST_P256", "KEY_AGREEMENT")
    kem = key("ML_KEM_768", "ENCAPSULATE_DECAPSULATE")
    blob = kms.encrypt(KeyId=symmetric, Plaintext=b"p")["CiphertextBlob"]
    signed = {"KeyId": signing, "Message": b"m", "SigningAlgorithm": "ECDSA_SHA_256"}
    maced = {"KeyId": mac, "Message": b"m", "MacAlgorithm": "HMAC_SHA_256"}
    peer = kms.get_public_key(KeyId=agreeing)["PublicKey"]
    sealed = kms.encapsulate(KeyId=kem, EncapsulationAlgorithm="ML_KEM")["SharedSecretCiphertextBlob"]
    return {
        "CreateGrant": (kms.create_grant, {"KeyId": symmetric, "GranteePrincipal": BOB, "Operations": ["Decrypt"]}),
        "Decapsulate": (kms.decapsulate, {"KeyId": kem, "EncapsulationAlgorithm": "ML_KEM",
                                          "SharedSecretCiphertextBlob": sealed}),
        "Decrypt": (kms.decrypt, {"CiphertextBlob": blob}),
        "DeriveSharedSecret": (kms.derive_shared_secret, {"KeyId": agreeing, "KeyAgreementAlgorithm": "ECDH",
                                                          "PublicKey": peer}),
        "DescribeKey": (kms.describe_key, {"KeyId": symmetric}),
        "Encapsulate": (kms.encapsulate, {"KeyId": kem, "EncapsulationAlgorithm": "ML_KEM"}),
        "Encrypt": (kms.encrypt, {"KeyId": symmetric, "Plaintext": b"p"}),
        "GenerateDataKey": (kms.generate_data_key, {"KeyId": symmetric, "KeySpec": "AES_256"}),
        "GenerateDataKeyPair": (kms.generate_data_key_pair, {"KeyId": symmetric, "KeyPairSpec": "ECC_NIST_P256"}),
        "GenerateDataKeyPairWithoutPlaintext": (kms.generate_data_key_pair_without_plaintext,
                                                {"KeyId": symmetric, "KeyPairSpec": "ECC_NIST_P256"}),
        "GenerateDataKeyWithoutPlaintext": (kms.generate_data_key_without_plaintext,
                                            {"KeyId": symmetric, "KeySpec": "AES_256"}),
        "GenerateMac": (kms.generate_mac, maced),
        "GetPublicKey": (kms.get_public_key, {"KeyId": signing}),
        "ReEncrypt": (kms.re_encrypt, {"CiphertextBlob": blob, "DestinationKeyId": symmetric}),
        "Sign": (kms.sign, signed),
        "Verify": (kms.verify, {**signed, "Signature": kms.sign(**signed)["Signature"]}),
        "VerifyMac": (kms.verify_mac, {**maced, "Mac": kms.generate_mac(**maced)["Mac"]}),
    }


def test_every_operation_taking_grant_tokens_refuses_one_that_is_not_valid(kms) -> None:
    # Tokens are checked where the call is authorized, after its key is found: an operation whose
    # handler did not authorize through that point would take any token unchecked.
    calls = _calls_taking_grant_tokens(kms)
    model = kms.meta.service_model
    assert set(calls) == {name for name in model.operation_names
                          if "GrantTokens" in model.operation_model(name).input_shape.members}
    for name, (call, kwargs) in calls.items():
        assert call(**kwargs)["ResponseMetadata"]["HTTPStatusCode"] == 200, name
        code, message, _ = aws_error(call, GrantTokens=["not-a-grant-token"], **kwargs)
        assert (name, code, message) == (name, "InvalidGrantTokenException", "The grant token is invalid.")


def test_a_grantee_or_retiring_principal_that_names_no_principal_is_invalid_arn(kms) -> None:
    # AWS resolves both principals of a grant and refuses one that names none: InvalidArnException
    # "ARN does not refer to a valid principal: <arn>", as callers of CreateGrant quote it.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    for bad in ("not-an-arn", f"arn:aws:iam::{ACCOUNT}:group/admins", "arn:aws:s3:::bucket",
                f"arn:aws:iam::{ACCOUNT}:user/ops/", f"arn:aws:sts::{ACCOUNT}:assumed-role/service-role/app/s"):
        for principals in ({"GranteePrincipal": bad}, {"GranteePrincipal": BOB, "RetiringPrincipal": bad}):
            code, message, status = aws_error(kms.create_grant, KeyId=key_id, Operations=["Decrypt"], **principals)
            assert (code, message, status) == ("InvalidArnException",
                                               f"ARN does not refer to a valid principal: {bad}", 400)
    assert kms.list_grants(KeyId=key_id)["Grants"] == []
    role_session = f"arn:aws:sts::{ACCOUNT}:assumed-role/app/app-session"
    for good in (BOB, f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT, role_session, "ec2.us-east-1.amazonaws.com"):
        assert kms.create_grant(KeyId=key_id, GranteePrincipal=good, RetiringPrincipal=BOB, Operations=["Decrypt"])


def test_a_grant_token_is_refused_outside_the_region_of_its_grant(server: KeytrailServer) -> None:
    # KMS keys and their grants are Regional: a token names a grant of the Region it was issued in,
    # and a call in another Region neither retires that grant (it used to, recorded in the wrong
    # Region's trail) nor takes the token as valid.
    east, west = server.client(), server.client(region="us-west-2")
    key_id = east.create_key()["KeyMetadata"]["KeyId"]
    token = east.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt", "RetireGrant"])["GrantToken"]
    west_key = west.create_key()["KeyMetadata"]["KeyId"]
    refused = ("InvalidGrantTokenException", "The grant token is invalid.", 400)
    assert aws_error(west.retire_grant, GrantToken=token) == refused
    assert aws_error(west.encrypt, KeyId=west_key, Plaintext=b"x", GrantTokens=[token]) == refused
    assert len(east.list_grants(KeyId=key_id)["Grants"]) == 1
    east.retire_grant(GrantToken=token)
    assert east.list_grants(KeyId=key_id)["Grants"] == []


def test_a_grant_without_operations_is_refused(kms) -> None:
    # "ForAllValues also returns true when there are no grant operations in the request, but
    # CreateGrant doesn't permit it" (AWS KMS condition keys, kms:GrantOperations).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    code, message, status = aws_error(kms.create_grant, KeyId=key_id, GranteePrincipal=BOB, Operations=[])
    assert (code, message, status) == (
        "ValidationException", "1 validation error detected: Value '[]' at 'operations' failed to satisfy "
        "constraint: Member must have length greater than or equal to 1", 400)
    assert kms.list_grants(KeyId=key_id)["Grants"] == []


def test_a_grant_holds_each_of_its_operations_once(kms) -> None:
    # A grant allows a set of operations: one named twice allows nothing more. Kept as sent, a
    # CreateGrant naming one operation 20,000 times (the model bounds the list by the request's
    # size only) made a grant of 220 KB, each ListGrants page of them 22 MB, and 50,000 of them
    # (AWS's quota a key) 11 GB of the node's memory.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    grant_id = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Decrypt", "Encrypt", "Decrypt"],
                                Name="twice")["GrantId"]
    assert kms.list_grants(KeyId=key_id)["Grants"][0]["Operations"] == ["Decrypt", "Encrypt"]
    retried = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt", "Decrypt"], Name="twice")
    assert retried["GrantId"] == grant_id  # the same request: a retry by Name returns the grant
    many = kms.create_grant(KeyId=key_id, GranteePrincipal=BOB, Operations=["Encrypt"] * 20_000)["GrantId"]
    assert kms.list_grants(KeyId=key_id, GrantId=many)["Grants"][0]["Operations"] == ["Encrypt"]
