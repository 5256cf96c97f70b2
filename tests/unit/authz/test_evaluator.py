"""Access decisions: key policy, identity policies, grants, cross-account, caching, lockout."""

from __future__ import annotations

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict, denial_message
from keytrail.kms.errors import InvalidGrantTokenException, MalformedPolicyDocumentException
from keytrail.kms.evaluator import LOCKOUT_MESSAGE, PolicyAuthorizer, check_lockout
from keytrail.kms.policy import default_policy

from .support import (
    ACCOUNT,
    NOW,
    OTHER,
    allow_all_identity,
    authorizer,
    call,
    doc,
    grant,
    key,
    request,
    role,
    root,
    user,
)

ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"


def allow(principal: Any, actions: Any = "kms:*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Principal": {"AWS": principal}, "Action": actions, "Resource": "*", **extra}


def decide(principal: Any, the_key: Any, action: str = "kms:Encrypt", params: Any = None, **kw: Any) -> Any:
    return authorizer().authorize(request(principal, action, the_key, params, **kw))


def test_default_policy_with_iam_allow_allows() -> None:
    alice = user("alice", ACCOUNT, allow_all_identity())
    assert decide(alice, key(default_policy(ACCOUNT))).verdict is Verdict.ALLOW


def test_default_policy_without_iam_policy_is_implicit_identity_deny() -> None:
    decision = decide(user("alice"), key(default_policy(ACCOUNT)))
    assert (decision.verdict, decision.policy_type) == (Verdict.IMPLICIT_DENY, "identity-based")


def test_key_policy_naming_the_user_allows_without_iam() -> None:
    assert decide(user("alice"), key(doc(allow(ALICE_ARN, "kms:Encrypt")))).allowed


def test_the_user_name_in_a_principal_arn_is_case_sensitive() -> None:
    # IAM, "AWS JSON policy elements: Principal", IAM user principals: "In a Principal element, the
    # user name part of the Amazon Resource Name (ARN) is case sensitive."
    upper = f"arn:aws:iam::{ACCOUNT}:user/Alice"
    assert not decide(user("alice"), key(doc(allow(upper, "kms:Encrypt")))).allowed
    assert decide(user("Alice"), key(doc(allow(upper, "kms:Encrypt")))).allowed
    assert not decide(user("Alice"), key(doc(allow(ALICE_ARN, "kms:Encrypt")))).allowed


def test_iam_allow_without_key_policy_delegation_is_resource_based_deny() -> None:
    alice = user("alice", ACCOUNT, allow_all_identity())
    decision = decide(alice, key(doc(allow(f"arn:aws:iam::{ACCOUNT}:user/bob"))))
    assert (decision.verdict, decision.policy_type) == (Verdict.IMPLICIT_DENY, "resource-based")


def test_role_is_matched_by_role_arn_for_its_sessions() -> None:
    assert decide(role("app"), key(doc(allow(f"arn:aws:iam::{ACCOUNT}:role/app")))).allowed


def test_account_root_caller_is_allowed_by_root_delegation() -> None:
    assert decide(root(), key(default_policy(ACCOUNT))).allowed


def test_explicit_deny_in_key_policy_beats_allow() -> None:
    alice = user("alice", ACCOUNT, allow_all_identity())
    policy = doc(allow(ROOT_ARN), {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"})
    decision = decide(alice, key(policy), "kms:Decrypt")
    assert (decision.verdict, decision.policy_type) == (Verdict.EXPLICIT_DENY, "resource-based")
    assert decide(alice, key(policy), "kms:Encrypt").allowed


def test_explicit_deny_in_identity_policy_beats_key_policy_allow() -> None:
    deny = doc({"Effect": "Deny", "Action": "kms:Encrypt", "Resource": "*"})
    alice = user("alice", ACCOUNT, deny)
    decision = decide(alice, key(doc(allow(ALICE_ARN))))
    assert (decision.verdict, decision.policy_type) == (Verdict.EXPLICIT_DENY, "identity-based")


def test_identity_policy_resource_must_match_the_key_arn() -> None:
    scoped = doc({"Effect": "Allow", "Action": "kms:*", "Resource": f"arn:aws:kms:*:{ACCOUNT}:key/*"})
    assert decide(user("alice", ACCOUNT, scoped), key(default_policy(ACCOUNT))).allowed
    other = doc({"Effect": "Allow", "Action": "kms:*", "Resource": f"arn:aws:kms:*:{OTHER}:key/*"})
    assert not decide(user("alice", ACCOUNT, other), key(default_policy(ACCOUNT))).allowed


def test_action_matching_is_case_insensitive_with_wildcards() -> None:
    policy = key(doc(allow(ALICE_ARN, ["KMS:generate*", "kms:DESCRIBEKEY"])))
    assert decide(user("alice"), policy, "kms:GenerateDataKey").allowed
    assert decide(user("alice"), policy, "kms:DescribeKey").allowed
    assert not decide(user("alice"), policy, "kms:Encrypt").allowed


def test_not_action_allows_everything_else() -> None:
    policy = key(doc({"Effect": "Allow", "Principal": {"AWS": ALICE_ARN}, "NotAction": "kms:Decrypt", "Resource": "*"}))
    assert decide(user("alice"), policy, "kms:Encrypt").allowed
    assert not decide(user("alice"), policy, "kms:Decrypt").allowed


def test_not_principal_deny_spares_only_the_named_principal() -> None:
    policy = key(
        doc(
            allow("*"),
            {"Effect": "Deny", "NotPrincipal": {"AWS": [ALICE_ARN, ROOT_ARN]}, "Action": "kms:*", "Resource": "*"},
        )
    )
    assert decide(user("alice"), policy).allowed
    assert decide(root(), policy).allowed
    assert decide(user("bob"), policy).verdict is Verdict.EXPLICIT_DENY


def test_a_not_principal_deny_without_the_callers_account_denies_it() -> None:
    # IAM, NotPrincipal: "you must also specify the account ARN of the not-denied principal.
    # Otherwise, the policy might deny access to the entire account containing the principal."
    assert decide(user("alice"), _deny_all_but(ALICE_ARN)).verdict is Verdict.EXPLICIT_DENY
    assert decide(user("alice"), _deny_all_but(ALICE_ARN, ACCOUNT)).allowed  # the bare account id names it too
    session = role("app")
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/app"
    assert decide(session, _deny_all_but(session.arn, role_arn)).verdict is Verdict.EXPLICIT_DENY
    assert decide(session, _deny_all_but(session.arn, ROOT_ARN)).verdict is Verdict.EXPLICIT_DENY
    assert decide(root(), _deny_all_but(ACCOUNT)).allowed
    assert decide(root(), _deny_all_but(ALICE_ARN)).verdict is Verdict.EXPLICIT_DENY


def test_a_stored_not_principal_allow_grants_no_one() -> None:
    # Refused when a policy is set (IAM supports NotPrincipal only with Deny); one stored by an
    # earlier release must not open the key to everyone not named.
    policy = key(doc({"Effect": "Allow", "NotPrincipal": {"AWS": ALICE_ARN}, "Action": "kms:*", "Resource": "*"}))
    assert not decide(user("bob"), policy).allowed
    assert not decide(user("alice"), policy).allowed


def test_a_not_principal_deny_of_everyone_listed_denies_no_one() -> None:
    # NotPrincipal "*" spares every principal: the Deny hits no one, so the Allow stands.
    policy = key(doc(allow("*"), {"Effect": "Deny", "NotPrincipal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}))
    for caller in (user("alice"), role("app"), root()):
        assert decide(caller, policy).allowed


def _deny_all_but(*arns: str) -> Any:
    return key(doc(allow("*"), {"Effect": "Deny", "NotPrincipal": {"AWS": list(arns)}, "Action": "kms:*",
                                "Resource": "*"}))


def test_a_not_principal_deny_naming_a_role_still_denies_its_sessions() -> None:
    session = role("app")
    role_arn = f"arn:aws:iam::{ACCOUNT}:role/app"
    assert decide(session, _deny_all_but(role_arn, ROOT_ARN)).verdict is Verdict.EXPLICIT_DENY
    assert decide(session, _deny_all_but(session.arn, role_arn, ROOT_ARN)).allowed
    assert decide(session, key(doc(allow(role_arn)))).allowed  # in Principal, the role does cover them


def test_a_key_policy_naming_a_role_session_allows_that_session() -> None:
    # "Role session principals" (AWS JSON policy elements: Principal): the session's own ARN.
    session = role("app")
    assert decide(session, key(doc(allow(session.arn)))).allowed
    another = dataclasses.replace(session, arn=session.arn.replace("/session", "/other"), session_name="other")
    assert not decide(another, key(doc(allow(session.arn)))).allowed  # another session of the role


def test_cross_account_needs_key_policy_and_caller_identity_policy() -> None:
    external = key(doc(allow(ROOT_ARN), allow(OTHER, "kms:Encrypt")))
    bob = user("bob", OTHER)
    assert decide(bob, external).verdict is Verdict.IMPLICIT_DENY
    bob_allowed = user("bob", OTHER, allow_all_identity())
    assert decide(bob_allowed, external).allowed
    assert not decide(bob_allowed, external, "kms:Decrypt").allowed


def test_cross_account_principal_named_directly_still_needs_its_iam_policy() -> None:
    external = key(doc(allow(f"arn:aws:iam::{OTHER}:user/bob")))
    assert not decide(user("bob", OTHER), external).allowed
    assert decide(user("bob", OTHER, allow_all_identity()), external).allowed


def test_key_policy_of_another_account_alone_never_lets_the_key_owner_in() -> None:
    assert not decide(user("alice", ACCOUNT, allow_all_identity()), key(doc(allow(OTHER)))).allowed


def test_keyless_operations_are_decided_by_identity_policies() -> None:
    alice = user("alice", ACCOUNT, doc({"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*"}))
    assert decide(alice, None, "kms:CreateKey").allowed
    assert decide(alice, None, "kms:ListKeys").verdict is Verdict.IMPLICIT_DENY
    assert decide(root(), None, "kms:ListKeys").allowed


def test_denial_message_has_aws_wording() -> None:
    alice = user("alice")
    the_key = key(default_policy(ACCOUNT))
    req = request(alice, "kms:Decrypt", the_key)
    message = denial_message(req, authorizer().authorize(req))
    assert message == (
        f"User: {ALICE_ARN} is not authorized to perform: kms:Decrypt on resource: {the_key.arn} "
        "because no identity-based policy allows the kms:Decrypt action"
    )


def test_explicit_deny_messages_name_the_policy_type_with_aws_article() -> None:
    deny = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
               {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*"})
    req = request(user("alice", ACCOUNT, deny), "kms:Decrypt", key(default_policy(ACCOUNT)))
    assert denial_message(req, authorizer().authorize(req)).endswith(
        "with an explicit deny in an identity-based policy")
    the_key = key(doc(allow(ROOT_ARN), {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}))
    req = request(user("alice", ACCOUNT, allow_all_identity()), "kms:Decrypt", the_key)
    assert denial_message(req, authorizer().authorize(req)).endswith(
        "with an explicit deny in a resource-based policy")


# --- condition keys from the request, the caller, the key and the clock -------------------------


def test_encryption_context_condition() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                "kms:Decrypt",
                Condition={"StringEquals": {"kms:EncryptionContext:Department": "IT"}},
            )
        )
    )
    assert decide(user("alice"), policy, "kms:Decrypt", {"EncryptionContext": {"Department": "IT"}}).allowed
    assert not decide(user("alice"), policy, "kms:Decrypt", {"EncryptionContext": {"Department": "HR"}}).allowed
    assert not decide(user("alice"), policy, "kms:Decrypt", {}).allowed


def test_encryption_context_keys_with_for_all_values() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                "kms:Encrypt",
                Condition={
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["Purpose", "Dept"]},
                    "Null": {"kms:EncryptionContextKeys": "false"},
                },
            )
        )
    )
    assert decide(user("alice"), policy, params={"EncryptionContext": {"Purpose": "x"}}).allowed
    assert not decide(user("alice"), policy, params={"EncryptionContext": {"Other": "x"}}).allowed
    assert not decide(user("alice"), policy, params={}).allowed


def test_source_ip_and_secure_transport() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                Condition={
                    "IpAddress": {"aws:SourceIp": "10.0.0.0/8"},
                    "Bool": {"aws:SecureTransport": "true"},
                },
            )
        )
    )
    assert decide(user("alice"), policy, source_ip="10.1.2.3", secure_transport=True).allowed
    assert not decide(user("alice"), policy, source_ip="192.168.1.1", secure_transport=True).allowed
    assert not decide(user("alice"), policy, source_ip="10.1.2.3", secure_transport=False).allowed


def test_current_time_comes_from_the_injected_clock() -> None:
    policy = key(doc(allow(ALICE_ARN, Condition={"DateLessThan": {"aws:CurrentTime": "2026-06-02T00:00:00Z"}})))
    clock = ManualClock(NOW)
    authz = PolicyAuthorizer(clock)
    req = request(user("alice"), "kms:Encrypt", policy)
    assert authz.authorize(req).allowed
    clock.advance(timedelta(days=1).total_seconds())
    assert not authz.authorize(req).allowed  # the cache keys on aws:CurrentTime, so no stale allow


def test_epoch_time_username_and_principal_keys() -> None:
    policy = key(
        doc(
            allow(
                "*",
                Condition={
                    "NumericLessThan": {"aws:EpochTime": int(NOW.timestamp()) + 10},
                    "StringEquals": {
                        "aws:username": "alice",
                        "aws:PrincipalAccount": ACCOUNT,
                        "kms:CallerAccount": ACCOUNT,
                    },
                    "ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/*"},
                },
            )
        )
    )
    assert decide(user("alice"), policy).allowed
    assert not decide(user("bob"), policy).allowed
    assert not decide(role("app"), policy).allowed


def test_key_attribute_and_resource_tag_keys() -> None:
    condition = {
        "StringEquals": {
            "kms:KeySpec": "SYMMETRIC_DEFAULT",
            "kms:KeyUsage": "ENCRYPT_DECRYPT",
            "kms:KeyOrigin": "AWS_KMS",
            "aws:ResourceTag/Project": "alpha",
        },
        "Bool": {"kms:MultiRegion": "false"},
    }
    policy = doc(allow(ALICE_ARN, Condition=condition))
    assert decide(user("alice"), key(policy, tags=(("project", "alpha"),))).allowed
    assert not decide(user("alice"), key(policy, tags=(("Project", "beta"),))).allowed


def test_multi_region_key_type_applies_to_every_key_operation() -> None:
    # A Deny on replicas must hold for Decrypt too, not only for the multi-Region operations.
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
            "Condition": {"StringEquals": {"kms:MultiRegionKeyType": "REPLICA"}}}
    policy = doc(allow(ALICE_ARN), deny)
    replica = key(policy, multi_region=True, primary_region="eu-west-1")
    primary = key(policy, multi_region=True, primary_region="us-east-1")
    assert decide(user("alice"), replica, "kms:Decrypt").verdict is Verdict.EXPLICIT_DENY
    assert decide(user("alice"), primary, "kms:Decrypt").allowed
    assert decide(user("alice"), key(policy), "kms:Decrypt").allowed  # single-Region: key absent


def test_a_perimeter_deny_on_principal_is_aws_service_false_holds_for_direct_callers() -> None:
    # aws:PrincipalIsAWSService "is present in the request context for all signed API requests".
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
            "Condition": {"Bool": {"aws:PrincipalIsAWSService": "false", "aws:ViaAWSService": "false"},
                          "NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}
    policy = doc(allow(ALICE_ARN), deny)
    assert decide(user("alice"), key(policy)).verdict is Verdict.EXPLICIT_DENY
    assert decide(user("alice"), key(policy), source_ip="10.1.2.3").allowed


@pytest.mark.parametrize("version", [None, "2008-10-17"])
def test_policy_variables_are_literal_text_without_version_2012(version: str | None) -> None:
    # IAM: without Version 2012-10-17, "${aws:username}" is "treated as literal strings".
    statement = allow(ALICE_ARN, "kms:Encrypt",
                      Condition={"StringEquals": {"kms:EncryptionContext:owner": "${aws:username}"}})
    policy = {"Statement": [statement], **({"Version": version} if version else {})}
    alice = user("alice")
    assert not decide(alice, key(policy), params={"EncryptionContext": {"owner": "alice"}}).allowed
    assert decide(alice, key(policy), params={"EncryptionContext": {"owner": "${aws:username}"}}).allowed
    assert decide(alice, key({**policy, "Version": "2012-10-17"}),
                  params={"EncryptionContext": {"owner": "alice"}}).allowed


def test_via_service_is_absent_for_direct_calls() -> None:
    policy = key(
        doc(
            allow(
                ROOT_ARN,
                "kms:Decrypt",
                Condition={"StringEquals": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"}},
            )
        )
    )
    assert not decide(root(), policy, "kms:Decrypt").allowed


def test_grant_is_for_aws_resource_is_false_for_direct_calls() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                ["kms:CreateGrant", "kms:ListGrants", "kms:RevokeGrant"],
                Condition={"Bool": {"kms:GrantIsForAWSResource": "true"}},
            )
        )
    )
    params = {"GranteePrincipal": ALICE_ARN, "Operations": ["Decrypt"]}
    assert not decide(user("alice"), policy, "kms:CreateGrant", params).allowed


def test_grant_operation_and_principal_keys_on_create_grant() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                "kms:CreateGrant",
                Condition={
                    "ForAllValues:StringEquals": {"kms:GrantOperations": ["Encrypt", "Decrypt"]},
                    "StringLike": {"kms:GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:role/*"},
                },
            )
        )
    )
    ok = {"GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:role/app", "Operations": ["Decrypt"]}
    assert decide(user("alice"), policy, "kms:CreateGrant", ok).allowed
    assert not decide(
        user("alice"), policy, "kms:CreateGrant", {**ok, "Operations": ["Decrypt", "CreateGrant"]}
    ).allowed
    assert not decide(user("alice"), policy, "kms:CreateGrant", {**ok, "GranteePrincipal": ALICE_ARN}).allowed


def test_request_alias_and_algorithm_keys() -> None:
    policy = key(
        doc(
            allow(
                ALICE_ARN,
                Condition={
                    "StringEquals": {
                        "kms:RequestAlias": "alias/app",
                        "kms:EncryptionAlgorithm": "SYMMETRIC_DEFAULT",
                    }
                },
            )
        )
    )
    assert decide(user("alice"), policy, params={"KeyId": "alias/app"}).allowed
    assert not decide(user("alice"), policy, params={"KeyId": "alias/other"}).allowed


def test_resource_variable_in_identity_policy() -> None:
    per_user = doc(
        {
            "Effect": "Allow",
            "Action": "kms:*",
            "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceTag/Owner": "${aws:username}"}},
        }
    )
    the_key = key(default_policy(ACCOUNT), tags=(("Owner", "alice"),))
    assert decide(user("alice", ACCOUNT, per_user), the_key).allowed
    assert not decide(user("bob", ACCOUNT, per_user), the_key).allowed


# --- grants -------------------------------------------------------------------------------------


def test_grant_allows_its_operations_to_its_grantee() -> None:
    grants = (grant(ALICE_ARN, "Decrypt"),)
    no_policy = key(doc(allow(ROOT_ARN)))
    assert decide(user("alice"), no_policy, "kms:Decrypt", grants=grants).allowed
    assert not decide(user("alice"), no_policy, "kms:Encrypt", grants=grants).allowed
    assert not decide(user("bob"), no_policy, "kms:Decrypt", grants=grants).allowed


def test_grant_constraints_are_enforced() -> None:
    subset = (grant(ALICE_ARN, "Decrypt", constraints={"EncryptionContextSubset": {"Dept": "IT"}}),)
    equals = (grant(ALICE_ARN, "Decrypt", constraints={"EncryptionContextEquals": {"Dept": "IT"}}),)
    the_key = key(doc(allow(ROOT_ARN)))
    both = {"EncryptionContext": {"Dept": "IT", "App": "x"}}
    exact = {"EncryptionContext": {"Dept": "IT"}}
    assert decide(user("alice"), the_key, "kms:Decrypt", both, grants=subset).allowed
    assert not decide(user("alice"), the_key, "kms:Decrypt", {}, grants=subset).allowed
    assert decide(user("alice"), the_key, "kms:Decrypt", exact, grants=equals).allowed
    assert not decide(user("alice"), the_key, "kms:Decrypt", both, grants=equals).allowed
    # As in AWS: a constraint's keys match in any case, its values only exactly.
    key_in_lowercase, value_in_lowercase = {"EncryptionContext": {"dept": "IT"}}, {"EncryptionContext": {"Dept": "it"}}
    assert decide(user("alice"), the_key, "kms:Decrypt", key_in_lowercase, grants=equals).allowed
    assert not decide(user("alice"), the_key, "kms:Decrypt", value_in_lowercase, grants=equals).allowed


def test_explicit_deny_beats_a_grant() -> None:
    policy = key(doc({"Effect": "Deny", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}))
    assert decide(user("alice"), policy, "kms:Decrypt", grants=(grant(ALICE_ARN, "Decrypt"),)).verdict is (
        Verdict.EXPLICIT_DENY
    )


def test_create_grant_through_a_grant_may_not_widen_it() -> None:
    parent = (grant(ALICE_ARN, "Decrypt", "CreateGrant", constraints={"EncryptionContextSubset": {"a": "1"}}),)
    the_key = key(doc(allow(ROOT_ARN)))
    narrower = {
        "GranteePrincipal": ALICE_ARN,
        "Operations": ["Decrypt"],
        "Constraints": {"EncryptionContextEquals": {"a": "1", "b": "2"}},
    }
    assert decide(user("alice"), the_key, "kms:CreateGrant", narrower, grants=parent).allowed
    wider_ops = {**narrower, "Operations": ["Encrypt"]}
    assert not decide(user("alice"), the_key, "kms:CreateGrant", wider_ops, grants=parent).allowed
    unconstrained = {**narrower, "Constraints": {}}
    assert not decide(user("alice"), the_key, "kms:CreateGrant", unconstrained, grants=parent).allowed


def test_malformed_grant_tokens_are_rejected() -> None:
    with pytest.raises(InvalidGrantTokenException):
        request(user("alice"), "kms:Encrypt", None, {"GrantTokens": [""]})


# --- cache ---------------------------------------------------------------------------------------


def test_cache_does_not_leak_between_condition_values_or_policies() -> None:
    authz = authorizer()
    policy = key(doc(allow(ALICE_ARN, Condition={"StringEquals": {"kms:EncryptionContext:k": "v"}})))
    good = request(user("alice"), "kms:Encrypt", policy, {"EncryptionContext": {"k": "v"}})
    bad = request(user("alice"), "kms:Encrypt", policy, {"EncryptionContext": {"k": "w"}})
    assert authz.authorize(good).allowed
    assert not authz.authorize(bad).allowed
    assert authz.authorize(good).allowed
    changed = key(doc(allow(f"arn:aws:iam::{ACCOUNT}:user/bob")))
    assert not authz.authorize(AccessRequest(good.call, good.action, changed, good.conditions)).allowed


def test_cache_keeps_apart_requests_whose_grants_decide_on_different_contexts() -> None:
    # Nothing in the key policy reads the context, only the grant: the cached decision must
    # still be keyed by it, or a context the grant refuses would reuse an allow.
    authz = authorizer()
    the_key = key(doc(allow(ROOT_ARN)))
    subset = (grant(ALICE_ARN, "Decrypt", constraints={"EncryptionContextSubset": {"Dept": "IT"}}),)
    allowed = request(user("alice"), "kms:Decrypt", the_key, {"EncryptionContext": {"Dept": "IT"}}, subset)
    refused = request(user("alice"), "kms:Decrypt", the_key, {"EncryptionContext": {"Dept": "HR"}}, subset)
    assert authz.authorize(allowed).allowed
    assert not authz.authorize(refused).allowed
    assert authz.authorize(allowed).allowed


def test_cache_keeps_apart_requests_whose_list_values_differ() -> None:
    authz = authorizer()
    policy = key(doc(allow(ALICE_ARN, "kms:CreateGrant",
                           Condition={"ForAllValues:StringEquals": {"kms:GrantOperations": ["Decrypt"]}})))
    narrow = {"GranteePrincipal": ALICE_ARN, "Operations": ["Decrypt"]}
    wide = {**narrow, "Operations": ["Decrypt", "CreateGrant"]}
    assert authz.authorize(request(user("alice"), "kms:CreateGrant", policy, narrow)).allowed
    assert not authz.authorize(request(user("alice"), "kms:CreateGrant", policy, wide)).allowed


def test_cache_follows_new_identity_policies_of_the_same_principal() -> None:
    authz = authorizer()
    the_key = key(default_policy(ACCOUNT))
    assert authz.authorize(request(user("alice", ACCOUNT, allow_all_identity()), "kms:Encrypt", the_key)).allowed
    assert not authz.authorize(request(user("alice"), "kms:Encrypt", the_key)).allowed


def test_decisions_on_large_encryption_contexts_are_made_but_not_kept() -> None:
    # Kept with the context they read, 100 calls with 12,000-pair contexts on a key with a grant
    # held ~550 MB; the cache's 8192 entries, tens of GB.
    authz = authorizer()
    the_key = key(default_policy(ACCOUNT))
    grants = (grant(f"arn:aws:iam::{ACCOUNT}:user/bob", "Decrypt"),)
    alice = user("alice", ACCOUNT, allow_all_identity())
    for n in range(5):
        large = {f"k{n}-{i}": "v" for i in range(2000)}
        assert authz.authorize(request(alice, "kms:Encrypt", the_key, {"EncryptionContext": large}, grants)).allowed
        assert not authz.authorize(request(user("carol"), "kms:Encrypt", the_key,
                                           {"EncryptionContext": large}, grants)).allowed
    long_value = {"k": "v" * 5000}
    assert authz.authorize(request(alice, "kms:Encrypt", the_key, {"EncryptionContext": long_value}, grants)).allowed
    assert len(authz._decisions) == 0
    small = request(alice, "kms:Encrypt", the_key, {"EncryptionContext": {"table": "orders"}}, grants)
    assert authz.authorize(small).allowed
    assert len(authz._decisions) == 1  # the usual request is still cached


def test_decisions_on_keys_with_many_grants_are_made_but_not_kept() -> None:
    # Each kept decision held a tuple of every grant id of the key (400 KB at 50,000 grants).
    authz = authorizer()
    the_key = key(default_policy(ACCOUNT))
    many = tuple(grant(f"arn:aws:iam::{ACCOUNT}:user/bob", "Decrypt", grant_id=f"{n:064x}") for n in range(100))
    for n in range(5):
        bob = request(user("bob"), "kms:Decrypt", the_key, {"EncryptionContext": {"n": str(n)}}, many)
        assert authz.authorize(bob).allowed
    assert len(authz._decisions) == 0


def test_large_key_policies_are_cached_within_a_size_and_decisions_do_not_keep_their_text(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # PutKeyPolicy after PutKeyPolicy of 32 KB policies: 8192 compiled ones held ~2 GB, and each
    # cached decision kept its key's whole policy text.
    from keytrail.kms import evaluator

    monkeypatch.setattr(evaluator, "_KEY_POLICY_CHARS", 100_000)
    authz = authorizer()
    alice = user("alice", ACCOUNT, allow_all_identity())
    padding = [allow(f"arn:aws:iam::{ACCOUNT}:user/u{n:04d}", "kms:Decrypt") for n in range(200)]
    for version in range(10):
        policy = doc(allow(ROOT_ARN, Sid=f"v{version}"), *padding)
        assert len(json.dumps(policy)) > 20_000
        assert authz.authorize(request(alice, "kms:Encrypt", key(policy))).allowed
        assert authz.key_policy(json.dumps(policy)).statements  # a policy also compiles afresh after the cache emptied
    assert sum(len(text) for text in authz._key_policies) <= 100_000
    assert not any(isinstance(part, str) and len(part) > 1000 for entry in authz._decisions for part in entry)


def test_decisions_do_not_keep_compiled_key_policies_past_the_size_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    # Cached by the compiled policy itself, each decision kept it alive after the policy cache let
    # it go: 8192 decisions on 32 KB policies still held ~2 GB of compiled policies.
    import gc

    from keytrail.kms import evaluator

    monkeypatch.setattr(evaluator, "_KEY_POLICY_CHARS", 50_000)
    authz = authorizer()
    alice = user("alice", ACCOUNT, allow_all_identity())
    padding = [allow(f"arn:aws:iam::{ACCOUNT}:user/u{n:04d}", "kms:Decrypt") for n in range(200)]
    for version in range(10):
        the_key = key(doc(allow(ROOT_ARN, Sid=f"v{version}"), *padding))
        assert authz.authorize(request(alice, "kms:Encrypt", the_key)).allowed
        assert authz.authorize(request(alice, "kms:Encrypt", the_key)).allowed  # a hit, as before
    assert len(authz._decisions) == 10
    gc.collect()
    alive = sum(1 for obj in gc.get_objects() if isinstance(obj, evaluator._KeyPolicy))
    assert alive <= len(authz._key_policies) < 10


# --- lockout safety check ------------------------------------------------------------------------


def test_lockout_check_refuses_a_policy_that_drops_the_caller() -> None:
    with pytest.raises(MalformedPolicyDocumentException) as info:
        check_lockout(doc(allow(f"arn:aws:iam::{ACCOUNT}:user/bob")), user("alice"))
    assert info.value.message == LOCKOUT_MESSAGE


def test_lockout_check_passes_for_direct_or_delegated_put_key_policy() -> None:
    check_lockout(doc(allow(ALICE_ARN, "kms:PutKeyPolicy")), user("alice"))
    check_lockout(default_policy(ACCOUNT), user("alice", ACCOUNT, allow_all_identity()))
    check_lockout(default_policy(ACCOUNT), root())


def test_lockout_check_passes_for_the_root_of_an_account_the_policy_names() -> None:
    # The account root needs no IAM policy to act through its account ("AWS account root user").
    check_lockout(doc(allow(ACCOUNT, "kms:PutKeyPolicy")), root())
    with pytest.raises(MalformedPolicyDocumentException):
        check_lockout(doc(allow(ACCOUNT, "kms:PutKeyPolicy")), user("alice"))


def test_lockout_check_asks_with_the_callers_own_request_context() -> None:
    # A policy that lets the caller manage the key from its network only does not lock it out.
    from_inside = allow(ALICE_ARN, "kms:PutKeyPolicy", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})
    check_lockout(doc(from_inside), user("alice"), call=call(user("alice"), source_ip="10.1.2.3"))
    with pytest.raises(MalformedPolicyDocumentException):
        check_lockout(doc(from_inside), user("alice"), call=call(user("alice"), source_ip="192.168.1.1"))


def test_lockout_check_can_be_bypassed() -> None:
    check_lockout(doc(allow(f"arn:aws:iam::{ACCOUNT}:user/bob")), user("alice"), bypass=True)


def test_lockout_check_asks_about_a_put_key_policy_whose_policy_name_is_default() -> None:
    # A later PutKeyPolicy without PolicyName has kms:PolicyName "default" (API reference, PutKeyPolicy).
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*",
            "Condition": {"StringNotEquals": {"kms:PolicyName": "default"}}}
    check_lockout(doc(allow(ALICE_ARN), deny), user("alice"))
    only_default = allow(ALICE_ARN, "kms:PutKeyPolicy", Condition={"StringEquals": {"kms:PolicyName": "default"}})
    check_lockout(doc(only_default), user("alice"))


def test_lockout_check_fails_for_explicit_deny() -> None:
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:PutKeyPolicy", "Resource": "*"}
    with pytest.raises(MalformedPolicyDocumentException):
        check_lockout(doc(allow(ALICE_ARN), deny), user("alice"))
    # A Deny in the caller's IAM policy wins over a key policy that names the caller directly.
    denied = user("alice", ACCOUNT, doc({"Effect": "Deny", "Action": "kms:PutKeyPolicy", "Resource": "*"}))
    with pytest.raises(MalformedPolicyDocumentException):
        check_lockout(doc(allow(ALICE_ARN)), denied)


def test_reads_names_the_condition_keys_of_key_and_identity_policies() -> None:
    policy = key(doc(allow(ALICE_ARN, Condition={"StringEquals": {"kms:CallerAccount": ACCOUNT}})))
    identity = doc(
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*", "Condition": {"Bool": {"aws:SecureTransport": "true"}}}
    )
    assert authorizer().reads(policy, user("alice", ACCOUNT, identity)) == {
        "kms:calleraccount",
        "aws:securetransport",
    }
    assert authorizer().reads(None, user("alice")) == frozenset()


def _by_alias(effect: str = "Allow", operator: str = "ForAnyValue:StringLike") -> dict[str, Any]:
    return {"Effect": effect, "Action": "kms:Encrypt", "Resource": "*",
            "Condition": {operator: {"kms:ResourceAliases": "alias/fin*"}}}


def _aliased(principal: Any, the_key: Any, *aliases: str) -> Any:
    """The decision on an Encrypt whose key has `aliases` (the service supplies them)."""
    plain = request(principal, "kms:Encrypt", the_key)
    aliased = AccessRequest(plain.call, "kms:Encrypt", the_key, {"kms:ResourceAliases": list(aliases)})
    return authorizer().authorize(aliased)


def test_resource_aliases_supplied_by_the_caller_are_matched_in_iam_policies() -> None:
    alice = user("alice", ACCOUNT, doc(_by_alias()))
    policy = key(default_policy(ACCOUNT))
    assert authorizer().reads(policy, alice) == {"kms:resourcealiases"}
    assert not _aliased(alice, policy).allowed
    assert _aliased(alice, policy, "alias/finance").allowed


def test_resource_aliases_are_not_in_a_key_policys_context() -> None:
    # "AWS KMS condition keys", kms:ResourceAliases: Policy type "IAM policies only". In a key
    # policy the key is absent: ForAnyValue never holds, ForAllValues always does. (PutKeyPolicy now
    # refuses such a policy; `key` stores it as an earlier release did.)
    allow_by_alias = key(doc({**_by_alias(), "Principal": {"AWS": ALICE_ARN}}))
    assert authorizer().reads(allow_by_alias, user("alice")) == frozenset()
    assert not _aliased(user("alice"), allow_by_alias, "alias/finance").allowed
    deny_by_alias = key(doc(allow(ALICE_ARN), {**_by_alias("Deny"), "Principal": "*"}))
    assert _aliased(user("alice"), deny_by_alias, "alias/finance").allowed
    deny_all = key(doc(allow(ALICE_ARN), {**_by_alias("Deny", "ForAllValues:StringLike"), "Principal": "*"}))
    assert _aliased(user("alice"), deny_all, "alias/other").verdict is Verdict.EXPLICIT_DENY


def test_an_encryption_context_date_beyond_the_calendar_is_denied_not_a_crash() -> None:
    policy = key(doc(allow("*", Condition={
        "DateLessThan": {"kms:EncryptionContext:expires": "2027-01-01T00:00:00Z"}})))
    assert decide(user("bob"), policy, "kms:Encrypt", {"EncryptionContext": {"expires": "2026-12-01"}}).allowed
    refused = decide(user("bob"), policy, "kms:Encrypt", {"EncryptionContext": {"expires": "1e400"}})
    assert refused.verdict is Verdict.IMPLICIT_DENY


@pytest.mark.parametrize("context", [{"dept": "HR", "DEPT": "x"}, {"DEPT": "x", "dept": "HR"}])
def test_a_deny_on_a_context_key_holds_when_its_twin_in_another_case_is_added(context: dict[str, str]) -> None:
    policy = key(doc(allow("*"), {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
                                  "Condition": {"StringEquals": {"kms:EncryptionContext:dept": "HR"}}}))
    assert decide(user("bob"), policy, "kms:Encrypt", {"EncryptionContext": {"dept": "x"}}).allowed
    assert decide(user("bob"), policy, "kms:Encrypt", {"EncryptionContext": context}).verdict is Verdict.EXPLICIT_DENY


@pytest.mark.parametrize("tags", [(("Team", "secret"), ("team", "public")), (("team", "public"), ("Team", "secret"))])
def test_a_deny_on_a_resource_tag_holds_when_its_twin_in_another_case_is_added(tags: Any) -> None:
    # Tag keys are case sensitive, the name of aws:ResourceTag/<key> is not: both values count.
    deny = {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
            "Condition": {"StringEquals": {"aws:ResourceTag/Team": "secret"}}}
    assert decide(user("bob"), key(doc(allow("*"), deny), tags=(("Team", "public"),))).allowed
    assert decide(user("bob"), key(doc(allow("*"), deny), tags=tags)).verdict is Verdict.EXPLICIT_DENY


def _retire(principal: Any, the_key: Any, the_grant: Any) -> Any:
    return authorizer().authorize(request(principal, "kms:RetireGrant", the_key, grants=(the_grant,)))


def test_retire_grant_is_not_allowed_by_the_key_policy() -> None:
    # "The kms:RetireGrant permission is not effective in a key policy."
    the_key = key(doc(allow(ROOT_ARN), allow(f"arn:aws:iam::{ACCOUNT}:user/bob", "kms:RetireGrant")))
    the_grant = grant(f"arn:aws:iam::{ACCOUNT}:user/carl", "Decrypt")
    assert _retire(user("bob"), the_key, the_grant).verdict is Verdict.IMPLICIT_DENY
    assert _retire(user("alice", ACCOUNT, allow_all_identity()), the_key, the_grant).allowed  # IAM delegation


def test_an_iam_deny_refuses_even_the_retiring_principal() -> None:
    deny = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
               {"Effect": "Deny", "Action": "kms:RetireGrant", "Resource": "*"})
    the_grant = grant(f"arn:aws:iam::{ACCOUNT}:user/bob", "Decrypt", retiring=f"arn:aws:iam::{ACCOUNT}:user/bob")
    decision = _retire(user("bob", ACCOUNT, deny), key(default_policy(ACCOUNT)), the_grant)
    assert decision.verdict is Verdict.EXPLICIT_DENY and decision.policy_type == "identity-based"
    assert _retire(user("bob"), key(default_policy(ACCOUNT)), the_grant).allowed


def test_the_grants_account_root_may_retire_whatever_the_key_policy_says() -> None:
    the_key = key(doc(allow(ALICE_ARN)))
    assert _retire(root(), the_key, grant(ALICE_ARN, "Decrypt")).allowed
    assert not _retire(root(OTHER), the_key, grant(ALICE_ARN, "Decrypt")).allowed


def test_a_retiring_account_delegates_to_its_iam_principals() -> None:
    the_key = key(default_policy(ACCOUNT))
    the_grant = grant(f"arn:aws:iam::{OTHER}:user/carol", "Decrypt", retiring=f"arn:aws:iam::{OTHER}:root")
    assert _retire(user("carol", OTHER, allow_all_identity()), the_key, the_grant).allowed
    assert not _retire(user("dave", OTHER), the_key, the_grant).allowed
    assert _retire(root(OTHER), the_key, the_grant).allowed


def test_a_retire_grant_refusal_names_the_policy_type_that_did_not_allow() -> None:
    the_key = key(default_policy(ACCOUNT))
    the_grant = grant(f"arn:aws:iam::{ACCOUNT}:user/bob", "Decrypt")
    carol = user("carol", OTHER, allow_all_identity())  # her IAM allows kms:RetireGrant: the grant refuses
    assert _retire(carol, the_key, the_grant) == AccessDecision(Verdict.IMPLICIT_DENY, "resource-based")
    assert _retire(user("dave", OTHER), the_key, the_grant) == AccessDecision(Verdict.IMPLICIT_DENY, "identity-based")


def test_the_grantee_may_retire_only_when_the_grant_includes_retire_grant() -> None:
    bob = f"arn:aws:iam::{ACCOUNT}:user/bob"
    the_key = key(default_policy(ACCOUNT))
    assert not _retire(user("bob"), the_key, grant(bob, "Decrypt")).allowed
    assert _retire(user("bob"), the_key, grant(bob, "Decrypt", "RetireGrant")).allowed


def test_lockout_check_matches_identity_policies_against_the_key_arn() -> None:
    the_key = key(default_policy(ACCOUNT))
    scoped = user("bob", ACCOUNT, doc({"Effect": "Allow", "Action": "kms:*",
                                       "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*"}))
    check_lockout(default_policy(ACCOUNT), scoped, resource=the_key.arn)
    with pytest.raises(MalformedPolicyDocumentException):
        check_lockout(default_policy(ACCOUNT), scoped, resource=the_key.arn.replace(ACCOUNT, OTHER))


@pytest.mark.parametrize(("action", "allowed"), [
    ("kms:Decrypt", True), ("kms:DescribeKey", True), ("kms:CreateGrant", True), ("kms:GetPublicKey", True),
    ("kms:ScheduleKeyDeletion", False), ("kms:PutKeyPolicy", False), ("kms:DisableKey", False),
    ("kms:TagResource", False), ("kms:ListResourceTags", False), ("kms:GetKeyPolicy", False),
])
def test_cross_account_permission_is_effective_only_for_some_operations(action: str, allowed: bool) -> None:
    the_key = key(doc(allow(ROOT_ARN), allow(OTHER)))
    decision = decide(user("carol", OTHER, allow_all_identity()), the_key, action)
    assert decision.allowed is allowed
    assert decide(root(OTHER), the_key, action).allowed is allowed


def test_a_create_key_deny_written_with_the_deprecated_key_spec_name_holds() -> None:
    deny = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
               {"Effect": "Deny", "Action": "kms:CreateKey", "Resource": "*",
                "Condition": {"StringLike": {"kms:CustomerMasterKeySpec": "RSA_*"}}})
    alice = user("alice", ACCOUNT, deny)
    assert decide(alice, None, "kms:CreateKey", {"KeySpec": "RSA_4096", "KeyUsage": "SIGN_VERIFY"}).verdict is (
        Verdict.EXPLICIT_DENY)
    assert decide(alice, None, "kms:CreateKey", {}).allowed


def test_a_key_policy_stored_with_nan_by_an_earlier_release_still_decides() -> None:
    # PutKeyPolicy now refuses NaN (no JSON); a policy stored with one before must not lock the key.
    text = json.dumps(doc(allow(ALICE_ARN, "kms:Encrypt", Condition={"NumericLessThan": {"kms:x": "X"}}),
                          allow(ROOT_ARN))).replace('"X"', "NaN")
    assert decide(root(), key(text), "kms:PutKeyPolicy").allowed
    assert not decide(user("alice"), key(text)).allowed  # NaN is less than nothing


@pytest.mark.parametrize(("action", "condition", "params"), [
    ("kms:Encrypt", {"DateGreaterThan": {"aws:CurrentTime": "X"}}, None),
    ("kms:ScheduleKeyDeletion", {"NumericLessThan": {"kms:ScheduleKeyDeletionPendingWindowInDays": "X"}},
     {"PendingWindowInDays": 7}),
])
def test_a_key_policy_stored_with_a_number_past_a_double_still_decides(action: str, condition: Any,
                                                                       params: Any) -> None:
    # PutKeyPolicy now refuses such numbers; one stored before made float() overflow: a 500 on every
    # call on the key, PutKeyPolicy too, so the key could not be mended.
    policy = doc(allow(ALICE_ARN, action, Condition=condition), allow(ROOT_ARN))
    text = json.dumps(policy).replace('"X"', "1" + "0" * 400)
    assert decide(root(), key(text), "kms:PutKeyPolicy").allowed
    assert decide(user("alice"), key(text), action, params).verdict is Verdict.IMPLICIT_DENY  # matches nothing


def test_an_encryption_context_deny_covers_the_constraints_of_create_grant() -> None:
    # kms:EncryptionContext:<key> applies to CreateGrant ("AWS KMS condition keys"): a Deny on a pair
    # refuses a grant whose constraint holds it, which would allow its grantee to use that pair.
    restricted = {"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*",
                  "Condition": {"StringEquals": {"kms:EncryptionContext:Stage": "Restricted"}}}
    policy = key(doc(allow(ALICE_ARN), restricted))
    params = {"GranteePrincipal": ALICE_ARN, "Operations": ["Decrypt"]}
    for kind in ("EncryptionContextEquals", "EncryptionContextSubset"):
        constrained = {**params, "Constraints": {kind: {"stage": "Restricted"}}}
        assert decide(user("alice"), policy, "kms:CreateGrant", constrained).verdict is Verdict.EXPLICIT_DENY
    assert decide(user("alice"), policy, "kms:CreateGrant", params).allowed
