"""Every condition key: what request_conditions puts in, and what RequestContext derives."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

import pytest

from keytrail.kms.condition_keys import RequestContext, request_conditions, trailing_days_without_use
from keytrail.kms.errors import InvalidGrantTokenException
from keytrail.kms.model import KeyLastUsage, KeySpec, KeyUsage, Origin

from .support import ACCOUNT, NOW, call, key, role, root, user

ALIAS_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/app"


@pytest.mark.parametrize(
    ("operation", "params", "expected"),
    [
        (
            "Encrypt",
            {"EncryptionContext": {"Dept": "IT"}},
            {
                "kms:EncryptionContext:Dept": "IT",
                "kms:EncryptionContextKeys": ["Dept"],
                "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
            },
        ),
        (
            "kms:GenerateDataKey",
            {"KeyId": "alias/app", "EncryptionContext": {"Dept": "IT"}, "KeySpec": "AES_256"},
            {
                "kms:EncryptionContext:Dept": "IT",
                "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                "kms:RequestAlias": "alias/app",
            },
        ),
        ("GenerateDataKeyWithoutPlaintext", {}, {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        (
            "kms:Decrypt",
            {"EncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
            {"kms:EncryptionAlgorithm": "RSAES_OAEP_SHA_256"},
        ),
        (
            "ReEncryptFrom",
            {
                "SourceEncryptionContext": {"a": "1"},
                "DestinationEncryptionContext": {"b": "2"},
                "SourceKeyId": "k1",
                "DestinationKeyId": "k1",
            },
            {"kms:EncryptionContext:a": "1", "kms:ReEncryptOnSameKey": True},
        ),
        (
            "ReEncryptTo",
            {"DestinationEncryptionContext": {"b": "2"}, "DestinationKeyId": ALIAS_ARN},
            {"kms:EncryptionContext:b": "2", "kms:RequestAlias": "alias/app"},
        ),
        ("Encrypt", {"KeyId": "alias/app"}, {"kms:RequestAlias": "alias/app"}),
        ("GenerateDataKeyPair", {"KeyPairSpec": "RSA_2048"},
         {"kms:DataKeyPairSpec": "RSA_2048", "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        ("GenerateDataKeyPairWithoutPlaintext", {"KeyPairSpec": "ECC_NIST_P256"},
         {"kms:DataKeyPairSpec": "ECC_NIST_P256", "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}),
        (
            "Sign",
            {"SigningAlgorithm": "ECDSA_SHA_256", "MessageType": "DIGEST"},
            {"kms:SigningAlgorithm": "ECDSA_SHA_256", "kms:MessageType": "DIGEST"},
        ),
        ("VerifyMac", {"MacAlgorithm": "HMAC_SHA_256"}, {"kms:MacAlgorithm": "HMAC_SHA_256"}),
        (
            "CreateGrant",
            {
                "GranteePrincipal": "g",
                "RetiringPrincipal": "r",
                "Operations": ["Decrypt"],
                "Constraints": {"EncryptionContextEquals": {"a": "1"}},
            },
            {
                "kms:GranteePrincipal": "g",
                "kms:RetiringPrincipal": "r",
                "kms:GrantOperations": ["Decrypt"],
                "kms:GrantConstraintType": "EncryptionContextEquals",
                "kms:GrantIsForAWSResource": False,
                # The key table of "AWS KMS condition keys" lists CreateGrant for both: its encryption
                # context is the one of its constraint.
                "kms:EncryptionContext:a": "1",
                "kms:EncryptionContextKeys": ["a"],
            },
        ),
        ("CreateGrant", {"Operations": ["Decrypt"]}, {"kms:EncryptionContextKeys": None}),
        # A constraint of no pairs constrains nothing: no constraint type (it was EncryptionContextSubset).
        ("CreateGrant", {"Operations": ["Decrypt"], "Constraints": {"EncryptionContextSubset": {}}},
         {"kms:GrantConstraintType": None, "kms:EncryptionContextKeys": None}),
        ("ListGrants", {}, {"kms:GrantIsForAWSResource": False}),
        ("RevokeGrant", {}, {"kms:GrantIsForAWSResource": False}),
        (
            "CreateKey",
            {
                "KeySpec": "HMAC_256",
                "KeyUsage": "GENERATE_VERIFY_MAC",
                "MultiRegion": True,
                "Tags": [{"TagKey": "Team", "TagValue": "blue"}],
            },
            {
                "kms:KeySpec": "HMAC_256",
                "kms:KeyUsage": "GENERATE_VERIFY_MAC",
                "kms:CustomerMasterKeySpec": "HMAC_256",
                "kms:CustomerMasterKeyUsage": "GENERATE_VERIFY_MAC",
                "kms:KeyOrigin": "AWS_KMS",
                "kms:MultiRegion": True,
                "aws:RequestTag/Team": "blue",
                "aws:TagKeys": ["Team"],
                "kms:BypassPolicyLockoutSafetyCheck": None,  # absent: the request does not include it
            },
        ),
        ("PutKeyPolicy", {"BypassPolicyLockoutSafetyCheck": True}, {"kms:BypassPolicyLockoutSafetyCheck": True}),
        ("PutKeyPolicy", {"BypassPolicyLockoutSafetyCheck": False}, {"kms:BypassPolicyLockoutSafetyCheck": False}),
        # kms:PolicyName: "If the request doesn't include PolicyName, the value of kms:PolicyName is default".
        ("GetKeyPolicy", {}, {"kms:PolicyName": "default"}),
        ("PutKeyPolicy", {"PolicyName": "default"}, {"kms:PolicyName": "default"}),
        ("PutKeyPolicy", {}, {"kms:PolicyName": "default"}),
        ("ListKeyPolicies", {}, {"kms:PolicyName": None}),
        ("TagResource", {"Tags": [{"TagKey": "a", "TagValue": "b"}]}, {"aws:RequestTag/a": "b", "aws:TagKeys": ["a"]}),
        ("UntagResource", {"TagKeys": ["a"]}, {"aws:TagKeys": ["a"]}),
        ("EnableKeyRotation", {"RotationPeriodInDays": 90}, {"kms:RotationPeriodInDays": 90}),
        ("EnableKeyRotation", {}, {"kms:RotationPeriodInDays": 365}),  # the default period
        ("ScheduleKeyDeletion", {}, {"kms:ScheduleKeyDeletionPendingWindowInDays": 30}),
        ("ReplicateKey", {"ReplicaRegion": "eu-west-1"}, {"kms:ReplicaRegion": "eu-west-1"}),
        # kms:MultiRegionKeyType applies to CreateKey ("AWS KMS condition keys"): a new multi-Region key is a primary.
        ("CreateKey", {"MultiRegion": True}, {"kms:MultiRegion": True, "kms:MultiRegionKeyType": "PRIMARY"}),
        ("CreateKey", {}, {"kms:MultiRegion": False, "kms:MultiRegionKeyType": None}),
    ],
)
def test_request_conditions(operation: str, params: dict[str, Any], expected: dict[str, Any]) -> None:
    conditions = request_conditions(operation, params)
    assert {name: conditions.get(name) for name in expected} == expected


def test_no_encryption_context_means_no_context_keys() -> None:
    assert "kms:EncryptionContextKeys" not in request_conditions("Encrypt", {})
    assert "kms:GrantIsForAWSResource" not in request_conditions("Encrypt", {})


# "my-ignored-grant-token" is what moto's tests pass (moto ignores GrantTokens); "ktg1…" has this
# service's prefix but no grant behind its base64.
@pytest.mark.parametrize("tokens", [[""], ["x" * 8193], ["t"] * 11, "not-a-list", ["my-ignored-grant-token"],
                                    ["ktg1!!!"], ["ktg1" + "QUJD"]])
def test_malformed_grant_tokens(tokens: Any) -> None:
    with pytest.raises(InvalidGrantTokenException):
        request_conditions("Decrypt", {"GrantTokens": tokens})


TAGGED = key(
    "{}",
    key_spec=KeySpec.RSA_2048,
    key_usage=KeyUsage.SIGN_VERIFY,
    origin=Origin.EXTERNAL,
    multi_region=True,
    tags=(("Project", "alpha"),),
)


@pytest.mark.parametrize(
    ("principal", "name", "expected"),
    [
        (user("alice"), "aws:principalarn", f"arn:aws:iam::{ACCOUNT}:user/alice"),
        (role("app"), "aws:principalarn", f"arn:aws:iam::{ACCOUNT}:role/app"),
        (root(), "aws:principalarn", f"arn:aws:iam::{ACCOUNT}:root"),
        (user("alice"), "aws:principalaccount", ACCOUNT),
        (user("alice"), "kms:calleraccount", ACCOUNT),
        (user("alice"), "aws:principaltype", "User"),
        (role("app"), "aws:principaltype", "AssumedRole"),
        (root(), "aws:principaltype", "Account"),
        (user("alice"), "aws:username", "alice"),
        (role("app"), "aws:username", None),
        (user("alice"), "aws:userid", "AIDAALICE"),
        (user("alice"), "aws:sourceip", "127.0.0.1"),
        (user("alice"), "aws:securetransport", False),
        (user("alice"), "aws:requestedregion", "us-east-1"),
        (user("alice"), "aws:currenttime", NOW),
        (user("alice"), "aws:epochtime", int(NOW.timestamp())),
        (user("alice"), "aws:resourceaccount", ACCOUNT),
        (user("alice"), "aws:resourcetag/project", "alpha"),
        (user("alice"), "aws:resourcetag/missing", None),
        (user("alice"), "kms:keyspec", "RSA_2048"),
        (user("alice"), "kms:keyusage", "SIGN_VERIFY"),
        (user("alice"), "kms:keyorigin", "EXTERNAL"),
        (user("alice"), "kms:multiregion", True),
        (user("alice"), "kms:multiregionkeytype", "PRIMARY"),
        (user("alice"), "kms:viaservice", None),
        (user("alice"), "aws:principalisawsservice", False),
        (role("app"), "aws:viaawsservice", False),
        # Present only for temporary credentials (an assumed-role session), and false: no MFA here.
        (role("app"), "aws:multifactorauthpresent", False),
        (user("alice"), "aws:multifactorauthpresent", None),
        (root(), "aws:multifactorauthpresent", None),
    ],
)
def test_derived_keys(principal: Any, name: str, expected: Any) -> None:
    assert RequestContext(call(principal), TAGGED, {}, lambda: NOW)(name) == expected


def test_request_values_win_and_names_are_case_insensitive() -> None:
    ctx = RequestContext(
        call(user("alice")), None, {"kms:EncryptionContext:Dept": "IT", "kms:KeySpec": "X"}, lambda: NOW
    )
    assert ctx("kms:encryptioncontext:dept") == "IT"
    assert ctx("kms:keyspec") == "X"
    assert ctx("aws:resourcetag/project") is None  # no key, no resource keys
    assert ctx("kms:multiregionkeytype") is None


def test_principal_tags_are_read_by_any_case_of_their_key() -> None:
    tagged = dataclasses.replace(user("alice"), tags=(("CostCenter", "CC-12"), ("team", "payments")))
    ctx = RequestContext(call(tagged), None, {}, lambda: NOW)
    assert ctx("aws:principaltag/costcenter") == "CC-12"
    assert ctx("aws:principaltag/team") == "payments"
    assert ctx("aws:principaltag/missing") is None
    assert RequestContext(call(root()), None, {}, lambda: NOW)("aws:principaltag/team") is None


def test_organization_ids_are_those_of_the_callers_and_the_keys_accounts() -> None:
    """aws:PrincipalOrgID and aws:ResourceOrgID were always absent: a key policy allowing "any
    principal of my organization" allowed nobody, and a data-perimeter Deny denied everybody."""
    outside = "444455556666"
    organizations = {ACCOUNT: "o-a1b2c3d4e5"}
    ctx = RequestContext(call(user("alice"), organizations=organizations), TAGGED, {}, lambda: NOW)
    assert (ctx("aws:principalorgid"), ctx("aws:resourceorgid")) == ("o-a1b2c3d4e5", "o-a1b2c3d4e5")
    stranger = dataclasses.replace(user("alice"), account=outside)
    ctx = RequestContext(call(stranger, organizations=organizations), None, {}, lambda: NOW)
    assert (ctx("aws:principalorgid"), ctx("aws:resourceorgid")) == (None, None)  # no organization, no key
    assert RequestContext(call(user("alice")), TAGGED, {}, lambda: NOW)("aws:principalorgid") is None


@pytest.mark.parametrize(
    ("created", "tracking_start", "last_used", "days"),
    [
        (NOW - timedelta(days=400), NOW - timedelta(days=100), NOW - timedelta(days=2, hours=23), 2),  # rounded down
        (NOW - timedelta(days=5), NOW - timedelta(days=100), None, 5),  # unused since its creation
        (NOW - timedelta(days=400), NOW - timedelta(days=100), None, 100),  # unused since tracking began
        (NOW - timedelta(days=3), None, None, 3),  # nothing tracked yet
    ],
)
def test_trailing_days_without_key_usage_counts_from_the_last_use_else_creation_or_tracking_start(
        created: datetime, tracking_start: datetime | None, last_used: datetime | None, days: int) -> None:
    last = KeyLastUsage("Encrypt", last_used, "event", None) if last_used else None
    used_key = dataclasses.replace(key({}), creation_date=created)
    assert trailing_days_without_use(used_key, NOW, tracking_start, last) == days
