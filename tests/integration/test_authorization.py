"""Authorization through boto3 against a live `keytrail serve`, as different principals.

Key policies follow the examples of the AWS KMS developer guide ("Default key policy", "Allows
key users to use the KMS key", "Allows key administrators", kms:GrantIsForAWSResource,
kms:ViaService, encryption context, aws:SourceIp, aws:CurrentTime).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from tests.support.server import ACCOUNT, OTHER_ACCOUNT, PRINCIPALS, KeytrailServer, write_principals
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

ROOT = f"arn:aws:iam::{ACCOUNT}:root"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
CAROL = f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol"
USE = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
ADMIN = [
    "kms:Create*",
    "kms:Describe*",
    "kms:Enable*",
    "kms:List*",
    "kms:Put*",
    "kms:Update*",
    "kms:Revoke*",
    "kms:Disable*",
    "kms:Get*",
    "kms:Delete*",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:ScheduleKeyDeletion",
    "kms:CancelKeyDeletion",
]


def statement(principal: Any, actions: Any, effect: str = "Allow", **extra: Any) -> dict[str, Any]:
    return {"Effect": effect, "Principal": {"AWS": principal}, "Action": actions, "Resource": "*", **extra}


def policy(*statements: dict[str, Any]) -> str:
    enable_iam = statement(ROOT, "kms:*", Sid="Enable IAM User Permissions")
    return json.dumps({"Version": "2012-10-17", "Statement": [enable_iam, *statements]})


def error_of(call: Callable[..., Any], **kwargs: Any) -> tuple[str, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    error = info.value.response["Error"]
    return error["Code"], error.get("Message", "")


@pytest.fixture
def alice(server: KeytrailServer) -> Any:
    return server.client("alice")


@pytest.fixture
def bob(server: KeytrailServer) -> Any:
    return server.client("bob")


def new_key(client: Any, key_policy: str | None = None) -> str:
    params = {"Policy": key_policy} if key_policy else {}
    return str(client.create_key(**params)["KeyMetadata"]["Arn"])


def test_default_policy_lets_iam_decide(alice: Any, bob: Any) -> None:
    key = new_key(alice)
    alice.encrypt(KeyId=key, Plaintext=b"x")
    code, message = error_of(bob.encrypt, KeyId=key, Plaintext=b"x")
    assert code == "AccessDeniedException"
    assert message == (
        f"User: {BOB} is not authorized to perform: kms:Encrypt on resource: {key} "
        "because no identity-based policy allows the kms:Encrypt action"
    )


def test_a_key_policy_names_a_user_with_the_case_of_its_name(alice: Any, bob: Any) -> None:
    # IAM, Principal element: "the user name part of the Amazon Resource Name (ARN) is case sensitive".
    key = new_key(alice, policy(statement(f"arn:aws:iam::{ACCOUNT}:user/Bob", USE)))
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"
    alice.put_key_policy(KeyId=key, PolicyName="default", Policy=policy(statement(BOB, USE)))
    bob.encrypt(KeyId=key, Plaintext=b"x")


def test_key_users_may_use_but_not_administer(alice: Any, bob: Any) -> None:
    key = new_key(alice, policy(statement(BOB, USE, Sid="Allow use of the key")))
    blob = bob.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    assert bob.decrypt(CiphertextBlob=blob)["Plaintext"] == b"secret"
    bob.generate_data_key(KeyId=key, KeySpec="AES_256")
    code, message = error_of(bob.disable_key, KeyId=key)
    assert code == "AccessDeniedException" and "kms:DisableKey" in message


def test_key_administrators_may_administer_but_not_use(alice: Any, bob: Any) -> None:
    key = new_key(alice, policy(statement(BOB, ADMIN, Sid="Allow access for Key Administrators")))
    bob.disable_key(KeyId=key)
    bob.enable_key(KeyId=key)
    assert json.loads(bob.get_key_policy(KeyId=key)["Policy"])["Statement"][1]["Principal"]["AWS"] == BOB
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"


def test_grant_for_aws_resource_condition_refuses_direct_grants(alice: Any, bob: Any) -> None:
    persistent = statement(
        BOB,
        ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
        Sid="Allow attachment of persistent resources",
        Condition={"Bool": {"kms:GrantIsForAWSResource": "true"}},
    )
    key = new_key(alice, policy(persistent))
    code, _ = error_of(bob.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"])
    assert code == "AccessDeniedException"
    assert error_of(bob.list_grants, KeyId=key)[0] == "AccessDeniedException"


def test_via_service_condition_refuses_direct_callers(alice: Any, bob: Any) -> None:
    via_ec2 = statement(BOB, USE, Condition={"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}})
    key = new_key(alice, policy(via_ec2))
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"


def test_encryption_context_condition(alice: Any, bob: Any) -> None:
    it_only = statement(
        BOB,
        ["kms:Encrypt", "kms:Decrypt"],
        Condition={"StringEquals": {"kms:EncryptionContext:Department": "IT"}},
    )
    key = new_key(alice, policy(it_only))
    blob = bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"Department": "IT"})["CiphertextBlob"]
    bob.decrypt(CiphertextBlob=blob, EncryptionContext={"Department": "IT"})
    code, _ = error_of(bob.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"Department": "HR"})
    assert code == "AccessDeniedException"
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"


def test_source_ip_condition(alice: Any, bob: Any) -> None:
    loopback = new_key(alice, policy(statement(BOB, USE, Condition={"IpAddress": {"aws:SourceIp": "127.0.0.0/8"}})))
    bob.encrypt(KeyId=loopback, Plaintext=b"x")
    corporate = new_key(alice, policy(statement(BOB, USE, Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})))
    assert error_of(bob.encrypt, KeyId=corporate, Plaintext=b"x")[0] == "AccessDeniedException"


def test_time_limited_access_follows_the_server_clock(fresh_server: KeytrailServer) -> None:
    alice, bob = fresh_server.client("alice"), fresh_server.client("bob")
    now = fresh_server.advance(0)
    until = now[:10] + "T23:59:59Z"  # the end of the server's current day
    key = new_key(alice, policy(statement(BOB, USE, Condition={"DateLessThan": {"aws:CurrentTime": until}})))
    bob.encrypt(KeyId=key, Plaintext=b"x")
    fresh_server.advance(2 * 86400)
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"


def test_trailing_days_without_key_usage_protects_recently_used_keys(fresh_server: KeytrailServer) -> None:
    # AWS's guard against deleting a key in use (AWS Security Blog, "Identify unused AWS KMS keys and
    # prevent accidental key deletions"): the days since the last cryptographic use, or since the
    # key's creation for a key never used, rounded down. Absent, the Deny never matched.
    alice = fresh_server.client("alice")
    guard = {"Effect": "Deny", "Principal": "*", "Action": ["kms:ScheduleKeyDeletion", "kms:DisableKey"],
             "Resource": "*", "Condition": {"NumericLessThanEquals": {"kms:TrailingDaysWithoutKeyUsage": "30"}}}
    used, unused = new_key(alice, policy(guard)), new_key(alice, policy(guard))
    alice.encrypt(KeyId=used, Plaintext=b"x")
    eventually_blocking(lambda: alice.get_key_last_usage(KeyId=used).get("KeyLastUsage"), what="the use tracked")
    code, message = error_of(alice.disable_key, KeyId=used)
    assert (code, message) == ("AccessDeniedException", f"User: {ALICE} is not authorized to perform: "
                               f"kms:DisableKey on resource: {used} with an explicit deny in a resource-based policy")
    assert error_of(alice.schedule_key_deletion, KeyId=unused)[0] == "AccessDeniedException"
    fresh_server.advance(30 * 86400)
    assert error_of(alice.disable_key, KeyId=used)[0] == "AccessDeniedException"  # 30 days: still "<= 30"
    fresh_server.advance(86400)
    alice.disable_key(KeyId=used)
    assert alice.schedule_key_deletion(KeyId=unused, PendingWindowInDays=7)["KeyState"] == "PendingDeletion"

def test_cross_account_needs_key_policy_and_identity_policy(server: KeytrailServer, alice: Any) -> None:
    carol, other_root = server.client("carol"), server.client("other-root")
    key = new_key(alice)
    assert error_of(carol.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"
    shared = new_key(alice, policy(statement(f"arn:aws:iam::{OTHER_ACCOUNT}:root", ["kms:Encrypt", "kms:DescribeKey"])))
    carol.encrypt(KeyId=shared, Plaintext=b"x")
    other_root.encrypt(KeyId=shared, Plaintext=b"x")
    assert error_of(carol.generate_data_key, KeyId=shared, KeySpec="AES_256")[0] == "AccessDeniedException"


def test_list_aliases_tells_nothing_of_keys_the_caller_cannot_list(server: KeytrailServer, alice: Any,
                                                                  bob: Any) -> None:
    # ListAliases lists the caller's own aliases only ("Cross-account use: No"): another account's
    # key ARN lists none whether or not the key exists, and a caller without kms:ListAliases is
    # refused before its KeyId is looked up, so neither learns which keys exist.
    carol = server.client("carol")
    key = new_key(alice, policy(statement(f"arn:aws:iam::{OTHER_ACCOUNT}:root", "kms:*")))
    alice.create_alias(AliasName=f"alias/listed-{key[-8:]}", TargetKeyId=key)
    missing = key[:-12] + "000000000000"
    assert carol.list_aliases(KeyId=key)["Aliases"] == []
    assert carol.list_aliases(KeyId=missing)["Aliases"] == []
    assert [a["AliasName"] for a in alice.list_aliases(KeyId=key)["Aliases"]] == [f"alias/listed-{key[-8:]}"]
    assert error_of(alice.list_aliases, KeyId=missing)[0] == "NotFoundException"
    assert error_of(bob.list_aliases, KeyId=key)[0] == "AccessDeniedException"
    assert error_of(bob.list_aliases, KeyId=missing)[0] == "AccessDeniedException"


def test_cross_account_permission_is_effective_only_for_the_documented_operations(
        server: KeytrailServer, alice: Any) -> None:
    # "if you give … kms:ScheduleKeyDeletion permission on a KMS key in a key policy, the user's
    # attempts to call those operations on your resources still fail."
    carol = server.client("carol")
    key = new_key(alice, policy(statement(f"arn:aws:iam::{OTHER_ACCOUNT}:root", "kms:*")))
    carol.encrypt(KeyId=key, Plaintext=b"x")
    carol.describe_key(KeyId=key)
    code, message = error_of(carol.schedule_key_deletion, KeyId=key, PendingWindowInDays=7)
    assert (code, message) == ("AccessDeniedException", (
        f"User: arn:aws:iam::{OTHER_ACCOUNT}:user/carol is not authorized to perform: kms:ScheduleKeyDeletion "
        f"on resource: {key} because no resource-based policy allows the kms:ScheduleKeyDeletion action"))
    for call, kwargs in [(carol.put_key_policy, {"PolicyName": "default", "Policy": policy()}),
                         (carol.disable_key, {}), (carol.get_key_policy, {"PolicyName": "default"}),
                         (carol.tag_resource, {"Tags": [{"TagKey": "a", "TagValue": "b"}]})]:
        assert error_of(call, KeyId=key, **kwargs)[0] == "AccessDeniedException"
    assert alice.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled"


def test_re_encrypt_on_same_key_compares_the_keys_not_the_key_ids(alice: Any, bob: Any) -> None:
    # kms:ReEncryptOnSameKey: "the same one used for the original encryption", whether the
    # request names the source (it may omit it) and the destination by id, ARN or alias.
    same = {"Bool": {"kms:ReEncryptOnSameKey": "true"}}
    key = new_key(alice, policy(statement(BOB, ["kms:Encrypt", "kms:DescribeKey"]),
                                statement(BOB, "kms:ReEncrypt*", Condition=same)))
    other = new_key(alice, policy(statement(BOB, "kms:ReEncrypt*")))
    alias = f"alias/same-{key.rsplit('/', 1)[1][:8]}"
    alice.create_alias(AliasName=alias, TargetKeyId=key)
    blob = bob.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    assert bob.re_encrypt(CiphertextBlob=blob, DestinationKeyId=key)["KeyId"] == key
    assert bob.re_encrypt(CiphertextBlob=blob, SourceKeyId=key, DestinationKeyId=alias)["KeyId"] == key
    code, message = error_of(bob.re_encrypt, CiphertextBlob=blob, DestinationKeyId=other)
    assert code == "AccessDeniedException" and "kms:ReEncryptFrom" in message


def test_data_key_pairs_carry_the_encryption_algorithm_condition(alice: Any, bob: Any) -> None:
    # kms:EncryptionAlgorithm covers GenerateDataKeyPair*: the algorithm encrypting the private key.
    symmetric = {"StringEquals": {"kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT"}}
    key = new_key(alice, policy(statement(BOB, "kms:GenerateDataKey*", Condition=symmetric)))
    pair = bob.generate_data_key_pair_without_plaintext(KeyId=key, KeyPairSpec="ECC_NIST_P256")
    assert pair["KeyId"] == key and pair["PrivateKeyCiphertextBlob"]


def test_policy_variables_need_version_2012_10_17(alice: Any, bob: Any) -> None:
    # Without "Version": "2012-10-17", "${aws:username}" is literal text, as in IAM.
    owner = {"StringEquals": {"kms:EncryptionContext:owner": "${aws:username}"}}
    statements = [statement(ROOT, "kms:*"), statement(BOB, "kms:Encrypt", Condition=owner)]
    old_style = new_key(alice, json.dumps({"Statement": statements}))
    code, _ = error_of(bob.encrypt, KeyId=old_style, Plaintext=b"x", EncryptionContext={"owner": "bob"})
    assert code == "AccessDeniedException"
    bob.encrypt(KeyId=old_style, Plaintext=b"x", EncryptionContext={"owner": "${aws:username}"})
    current = new_key(alice, json.dumps({"Version": "2012-10-17", "Statement": statements}))
    bob.encrypt(KeyId=current, Plaintext=b"x", EncryptionContext={"owner": "bob"})


def test_rotation_period_condition_sees_the_default_period(alice: Any) -> None:
    # Request conditions work "even when the parameter doesn't appear in the request, such as
    # when you use the parameter's default value": EnableKeyRotation without a period is 365 days.
    longer = {"NumericGreaterThan": {"kms:RotationPeriodInDays": "180"}}
    key = new_key(alice, policy(statement("*", "kms:EnableKeyRotation", "Deny", Condition=longer)))
    code, message = error_of(alice.enable_key_rotation, KeyId=key)
    assert code == "AccessDeniedException" and message.endswith("with an explicit deny in a resource-based policy")
    alice.enable_key_rotation(KeyId=key, RotationPeriodInDays=90)
    assert alice.get_key_rotation_status(KeyId=key)["RotationPeriodInDays"] == 90


def test_explicit_deny_beats_allow(alice: Any) -> None:
    key = new_key(alice, policy(statement(ALICE, "kms:Decrypt", effect="Deny")))
    blob = alice.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    code, message = error_of(alice.decrypt, CiphertextBlob=blob)
    assert code == "AccessDeniedException"
    assert message.endswith("with an explicit deny in a resource-based policy")


def test_a_request_too_costly_to_compare_with_the_key_policy_is_refused_unevaluated(alice: Any, bob: Any) -> None:
    # 16,000 context keys against 2,800 patterns held the node's one serving thread for 30 s, for
    # every caller, and bob may use no key at all.
    patterns = [f"*q*{n}" for n in range(2800)]
    deny = statement("*", "kms:Encrypt", effect="Deny",
                     Condition={"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": patterns}})
    key = new_key(alice, policy(deny))
    for caller in (bob, alice):
        code, message = error_of(caller.encrypt, KeyId=key, Plaintext=b"x",
                                 EncryptionContext={f"k{n}": "" for n in range(16_000)})
        assert code == "AccessDeniedException"
        assert message.endswith("comparisons, over keytrail's limit of 100,000 a request"), message
    alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"k1": "", "k2": ""})  # decided as ever
    assert error_of(alice.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"aq1": ""})[1].endswith(
        "with an explicit deny in a resource-based policy")


def test_grant_with_constraints_before_and_after_retire(alice: Any, bob: Any) -> None:
    key = new_key(alice)
    blob = alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"Dept": "IT", "App": "a"})["CiphertextBlob"]
    grant = alice.create_grant(
        KeyId=key,
        GranteePrincipal=BOB,
        RetiringPrincipal=BOB,
        Operations=["Decrypt"],
        Constraints={"EncryptionContextSubset": {"Dept": "IT"}},
    )
    assert len(grant["GrantId"]) == 64
    context = {"Dept": "IT", "App": "a"}
    bob.decrypt(CiphertextBlob=blob, EncryptionContext=context, GrantTokens=[grant["GrantToken"]])
    other = alice.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"Dept": "HR"})["CiphertextBlob"]
    assert error_of(bob.decrypt, CiphertextBlob=other, EncryptionContext={"Dept": "HR"})[0] == "AccessDeniedException"
    retirable = alice.list_retirable_grants(RetiringPrincipal=BOB)["Grants"]
    assert grant["GrantId"] in [g["GrantId"] for g in retirable]
    bob.retire_grant(GrantToken=grant["GrantToken"])
    assert error_of(bob.decrypt, CiphertextBlob=blob, EncryptionContext=context)[0] == "AccessDeniedException"
    assert alice.list_grants(KeyId=key)["Grants"] == []


def test_grant_equals_constraint_and_revoke(alice: Any, bob: Any) -> None:
    key = new_key(alice)
    grant = alice.create_grant(
        KeyId=key,
        GranteePrincipal=BOB,
        Operations=["Encrypt"],
        Constraints={"EncryptionContextEquals": {"Dept": "IT"}},
    )
    bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext={"Dept": "IT"})
    code, _ = error_of(bob.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"Dept": "IT", "More": "1"})
    assert code == "AccessDeniedException"
    listed = alice.list_grants(KeyId=key, GrantId=grant["GrantId"])["Grants"][0]
    assert listed["Constraints"] == {"EncryptionContextEquals": {"Dept": "IT"}}
    alice.revoke_grant(KeyId=key, GrantId=grant["GrantId"])
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x", EncryptionContext={"Dept": "IT"})[0] == (
        "AccessDeniedException"
    )


def test_grant_rules(alice: Any, bob: Any) -> None:
    key = new_key(alice)
    first = alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"], Name="app")
    again = alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"], Name="app")
    assert first["GrantId"] == again["GrantId"] and first["GrantToken"] != again["GrantToken"]
    assert error_of(alice.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["Sign"])[0] == (
        "ValidationException"
    )
    code, _ = error_of(bob.retire_grant, KeyId=key, GrantId=first["GrantId"])  # not retiring principal
    assert code == "AccessDeniedException"
    alice.retire_grant(KeyId=key, GrantId=first["GrantId"])  # the grant's account may retire it
    assert error_of(alice.retire_grant, GrantToken="garbage")[0] == "InvalidGrantTokenException"


def test_lockout_safety_check(alice: Any) -> None:
    only_bob = json.dumps({"Statement": [statement(BOB, "kms:*")]})
    code, message = error_of(alice.create_key, Policy=only_bob)
    assert (code, message) == (
        "MalformedPolicyDocumentException",
        "The new key policy will not allow you to update the key policy in the future.",
    )
    key = new_key(alice)
    assert error_of(alice.put_key_policy, KeyId=key, PolicyName="default", Policy=only_bob)[0] == (
        "MalformedPolicyDocumentException"
    )
    alice.put_key_policy(KeyId=key, PolicyName="default", Policy=only_bob, BypassPolicyLockoutSafetyCheck=True)
    assert error_of(alice.get_key_policy, KeyId=key, PolicyName="default")[0] == "AccessDeniedException"


def test_malformed_policy_names_what_is_wrong(alice: Any) -> None:
    bad = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*",
                                     "Resource": "*", "NotResource": "*"}]})
    code, message = error_of(alice.create_key, Policy=bad)
    assert code == "MalformedPolicyDocumentException"
    assert "exactly one of Resource or NotResource" in message


@pytest.mark.parametrize(("element", "message"), [
    ({"Action": "kms:*", "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*"},
     'Policy statement 2 (Sid \'Ops\'): the only Resource a key policy accepts is "*" '
     "(the KMS key the policy is attached to)."),
    ({"Resource": "*"}, "Policy statement 2 (Sid 'Ops') must contain exactly one of Action or NotAction."),
], ids=["key-arn-resource", "no-action"])
def test_a_statement_without_action_or_with_a_resource_other_than_star_is_refused(
        alice: Any, element: Any, message: str) -> None:
    # AWS Health notice (ministryofjustice/analytical-platform#7691): since 18 August 2025 CreateKey,
    # ReplicateKey and PutKeyPolicy refuse a key policy statement "without a valid Action or NotAction,
    # and Resource element". The API reference's older text had them taken with "no effect": a Deny
    # like this one protected nothing. (A policy stored before still loads: tests/unit/authz/test_policy.py.)
    deny_bob = {"Sid": "Ops", "Effect": "Deny", "Principal": {"AWS": BOB}, **element}
    refused = policy(deny_bob)
    assert error_of(alice.create_key, Policy=refused) == ("MalformedPolicyDocumentException", message)
    key = new_key(alice)
    assert error_of(alice.put_key_policy, KeyId=key, PolicyName="default", Policy=refused) == (
        "MalformedPolicyDocumentException", message)
    assert len(json.loads(alice.get_key_policy(KeyId=key)["Policy"])["Statement"]) == 1  # the default, kept


def test_a_principal_with_a_wildcard_inside_is_refused(alice: Any) -> None:
    # "You cannot use a wildcard to match part of a principal name or ARN": a Deny naming
    # `user/*` would deny no one, so the policy is refused rather than stored.
    key = new_key(alice)
    users = f"arn:aws:iam::{ACCOUNT}:user/*"
    code, message = error_of(alice.put_key_policy, KeyId=key, PolicyName="default",
                             Policy=policy(statement(users, "kms:Decrypt", "Deny")))
    assert code == "MalformedPolicyDocumentException"
    # AWS's words first (as CreateKey and PutKeyPolicy callers quote them), then what is wrong.
    assert message == ("Policy contains a statement with one or more invalid principals. "
                       f"Statement 2 names '{users}' (a wildcard cannot match part of a principal ARN).")


def test_a_principal_no_iam_identity_can_be_is_refused(alice: Any, bob: Any) -> None:
    # A Deny meant for "whoever calls" written with a policy variable names a user called
    # `${aws:username}`: no one. AWS refuses a principal that does not exist; keytrail took it and bob
    # went on decrypting.
    key = new_key(alice, policy(statement(BOB, USE)))
    variable = f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}"
    code, message = error_of(alice.put_key_policy, KeyId=key, PolicyName="default",
                             Policy=policy(statement(BOB, USE), statement(variable, "kms:Decrypt", "Deny")))
    assert (code, message) == ("MalformedPolicyDocumentException", "Policy contains a statement with one or more "
                               f"invalid principals. Statement 3 names '{variable}' (a policy variable is no "
                               "principal: variables work in Resource and Condition only).")
    assert len(json.loads(alice.get_key_policy(KeyId=key)["Policy"])["Statement"]) == 2  # unchanged
    spaced = f"arn:aws:iam::{ACCOUNT}:user/bob smith"
    assert error_of(alice.create_key, Policy=policy(statement(spaced, USE)))[1].endswith(
        f"names '{spaced}' (an IAM name has only letters, digits and +=,.@_-, at most 64 of them).")


@pytest.mark.parametrize("name", ["bob", f"arn:aws:iam::{ACCOUNT}:group/admins"])
def test_a_principal_that_names_no_principal_is_refused_in_awss_words(alice: Any, name: str) -> None:
    # AWS's message for a Principal it cannot use, as CreateKey and PutKeyPolicy callers quote it:
    # "Policy contains a statement with one or more invalid principals." (a user group is no principal).
    expected = ("MalformedPolicyDocumentException", "Policy contains a statement with one or more invalid "
                f"principals. Statement 2 (Sid 'Users') names '{name}'.")
    bad = policy(statement(name, "kms:Decrypt", Sid="Users"))
    assert error_of(alice.create_key, Policy=bad) == expected
    assert error_of(alice.put_key_policy, KeyId=new_key(alice), PolicyName="default", Policy=bad) == expected


def test_not_principal_in_an_allow_is_refused(alice: Any) -> None:
    # IAM: "NotPrincipal must be used with "Effect":"Deny"": an Allow to everyone but the named
    # principals would open the key to every other account's callers.
    key = new_key(alice)
    everyone_but_bob = {"Sid": "AllBut", "Effect": "Allow", "NotPrincipal": {"AWS": BOB}, "Action": "kms:Decrypt",
                        "Resource": "*"}
    code, message = error_of(alice.put_key_policy, KeyId=key, PolicyName="default",
                             Policy=policy(everyone_but_bob))
    assert code == "MalformedPolicyDocumentException"
    assert message == 'Policy statement 2 (Sid \'AllBut\'): NotPrincipal can only be used with "Effect": "Deny".'


def test_a_not_principal_deny_spares_a_user_only_with_its_account(alice: Any, bob: Any) -> None:
    # IAM, NotPrincipal: "you must also specify the account ARN of the not-denied principal.
    # Otherwise, the policy might deny access to the entire account containing the principal."
    use = statement(BOB, USE)
    for spared, allowed in (([BOB], False), ([BOB, ROOT], True)):
        deny = {"Effect": "Deny", "NotPrincipal": {"AWS": spared}, "Action": "kms:Encrypt", "Resource": "*"}
        key = new_key(alice, policy(use, deny))
        if allowed:
            bob.encrypt(KeyId=key, Plaintext=b"x")
        else:
            code, message = error_of(bob.encrypt, KeyId=key, Plaintext=b"x")
            assert code == "AccessDeniedException"
            assert message.endswith("with an explicit deny in a resource-based policy")


def test_request_alias_condition_in_a_key_policy(alice: Any, bob: Any) -> None:
    key = new_key(alice)
    named = statement(BOB, "kms:Encrypt", Condition={"StringEquals": {"kms:RequestAlias": f"alias/app-{key[-12:]}"}})
    other = new_key(alice, policy(named))
    alice.create_alias(AliasName=f"alias/app-{key[-12:]}", TargetKeyId=other)
    bob.encrypt(KeyId=f"alias/app-{key[-12:]}", Plaintext=b"x")
    assert error_of(bob.encrypt, KeyId=other, Plaintext=b"x")[0] == "AccessDeniedException"


def test_resource_aliases_condition_counts_in_iam_policies_only(tmp_path: Path) -> None:
    # "AWS KMS condition keys", kms:ResourceAliases: Policy type "IAM policies only". In an IAM
    # policy it matches the key's aliases whatever the KeyId form; a key policy with it is refused
    # in AWS's words (awsdocs/aws-kms-developer-guide PR #47). How a policy stored with it before is
    # evaluated (the key absent): tests/unit/authz/test_evaluator.py.
    by_alias = {"ForAnyValue:StringLike": {"kms:ResourceAliases": "alias/finance-*"}}
    server, erin = with_user(tmp_path, "erin", {"Effect": "Allow", "Action": "kms:Encrypt", "Resource": "*",
                                                "Condition": by_alias})
    try:
        alice = server.client("alice")
        assert error_of(alice.create_key, Policy=policy(statement(BOB, "kms:Encrypt", Condition=by_alias))) == (
            "MalformedPolicyDocumentException",
            "These condition keys are not permitted in a key policy: kms:ResourceAliases")
        key = new_key(alice)
        assert error_of(erin.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"
        alice.create_alias(AliasName=f"alias/finance-{key[-12:]}", TargetKeyId=key)
        erin.encrypt(KeyId=key, Plaintext=b"x")  # the key now has a matching alias: the IAM policy allows
    finally:
        server.stop()


def test_grants_on_ml_kem_keys_allow_encapsulate_and_decapsulate(alice: Any, bob: Any) -> None:
    key = alice.create_key(KeySpec="ML_KEM_768", KeyUsage="ENCAPSULATE_DECAPSULATE")["KeyMetadata"]["Arn"]
    alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Encapsulate", "Decapsulate", "GetPublicKey"])
    sent = bob.encapsulate(KeyId=key, EncapsulationAlgorithm="ML_KEM")
    received = bob.decapsulate(KeyId=key, EncapsulationAlgorithm="ML_KEM",
                               SharedSecretCiphertextBlob=sent["SharedSecretCiphertextBlob"])
    assert received["SharedSecret"] == sent["SharedSecret"]
    code, _ = error_of(alice.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"])
    assert code == "ValidationException"


def test_grant_with_source_arn_constraint_allows_no_direct_call(alice: Any, bob: Any) -> None:
    # AWS: a SourceArn grant constraint allows the grant's operations only for requests an AWS
    # service makes on behalf of that resource (aws:SourceArn); a direct caller never has one.
    key = new_key(alice)
    grant = alice.create_grant(
        KeyId=key, GranteePrincipal=BOB, Operations=["Encrypt", "DescribeKey", "RetireGrant"],
        Constraints={"SourceArn": f"arn:aws:logs:us-east-1:{ACCOUNT}:log-group:app"},
    )
    assert error_of(bob.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"
    assert error_of(bob.describe_key, KeyId=key)[0] == "AccessDeniedException"
    bob.retire_grant(GrantToken=grant["GrantToken"])  # the constraint does not apply to RetireGrant


def test_retirable_grants_include_other_accounts_keys(server: KeytrailServer, alice: Any) -> None:
    # ListRetirableGrants: "The grants that are returned include grants for KMS keys in your
    # Amazon Web Services account and other Amazon Web Services accounts."
    carol_arn = f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol"
    carol = server.client("carol")
    key = new_key(alice)
    grant = alice.create_grant(KeyId=key, GranteePrincipal=carol_arn, RetiringPrincipal=carol_arn,
                               Operations=["Decrypt"])
    listed = carol.list_retirable_grants(RetiringPrincipal=carol_arn)["Grants"]
    assert [g["GrantId"] for g in listed if g["KeyId"] == key] == [grant["GrantId"]]
    carol.retire_grant(KeyId=key, GrantId=grant["GrantId"])
    listed = carol.list_retirable_grants(RetiringPrincipal=carol_arn)["Grants"]
    assert [g for g in listed if g["KeyId"] == key] == []


def test_grant_to_a_bare_account_id_is_a_grant_to_that_account(server: KeytrailServer, alice: Any) -> None:
    # CreateGrant takes an account id, as a key policy does: its root, and its principals whom IAM
    # allows, use the grant; the account as retiring principal retires it.
    carol, other_root = server.client("carol"), server.client("other-root")
    key = new_key(alice)
    grant = alice.create_grant(KeyId=key, GranteePrincipal=OTHER_ACCOUNT, RetiringPrincipal=OTHER_ACCOUNT,
                               Operations=["Encrypt"])
    carol.encrypt(KeyId=key, Plaintext=b"x")
    other_root.encrypt(KeyId=key, Plaintext=b"x")
    other_root.retire_grant(KeyId=key, GrantId=grant["GrantId"])
    assert error_of(carol.encrypt, KeyId=key, Plaintext=b"x")[0] == "AccessDeniedException"


def test_a_deny_on_an_accounts_grantees_refuses_a_grant_to_its_bare_id(server: KeytrailServer, alice: Any) -> None:
    # The key policy forbids grants to account 444455556666 by the ARNs of its principals; a grant
    # to its bare id (keytrail's other name for that account) was let through, and carol used it.
    carol = server.client("carol")
    no_grants_to_other = statement("*", "kms:CreateGrant", "Deny", Condition={
        "StringLike": {"kms:GranteePrincipal": f"arn:aws:iam::{OTHER_ACCOUNT}:*"}})
    key = new_key(alice, policy(no_grants_to_other))
    blob = alice.encrypt(KeyId=key, Plaintext=b"secret")["CiphertextBlob"]
    for grantee in (f"arn:aws:iam::{OTHER_ACCOUNT}:root", OTHER_ACCOUNT):
        code, message = error_of(alice.create_grant, KeyId=key, GranteePrincipal=grantee, Operations=["Decrypt"])
        assert (code, message) == ("AccessDeniedException", (
            f"User: {ALICE} is not authorized to perform: kms:CreateGrant on resource: {key} with an explicit deny "
            "in a resource-based policy"))
    assert error_of(carol.decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
    # Named by its root's ARN, the key's own account takes grants under a condition written with its id.
    only_own = statement("*", "kms:CreateGrant", "Deny", Condition={
        "StringNotEquals": {"kms:GranteePrincipal": ACCOUNT}})
    own = new_key(alice, policy(only_own))
    alice.create_grant(KeyId=own, GranteePrincipal=ROOT, Operations=["Decrypt"])
    assert error_of(alice.create_grant, KeyId=own, GranteePrincipal=OTHER_ACCOUNT, Operations=["Decrypt"])[0] == \
        "AccessDeniedException"


def test_retirable_grants_of_an_account_are_listed_by_either_of_its_names(server: KeytrailServer, alice: Any) -> None:
    # RetireGrant takes an account's root ARN and its bare id alike; ListRetirableGrants listed only
    # the grants whose retiring principal was written as asked, so an audit of what the account may
    # retire missed the others.
    other_root = server.client("other-root")
    key = new_key(alice)
    by_id = alice.create_grant(KeyId=key, GranteePrincipal=BOB, RetiringPrincipal=OTHER_ACCOUNT, Operations=["Decrypt"])
    by_arn = alice.create_grant(KeyId=key, GranteePrincipal=BOB, RetiringPrincipal=f"arn:aws:iam::{OTHER_ACCOUNT}:root",
                                Operations=["Encrypt"])
    for name in (OTHER_ACCOUNT, f"arn:aws:iam::{OTHER_ACCOUNT}:root"):
        listed = other_root.list_retirable_grants(RetiringPrincipal=name)["Grants"]
        assert {g["GrantId"] for g in listed if g["KeyId"] == key} == {by_id["GrantId"], by_arn["GrantId"]}


def test_a_policy_asking_grants_for_a_constraint_is_not_met_by_an_empty_one(server: KeytrailServer, alice: Any,
                                                                             bob: Any) -> None:
    # "kms:GrantConstraintType" lets bob make grants only with an EncryptionContextSubset constraint:
    # one of no pairs was taken for one, and its grant let carol decrypt every tenant's ciphertext.
    carol = server.client("carol")
    constrained = statement(BOB, "kms:CreateGrant", Condition={
        "StringEquals": {"kms:GrantConstraintType": "EncryptionContextSubset"}})
    key = new_key(alice, policy(constrained))
    blob = alice.encrypt(KeyId=key, Plaintext=b"payroll", EncryptionContext={"tenant": "a"})["CiphertextBlob"]
    code, message = error_of(bob.create_grant, KeyId=key, GranteePrincipal=CAROL, Operations=["Decrypt"],
                             Constraints={"EncryptionContextSubset": {}})
    assert (code, message) == ("AccessDeniedException", (
        f"User: {BOB} is not authorized to perform: kms:CreateGrant on resource: {key} because no identity-based "
        "policy allows the kms:CreateGrant action"))
    assert error_of(carol.decrypt, CiphertextBlob=blob, EncryptionContext={"tenant": "a"})[0] == "AccessDeniedException"
    bob.create_grant(KeyId=key, GranteePrincipal=CAROL, Operations=["Decrypt"],
                     Constraints={"EncryptionContextSubset": {"tenant": "b"}})
    assert error_of(carol.decrypt, CiphertextBlob=blob, EncryptionContext={"tenant": "a"})[0] == "AccessDeniedException"


def test_grant_with_both_encryption_context_constraints_is_refused(alice: Any) -> None:
    # AWS answers such a request "ValidationException: More than one constraint supplied"
    # (aws/aws-sdk-java#328, and the guard terraform-provider-aws keeps for it).
    key = new_key(alice)
    both = {"EncryptionContextEquals": {"app": "a"}, "EncryptionContextSubset": {"dept": "b"}}
    code, message = error_of(alice.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"],
                             Constraints=both)
    assert (code, message) == ("ValidationException", "More than one constraint supplied")
    assert alice.list_grants(KeyId=key)["Grants"] == []


def test_grant_of_only_create_grant_is_refused(alice: Any) -> None:
    # AWS: "ValidationException: Grants must not contain only the CreateGrant operation."
    # (the answer quoted in ansible/ansible#31960); with another operation it is a valid grant.
    key = new_key(alice)
    code, message = error_of(alice.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["CreateGrant"])
    assert (code, message) == ("ValidationException", "Grants must not contain only the CreateGrant operation.")
    alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["CreateGrant", "Decrypt"])


def test_grant_constraints_over_aws_limits_are_refused(alice: Any) -> None:
    # CreateGrant's Constraints (botocore's model): "Each constraint value can include up to 8
    # encryption context pairs. The encryption context value in each constraint cannot exceed 384
    # characters."
    key = new_key(alice)
    eight = {f"k{i}": "v" for i in range(8)}
    alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"],
                       Constraints={"EncryptionContextSubset": eight})
    for constraints in (
        {"EncryptionContextSubset": {**eight, "k8": "v"}},
        {"EncryptionContextEquals": {"k": "v" * 385}},
        {"EncryptionContextEquals": {"k" * 385: "v"}},  # a key over it was taken
    ):
        code, _ = error_of(alice.create_grant, KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"],
                           Constraints=constraints)
        assert code == "ValidationException"
    assert len(alice.list_grants(KeyId=key)["Grants"]) == 1


def test_list_grants_with_a_malformed_grant_id_is_invalid_grant_id(alice: Any) -> None:
    # InvalidGrantIdException is in ListGrants' modelled errors ("the specified GrantId is not
    # valid"), as RevokeGrant and RetireGrant already answer for a malformed id.
    key = new_key(alice)
    grant_id = alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Decrypt"])["GrantId"]
    assert [g["GrantId"] for g in alice.list_grants(KeyId=key, GrantId=grant_id)["Grants"]] == [grant_id]
    assert error_of(alice.list_grants, KeyId=key, GrantId="not-a-grant-id")[0] == "InvalidGrantIdException"
    assert error_of(alice.revoke_grant, KeyId=key, GrantId="not-a-grant-id")[0] == "InvalidGrantIdException"
    assert error_of(alice.list_grants, KeyId=key, GrantId=grant_id + "\n")[0] == "InvalidGrantIdException"


def with_user(tmp_path: Path, name: str, *statements: dict[str, Any]) -> tuple[KeytrailServer, Any]:
    """A server of the test's own whose principals add IAM user `name` with these identity
    statements, and a boto3 client acting as that user."""
    arn, access_key = f"arn:aws:iam::{ACCOUNT}:user/{name}", f"AKIA{name.upper():0<16}"[:20]
    identity = json.dumps({"Version": "2012-10-17", "Statement": list(statements)})
    principals = {**PRINCIPALS, name: (arn, access_key, f"{name}-secret", [identity], None)}
    server = KeytrailServer(tmp_path / "data", principals=write_principals(tmp_path / "p.toml", principals)).start()
    client = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=access_key, aws_secret_access_key=f"{name}-secret")
    return server, client


def test_retire_grant_follows_the_grant_not_the_key_policy(tmp_path: Path) -> None:
    # "Retiring and revoking grants": kms:RetireGrant is not effective in a key policy, the
    # grant's account may always retire, and an IAM Deny refuses even the retiring principal.
    dora = f"arn:aws:iam::{ACCOUNT}:user/dora"
    server, dora_client = with_user(tmp_path, "dora", {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
                                    {"Effect": "Deny", "Action": "kms:RetireGrant", "Resource": "*"})
    try:
        alice, bob, root = server.client("alice"), server.client("bob"), server.client("root")
        # No statement names the account: the root retires as the grant's account, not by delegation.
        key = new_key(alice, json.dumps({"Version": "2012-10-17", "Statement": [
            statement(BOB, ["kms:RetireGrant", "kms:DescribeKey"]), statement(ALICE, "kms:*")]}))
        grant = alice.create_grant(KeyId=key, GranteePrincipal=dora, RetiringPrincipal=dora, Operations=["Decrypt"])
        code, message = error_of(bob.retire_grant, KeyId=key, GrantId=grant["GrantId"])
        assert (code, message) == ("AccessDeniedException", (
            f"User: {BOB} is not authorized to perform: kms:RetireGrant on resource: {key} "
            "because no identity-based policy allows the kms:RetireGrant action"))
        code, message = error_of(dora_client.retire_grant, GrantToken=grant["GrantToken"])
        assert (code, message) == ("AccessDeniedException", (
            f"User: {dora} is not authorized to perform: kms:RetireGrant on resource: {key} "
            "with an explicit deny in an identity-based policy"))
        root.retire_grant(KeyId=key, GrantId=grant["GrantId"])
        assert alice.list_grants(KeyId=key)["Grants"] == []
    finally:
        server.stop()


def test_alias_operations_need_an_iam_allow_on_the_alias(tmp_path: Path) -> None:
    # "Controlling access to aliases": kms:CreateAlias/UpdateAlias/DeleteAlias on the alias come
    # from IAM policies (Resource: the alias ARN), on the key from its key policy.
    alias_arn = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias"
    server, erin = with_user(
        tmp_path, "erin",
        {"Effect": "Allow", "Action": "kms:*", "Resource": [f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*",
                                                             f"{alias_arn}/app-*"]},
        {"Effect": "Deny", "Action": "kms:DeleteAlias", "Resource": f"{alias_arn}/app-keep"})
    try:
        alice, bob = server.client("alice"), server.client("bob")
        key = new_key(alice, policy(statement(BOB, ["kms:CreateAlias", "kms:DescribeKey", "kms:ListAliases"])))
        code, message = error_of(bob.create_alias, AliasName="alias/bobs", TargetKeyId=key)
        assert (code, message) == ("AccessDeniedException", (
            f"User: {BOB} is not authorized to perform: kms:CreateAlias on resource: {alias_arn}/bobs "
            "because no identity-based policy allows the kms:CreateAlias action"))
        assert error_of(bob.list_aliases, KeyId=key)[0] == "AccessDeniedException"  # IAM only
        erin.create_alias(AliasName="alias/app-one", TargetKeyId=key)
        erin.create_alias(AliasName="alias/app-keep", TargetKeyId=key)
        assert error_of(erin.create_alias, AliasName="alias/prod-one", TargetKeyId=key)[0] == (
            "AccessDeniedException")
        code, message = error_of(erin.delete_alias, AliasName="alias/app-keep")
        assert message.endswith("on resource: " + alias_arn + "/app-keep with an explicit deny in an "
                                "identity-based policy")
        erin.delete_alias(AliasName="alias/app-one")
        assert [a["AliasName"] for a in alice.list_aliases(KeyId=key)["Aliases"]] == ["alias/app-keep"]
    finally:
        server.stop()


def test_lockout_check_counts_an_iam_policy_scoped_to_key_arns(tmp_path: Path) -> None:
    # A later PutKeyPolicy is authorized against the key's ARN, so IAM on `…:key/*` keeps access.
    keys = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*"
    server, fay = with_user(tmp_path, "fay", {"Effect": "Allow", "Action": "kms:*", "Resource": keys},
                            {"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"})
    try:
        key = new_key(fay, policy())
        fay.put_key_policy(KeyId=key, PolicyName="default", Policy=policy())
        only_alice = json.dumps({"Version": "2012-10-17", "Statement": [statement(ALICE, "kms:*")]})
        code, message = error_of(fay.put_key_policy, KeyId=key, PolicyName="default", Policy=only_alice)
        assert (code, message) == ("MalformedPolicyDocumentException",
                                   "The new key policy will not allow you to update the key policy in the future.")
    finally:
        server.stop()


def test_create_key_with_tags_needs_tag_resource_in_iam(tmp_path: Path) -> None:
    # CreateKey: "To use the Tags parameter, kms:TagResource (IAM policy)"; tags can grant access
    # (ABAC), so a Deny on a tag must hold at creation too.
    keys = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*"
    server, gus = with_user(
        tmp_path, "gus",
        {"Effect": "Allow", "Action": ["kms:CreateKey", "kms:DescribeKey"], "Resource": "*"},
        {"Effect": "Allow", "Action": ["kms:TagResource", "kms:ListResourceTags"], "Resource": keys},
        {"Effect": "Deny", "Action": "kms:TagResource", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestTag/admin": "true"}}})
    try:
        new_key(gus)  # no Tags: kms:CreateKey alone
        tagged = gus.create_key(Tags=[{"TagKey": "team", "TagValue": "blue"}])["KeyMetadata"]["KeyId"]
        assert gus.list_resource_tags(KeyId=tagged)["Tags"] == [{"TagKey": "team", "TagValue": "blue"}]
        code, message = error_of(gus.create_key, Tags=[{"TagKey": "admin", "TagValue": "true"}])
        assert code == "AccessDeniedException"
        # AWS's message names no resource: the key it would have tagged never exists.
        assert message == (f"User: arn:aws:iam::{ACCOUNT}:user/gus is not authorized to perform: kms:TagResource "
                           "with an explicit deny in an identity-based policy")
    finally:
        server.stop()


def test_replicate_key_with_tags_denied_names_no_resource(tmp_path: Path) -> None:
    # As CreateKey's: the replica a denied ReplicateKey would have tagged never exists.
    server, gus = with_user(
        tmp_path, "gus", {"Effect": "Allow", "Action": ["kms:CreateKey", "kms:ReplicateKey"], "Resource": "*"})
    try:
        primary = gus.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
        assert error_of(gus.replicate_key, KeyId=primary, ReplicaRegion="eu-west-1",
                        Tags=[{"TagKey": "team", "TagValue": "blue"}]) == (
            "AccessDeniedException",
            f"User: arn:aws:iam::{ACCOUNT}:user/gus is not authorized to perform: kms:TagResource "
            "because no identity-based policy allows the kms:TagResource action")
    finally:
        server.stop()


def test_policy_name_condition_sees_the_default_policy_name(alice: Any, bob: Any) -> None:
    # PutKeyPolicy and GetKeyPolicy: "If the request doesn't include PolicyName, the value of
    # kms:PolicyName is default" (API reference).
    only_default = {"StringEquals": {"kms:PolicyName": "default"}}
    key = new_key(alice, policy(statement(BOB, ["kms:GetKeyPolicy", "kms:PutKeyPolicy"], Condition=only_default)))
    assert json.loads(bob.get_key_policy(KeyId=key)["Policy"])["Statement"][1]["Principal"]["AWS"] == BOB
    assert bob.get_key_policy(KeyId=key, PolicyName="default")["PolicyName"] == "default"
    # The lockout check asks about a later PutKeyPolicy, whose kms:PolicyName is "default" too.
    bob.put_key_policy(KeyId=key, Policy=policy(statement(BOB, "kms:PutKeyPolicy", Condition=only_default)))


def test_put_key_policy_named_aws_ram_is_refused_after_authorization(alice: Any, bob: Any) -> None:
    # PutKeyPolicy: "If you specify AWS_RAM, the request fails with a ValidationException, or with an
    # AccessDeniedException if you don't have permission to call PutKeyPolicy with that policy name."
    key = new_key(alice)
    assert error_of(alice.put_key_policy, KeyId=key, PolicyName="AWS_RAM", Policy=policy()) == (
        "ValidationException", "The AWS_RAM policy can only be managed by the RAM service.")
    code, message = error_of(bob.put_key_policy, KeyId=key, PolicyName="AWS_RAM", Policy=policy())
    assert code == "AccessDeniedException" and "kms:PutKeyPolicy" in message


def test_a_resource_tag_deny_is_not_dodged_by_a_twin_tag_in_another_case(alice: Any, bob: Any) -> None:
    # Tag keys are case sensitive, a condition key's name is not: `team=public` tagged before
    # `Team=secret` must not hide the tag a Deny names.
    deny = statement(BOB, "kms:Encrypt", "Deny", Condition={"StringEquals": {"aws:ResourceTag/Team": "secret"}})
    key = new_key(alice, policy(statement(BOB, "kms:Encrypt"), deny))
    twins = [{"TagKey": "team", "TagValue": "public"}, {"TagKey": "Team", "TagValue": "secret"}]
    alice.tag_resource(KeyId=key, Tags=twins)
    code, message = error_of(bob.encrypt, KeyId=key, Plaintext=b"x")
    assert code == "AccessDeniedException"
    assert message.endswith("with an explicit deny in a resource-based policy")


def test_an_mfa_deny_refuses_role_sessions_not_long_term_keys(server: KeytrailServer, alice: Any) -> None:
    # aws:MultiFactorAuthPresent "is present only in requests that are signed using temporary security
    # credentials" (an assumed-role session's: false without MFA); absent for an IAM user's access keys,
    # so `Bool: false` does not match them (the AWS knowledge-center example's point).
    no_mfa = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
              "Condition": {"Bool": {"aws:MultiFactorAuthPresent": "false"}}}
    key = new_key(alice, policy(no_mfa))
    alice.encrypt(KeyId=key, Plaintext=b"x")
    code, message = error_of(server.client("app").encrypt, KeyId=key, Plaintext=b"x")
    assert code == "AccessDeniedException"
    assert message == (f"User: arn:aws:sts::{ACCOUNT}:assumed-role/app/app-session is not authorized to perform: "
                       f"kms:Encrypt on resource: {key} with an explicit deny in a resource-based policy")


@pytest.mark.parametrize("dev_clock", [False, True], ids=["detector-child", "in-process-detector"])
def test_organization_conditions_let_in_the_organizations_accounts_only(tmp_path: Path, dev_clock: bool) -> None:
    """A key policy opening the key to "any principal of my organization", behind a data-perimeter
    Deny on callers outside it: aws:PrincipalOrgID was always absent, so it let in nobody."""
    stranger = "777788889999"
    principals = write_principals(tmp_path / "p.toml", {**PRINCIPALS, "dave": (
        f"arn:aws:iam::{stranger}:user/dave", "AKIADAVE000000000001", "dave-secret", PRINCIPALS["alice"][3], None)})
    principals.write_text(principals.read_text() + f'\n[[organization]]\nid = "o-a1b2c3d4e5"\n'
                                                   f'accounts = ["{ACCOUNT}", "{OTHER_ACCOUNT}"]\n')
    server = KeytrailServer(tmp_path / "data", principals=principals, dev_clock=dev_clock).start()
    try:
        in_organization = {"StringEquals": {"aws:PrincipalOrgID": "o-a1b2c3d4e5"}}
        key = new_key(server.client("alice"), policy(
            statement(f"arn:aws:iam::{ACCOUNT}:root", "kms:*"),
            statement("*", ["kms:Encrypt", "kms:DescribeKey"], Condition=in_organization),
            statement("*", "kms:*", "Deny", Condition={"StringNotEquals": {"aws:PrincipalOrgID": "o-a1b2c3d4e5"}})))
        server.client("carol").encrypt(KeyId=key, Plaintext=b"x")  # another account of the organization
        dave = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                            aws_access_key_id="AKIADAVE000000000001", aws_secret_access_key="dave-secret")
        assert error_of(dave.encrypt, KeyId=key, Plaintext=b"x") == ("AccessDeniedException", (
            f"User: arn:aws:iam::{stranger}:user/dave is not authorized to perform: kms:Encrypt on resource: {key} "
            "with an explicit deny in a resource-based policy"))
        # serve's detector trusts the key account's own organization as it does the account: only the
        # same opening to another organization is permissive (judged in order: once its alarm is in,
        # the first key was judged too)
        shared_elsewhere = new_key(server.client("alice"), policy(
            statement(f"arn:aws:iam::{ACCOUNT}:root", "kms:*"),
            statement("*", "kms:Encrypt", Condition={"StringEquals": {"aws:PrincipalOrgID": "o-f6g7h8i9j0"}})))
        alarms = server.data_dir / "alarms.jsonl"
        eventually_blocking(lambda: alarms.exists() and shared_elsewhere in alarms.read_text(),
                            what="the permissive-key alarm of the key opened to another organization")
        flagged = [a for line in alarms.read_text().splitlines() if (a := json.loads(line))["rule"] == "permissive-key"]
        assert [a["keyArn"] for a in flagged] == [shared_elsewhere]  # (dave's denial raised its own alarm)
        assert "org o-f6g7h8i9j0" in flagged[0]["summary"]
    finally:
        server.stop()


def _tagged_user(name: str, tags: str) -> str:
    """A principals-file entry of IAM user `name`, with no identity policy, tagged as `tags` says."""
    return (f'[[principal]]\narn = "arn:aws:iam::{ACCOUNT}:user/{name}"\naccess_key_id = "AKIA{name.upper():0<16}"\n'
            f'secret_access_key = "{name}-secret"\ntags = {{ {tags} }}\n')


def test_principal_tags_decide_an_abac_key_policy_and_follow_a_reload(tmp_path: Path) -> None:
    # Attribute-based access: a key policy that lets in the account's principals tagged team=payments
    # and lets each put its own team, read from its tag, in the encryption context it may use.
    principals = write_principals(tmp_path / "p.toml")
    team_tags = (_tagged_user("tess", 'team = "payments"'), _tagged_user("ted", 'Team = "marketing"'))
    principals.write_text(principals.read_text() + "\n" + "\n".join(team_tags))
    server = KeytrailServer(tmp_path / "data", principals=principals).start()
    try:
        key = new_key(server.client("alice"), policy(
            statement("*", ["kms:Encrypt", "kms:DescribeKey"], Condition={
                "StringEquals": {"aws:PrincipalTag/team": "payments", "aws:PrincipalAccount": ACCOUNT}}),
            statement("*", "kms:GenerateDataKey", Condition={
                "StringEquals": {"kms:EncryptionContext:team": "${aws:PrincipalTag/team}"}})))
        tess, ted = (boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                                  aws_access_key_id=f"AKIA{name.upper():0<16}", aws_secret_access_key=f"{name}-secret")
                     for name in ("tess", "ted"))
        tess.encrypt(KeyId=key, Plaintext=b"x")
        tess.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"team": "payments"})
        assert error_of(tess.generate_data_key, KeyId=key, KeySpec="AES_256",
                        EncryptionContext={"team": "marketing"})[0] == "AccessDeniedException"
        code, message = error_of(ted.encrypt, KeyId=key, Plaintext=b"x")
        assert (code, message) == ("AccessDeniedException", (
            f"User: arn:aws:iam::{ACCOUNT}:user/ted is not authorized to perform: kms:Encrypt on resource: {key} "
            "because no identity-based policy allows the kms:Encrypt action"))  # nor the key policy
        # The condition key's name is case-insensitive: ted's `Team` tag is aws:PrincipalTag/team.
        ted.generate_data_key(KeyId=key, KeySpec="AES_256", EncryptionContext={"team": "marketing"})

        principals.write_text(principals.read_text().replace('Team = "marketing"', 'team = "payments"'))

        def ted_encrypts() -> None:  # a denial cached by what the policy read before would hold
            try:
                ted.encrypt(KeyId=key, Plaintext=b"x")
            except ClientError as error:  # not reloaded yet: SIGHUP is handled by the server's loop
                raise AssertionError(error.response["Error"]["Message"]) from error

        server.after_sighup(ted_encrypts)
    finally:
        server.stop()


def test_a_deny_naming_a_user_is_not_dodged_by_its_other_access_key_written_with_another_path(
        tmp_path: Path) -> None:
    # A user rotating its key holds two; the second entry, copied with the same policies, wrote the
    # user's ARN with a path and another case. keytrail took both as one identity, yet each key's
    # caller acted as its own spelling: the key policy's Deny on alice missed the calls of the second.
    principals = write_principals(tmp_path / "p.toml")
    server = KeytrailServer(tmp_path / "data", principals=principals).start()
    try:
        alice = server.client("alice")
        key = new_key(alice, policy(statement(ALICE, "kms:Decrypt", "Deny")))
        blob = alice.encrypt(KeyId=key, Plaintext=b"payroll")["CiphertextBlob"]
        second = PRINCIPALS["alice"][3][0]
        principals.write_text(principals.read_text() + (
            f'\n[[principal]]\narn = "arn:aws:iam::{ACCOUNT}:user/staff/Alice"\n'
            f'access_key_id = "AKIAALICE000000000002"\nsecret_access_key = "alice-secret-2"\n'
            f"policies = ['''{second}''']\n"))
        assert server.proc is not None
        server.proc.send_signal(signal.SIGHUP)
        refused = (f"principal #7: arn:aws:iam::{ACCOUNT}:user/staff/Alice is {ALICE} of principal #1 with another "
                   "path or case; an identity's ARN is the same whichever access key signs")
        eventually_blocking(lambda: refused in server.log.read_text(), what="the reload's refusal in the log")
        rotated = boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                               aws_access_key_id="AKIAALICE000000000002", aws_secret_access_key="alice-secret-2")
        assert error_of(rotated.decrypt, CiphertextBlob=blob)[0] == "UnrecognizedClientException"
        assert error_of(alice.decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
    finally:
        server.stop()
