"""Policy analyzer tables: public, cross-account, restricted-by-condition, admin statements, grants."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.detect.records import ACCOUNT, policy_doc

from keytrail.detect.analyzer import (
    TrustZone,
    analyze_grant,
    analyze_identity_policy,
    analyze_policy,
    denied_everywhere,
)

ZONE = TrustZone(
    ACCOUNT,
    trusted_accounts=frozenset({"222233334444"}),
    trusted_org_ids=frozenset({"o-trusted123"}),
    admin_principals=("arn:aws:iam::111122223333:role/KeyAdmin*",),
)
FOREIGN = "999988887777"


def allow(
    principal: Any,
    action: Any = "kms:Decrypt",
    condition: dict[str, Any] | None = None,
    sid: str | None = None,
) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": "Allow", "Principal": principal, "Action": action, "Resource": "*"}
    if condition:
        statement["Condition"] = condition
    if sid:
        statement["Sid"] = sid
    return statement


def codes(*statements: dict[str, Any]) -> list[str]:
    return [f.code for f in analyze_policy(policy_doc(*statements), ZONE)]


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (allow("*"), ["public"]),
        (allow({"AWS": "*"}), ["public"]),
        (allow({"AWS": ["*"]}, "kms:*"), ["public"]),
        (
            {
                "Effect": "Allow",
                "NotPrincipal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            ["public"],
        ),
        # conditions that do not pin: IfExists, wildcard values, policy variables, negative operators
        (allow("*", condition={"StringEqualsIfExists": {"aws:PrincipalOrgID": "o-trusted123"}}), ["public"]),
        (allow("*", condition={"StringEqualsIfExists": {"aws:SourceAccount": ACCOUNT}}), ["public"]),
        (allow("*", condition={"StringLike": {"aws:PrincipalOrgID": "o-*"}}), ["public"]),
        (allow("*", condition={"StringEquals": {"aws:PrincipalAccount": "${aws:username}"}}), ["public"]),
        (allow("*", condition={"StringNotEquals": {"kms:CallerAccount": FOREIGN}}), ["public"]),
        (
            allow("*", condition={"StringEquals": {"kms:ViaService": "s3.us-east-1.amazonaws.com"}}),
            ["public"],
        ),
        # the resource of a key policy is the key: aws:ResourceAccount is its account for every caller
        (allow("*", condition={"StringEquals": {"aws:ResourceAccount": ACCOUNT}}), ["public"]),
        # ForAllValues is true without the key: direct callers have no aws:SourceAccount, accounts
        # outside any organization no aws:PrincipalOrgID
        (allow("*", condition={"ForAllValues:StringEquals": {"aws:SourceAccount": ACCOUNT}}), ["public"]),
        (allow("*", condition={"ForAllValues:StringEquals": {"aws:PrincipalOrgID": "o-trusted123"}}), ["public"]),
        # a call from outside any VPC has no aws:SourceVpce: IfExists lets it through
        (allow("*", condition={"StringEqualsIfExists": {"aws:SourceVpce": "vpce-1a2b3c4d"}}), ["public"]),
        (allow("*", condition={"StringLike": {"aws:SourceVpc": "vpc-*"}}), ["public"]),
        # a wildcard in the account field, or before it under StringLike (which matches the whole
        # text: `*` there may take in `:999988887777:`), or in the organization id pins nothing
        (allow("*", condition={"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/app"}}), ["public"]),
        (
            allow("*", condition={"StringLike": {"aws:PrincipalArn": f"arn:aws:iam:*:{ACCOUNT}:role/app"}}),
            ["public"],
        ),
        (
            allow("*", condition={"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": "o-trusted*/r-ab12/*"}}),
            ["public"],
        ),
    ],
    ids=[
        "star",
        "aws-star",
        "aws-star-list",
        "not-principal",
        "ifexists",
        "ifexists-source-account",
        "wildcard-org",
        "policy-variable",
        "not-equals",
        "via-service-only",
        "resource-account",
        "for-all-values-source-account",
        "for-all-values-org-id",
        "vpc-endpoint-if-exists",
        "wildcard-vpc",
        "wildcard-account-arn",
        "string-like-arn-wildcard-before-account",
        "wildcard-org-path",
    ],
)
def test_public_statements_are_flagged(statement: dict[str, Any], expected: list[str]) -> None:
    assert codes(statement) == expected


@pytest.mark.parametrize(
    "condition",
    [
        {"StringEquals": {"kms:CallerAccount": ACCOUNT}},
        {"StringEquals": {"aws:PrincipalOrgID": "o-trusted123"}},
        {"StringEquals": {"aws:SourceAccount": ACCOUNT}},
        {"StringEquals": {"aws:PrincipalAccount": "222233334444"}},
        {"ArnEquals": {"aws:SourceArn": f"arn:aws:cloudtrail:us-east-1:{ACCOUNT}:trail/main"}},
        {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/app"}},
        {"ForAnyValue:StringEquals": {"aws:PrincipalOrgPaths": "o-trusted123/r-ab12/ou-ab12-11111111/"}},
        {"StringEquals": {"kms:CallerAccount": ACCOUNT, "kms:ViaService": "ec2.us-east-1.amazonaws.com"}},
        {"ForAllValues:StringEquals": {"kms:CallerAccount": ACCOUNT}},
        {"StringEquals": {"aws:SourceVpce": "vpce-1a2b3c4d"}},
        {"StringEquals": {"aws:SourceVpc": ["vpc-111bbb22", "vpc-333ccc44"]}},
        {"StringEquals": {"aws:SourceOwner": ACCOUNT}},
        # wildcards after a concrete account or organization: only that account's principals (or
        # resources), that organization's OUs, can match (AWS's own aws:PrincipalOrgPaths example)
        {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/app-*"}},
        {"StringLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/*"}},
        {"ArnLike": {"aws:SourceArn": f"arn:aws:sns:*:{ACCOUNT}:*"}},
        {"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": ["o-trusted123/r-ab12/ou-ab12-11111111/*"]}},
        # a JSON number is compared as its text, as the key's own authorization compares it
        {"StringEquals": {"kms:CallerAccount": int(ACCOUNT)}},
        # IfExists on a key every KMS request carries is the plain operator
        {"StringEqualsIfExists": {"kms:CallerAccount": ACCOUNT}},
        {"ArnLikeIfExists": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/app"}},
    ],
    ids=[
        "caller-account",
        "org-id",
        "source-account",
        "principal-account",
        "source-arn",
        "principal-arn",
        "org-paths",
        "caller-account-and-via-service",
        "for-all-values-caller-account",
        "vpc-endpoint",
        "vpc",
        "source-owner",
        "principal-arn-in-account",
        "principal-arn-string-like",
        "source-arn-in-account",
        "org-path-subtree",
        "caller-account-as-number",
        "ifexists-caller-account",
        "ifexists-principal-arn",
    ],
)
def test_star_pinned_by_a_real_condition_is_not_public(condition: dict[str, Any]) -> None:
    assert codes(allow("*", condition=condition)) == []


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (allow("*", condition={"StringEquals": {"kms:CallerAccount": FOREIGN}}), ["external-account"]),
        (allow("*", condition={"StringEquals": {"aws:PrincipalOrgID": "o-other"}}), ["external-account"]),
        (
            allow("*", condition={"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{FOREIGN}:role/*"}}),
            ["external-account"],
        ),
        (
            allow("*", condition={"ForAnyValue:StringLike": {"aws:PrincipalOrgPaths": "o-other/r-ab12/*"}}),
            ["external-account"],
        ),
        (allow({"AWS": f"arn:aws:iam::{FOREIGN}:root"}), ["external-account"]),
        (allow({"AWS": FOREIGN}), ["external-account"]),
        (allow({"AWS": f"arn:aws:iam::{FOREIGN}:role/reader"}), ["external-account"]),
        (allow({"AWS": "arn:aws:iam::222233334444:role/reader"}), []),
        (allow({"AWS": "AROAEXAMPLEUNIQUEID"}), []),
        (allow({"Service": "cloudtrail.amazonaws.com"}, "kms:GenerateDataKey*"), []),
    ],
    ids=[
        "pinned-foreign-account",
        "pinned-foreign-org",
        "pinned-foreign-account-role-family",
        "pinned-foreign-org-path",
        "foreign-root",
        "foreign-bare-account",
        "foreign-role",
        "trusted-account",
        "unique-id-not-cross-account",
        "service-principal",
    ],
)
def test_cross_account(statement: dict[str, Any], expected: list[str]) -> None:
    assert codes(statement) == expected


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "kms:*", sid="Enable IAM User Permissions"), []),
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin-ops"}, "kms:*"), []),
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, "kms:*"), ["non-admin-full-access"]),
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, "*"), ["non-admin-full-access"]),
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, ["kms:Decrypt", "kms:Encrypt"]), []),
        ({"Effect": "Deny", "Principal": "*", "Action": "kms:*", "Resource": "*"}, []),
    ],
    ids=["default-root", "admin-glob", "app-kms-star", "app-star", "app-key-user", "deny-grants-nothing"],
)
def test_admin_statements(statement: dict[str, Any], expected: list[str]) -> None:
    assert codes(statement) == expected


IN_ACCOUNT = {"StringEquals": {"kms:CallerAccount": ACCOUNT}}


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        # every principal of the account may change the policy or delete the key, as one app role may
        (
            {"Effect": "Allow", "Principal": "*", "NotAction": "kms:CreateGrant", "Resource": "*"}
            | {"Condition": IN_ACCOUNT},
            ["non-admin-full-access"],
        ),
        (allow("*", "kms:*", IN_ACCOUNT), ["non-admin-full-access", "broad-create-grant"]),
        (
            allow("*", "*", {"StringEquals": {"aws:PrincipalOrgID": "o-trusted123"}}),
            ["non-admin-full-access", "broad-create-grant"],
        ),
        (
            allow("*", "kms:*", {"ArnEquals": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin-ops"}}),
            [],
        ),
        (
            allow("*", "kms:*", {"StringEquals": {"kms:CallerAccount": ACCOUNT, "kms:ViaService": "s3.x"}}),
            [],
        ),
        (allow("*", ["kms:Decrypt", "kms:Encrypt"], IN_ACCOUNT), []),
        # an administrator and a family of roles: the family is every role of the account it names
        (
            allow(
                "*",
                "kms:*",
                {
                    "ArnLike": {
                        "aws:PrincipalArn": [
                            f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin-ops",
                            f"arn:aws:iam::{ACCOUNT}:role/app-*",
                        ]
                    }
                },
            ),
            ["non-admin-full-access", "broad-create-grant"],
        ),
    ],
    ids=[
        "account-not-action",
        "account-kms-star",
        "org-star",
        "admin-arn",
        "via-service",
        "key-user-actions",
        "admin-and-role-family",
    ],
)
def test_full_access_for_a_pinned_star(statement: dict[str, Any], expected: list[str]) -> None:
    assert codes(statement) == expected


def deny_unless(condition: dict[str, Any], action: Any = "kms:*", principal: Any = "*") -> dict[str, Any]:
    return {"Effect": "Deny", "Principal": principal, "Action": action, "Resource": "*", "Condition": condition}


@pytest.mark.parametrize(
    ("deny", "expected"),
    [
        # the data-perimeter pattern: everyone outside the organization (or account) is denied
        (deny_unless({"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted123"}}), []),
        (deny_unless({"StringNotEqualsIfExists": {"aws:PrincipalOrgID": "o-trusted123"}}, "*", {"AWS": "*"}), []),
        (
            deny_unless(
                {
                    "StringNotEqualsIfExists": {"aws:PrincipalOrgID": "o-trusted123"},
                    "BoolIfExists": {"aws:PrincipalIsAWSService": "false"},
                }
            ),
            [],
        ),
        (deny_unless({"StringNotEquals": {"kms:CallerAccount": FOREIGN}}), ["external-account"]),
        # what does not carve: a Deny of some actions, a wildcard or variable value, a positive
        # operator, a condition an outsider can make false, one key of two that does not pin
        (deny_unless({"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted123"}}, "kms:Encrypt"), ["public"]),
        (deny_unless({"StringNotLike": {"aws:PrincipalOrgID": "o-*"}}), ["public"]),
        (deny_unless({"StringEquals": {"aws:PrincipalOrgID": "o-other"}}), ["public"]),
        (
            deny_unless(
                {
                    "StringNotEquals": {"aws:PrincipalOrgID": "o-trusted123"},
                    "IpAddress": {"aws:SourceIp": "203.0.113.0/24"},
                }
            ),
            ["public"],
        ),
        (
            deny_unless({"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted123", "kms:ViaService": "s3.x"}}),
            ["public"],
        ),
        (
            deny_unless({"StringNotEquals": {"aws:PrincipalOrgID": "o-trusted123"}}, principal={"AWS": FOREIGN}),
            ["public"],
        ),
    ],
    ids=[
        "outside-org",
        "outside-org-if-exists",
        "outside-org-but-services",
        "outside-foreign-account",
        "some-actions-only",
        "wildcard-org",
        "positive-operator",
        "outsider-escapes-by-ip",
        "non-pinning-key",
        "deny-to-one-account",
    ],
)
def test_deny_to_everyone_outside_a_perimeter_pins_a_star_allow(deny: dict[str, Any], expected: list[str]) -> None:
    assert codes(allow("*", "kms:Decrypt"), deny) == expected


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            allow("*", "kms:CreateGrant", {"StringEquals": {"kms:CallerAccount": ACCOUNT}}),
            ["broad-create-grant"],
        ),
        (
            allow(
                "*",
                ["kms:CreateGrant"],
                {
                    "StringEquals": {"kms:CallerAccount": ACCOUNT},
                    "Bool": {"kms:GrantIsForAWSResource": "true"},
                },
            ),
            [],
        ),
        (allow({"AWS": "222233334444"}, "kms:Create*"), ["broad-create-grant"]),
        (allow({"AWS": f"arn:aws:iam::{ACCOUNT}:role/app"}, "kms:CreateGrant"), []),
        # an AWS managed key's policy (aws/ebs): only EBS may create the grant, for its volume
        (
            allow(
                {"AWS": "*"},
                ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:CreateGrant"],
                {"StringEquals": {"kms:CallerAccount": ACCOUNT, "kms:ViaService": "ec2.us-east-1.amazonaws.com"}},
            ),
            [],
        ),
        (
            allow(
                "*",
                "kms:CreateGrant",
                {"StringEquals": {"kms:CallerAccount": ACCOUNT}, "StringLike": {"kms:ViaService": "*"}},
            ),
            ["broad-create-grant"],
        ),
        (
            allow(
                "*",
                "kms:CreateGrant",
                {
                    "StringEquals": {"kms:CallerAccount": ACCOUNT},
                    "StringEqualsIfExists": {"kms:ViaService": "ec2.us-east-1.amazonaws.com"},
                },
            ),
            ["broad-create-grant"],
        ),
        (allow("*", "kms:CreateGrant", {"ArnEquals": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:role/a"}}), []),
        # any principal of the key's account: not public, but a broad grantee
        (
            allow("*", "kms:CreateGrant", {"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:*"}}),
            ["broad-create-grant"],
        ),
    ],
    ids=[
        "star-in-account",
        "for-aws-resource",
        "trusted-whole-account",
        "named-role",
        "aws-managed-key-via-service",
        "any-via-service",
        "via-service-if-exists",
        "star-pinned-to-one-role",
        "star-pinned-to-any-role",
    ],
)
def test_create_grant_to_broad_grantees(statement: dict[str, Any], expected: list[str]) -> None:
    assert codes(statement) == expected


def test_finding_names_statement_by_sid_or_index() -> None:
    found = analyze_policy(
        policy_doc(
            allow(f"arn:aws:iam::{ACCOUNT}:root", "kms:*"),
            allow("*", sid="OpenToAll"),
            allow({"AWS": FOREIGN}),
        ),
        ZONE,
    )
    assert [(f.statement_sid, f.statement_index, f.source) for f in found] == [
        ("OpenToAll", 1, 'statement "OpenToAll"'),
        (None, 2, "statement #3"),  # the third statement: counted from 1 in text, from 0 in statementIndex
    ]
    assert found[0].severity == "CRITICAL" and found[1].severity == "HIGH"


@pytest.mark.parametrize(
    ("grant", "expected"),
    [
        (
            {
                "GrantId": "g1",
                "GranteePrincipal": f"arn:aws:iam::{FOREIGN}:role/x",
                "Operations": ["Decrypt"],
            },
            ["grant-external-principal"],
        ),
        (
            {
                "grantId": "g2",
                "granteePrincipal": f"arn:aws:iam::{ACCOUNT}:role/app",
                "operations": ["Decrypt"],
            },
            [],
        ),
        ({"GrantId": "g3", "GranteePrincipal": "ec2.us-east-1.amazonaws.com", "Operations": ["Decrypt"]}, []),
        (
            {
                "GrantId": "g4",
                "GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:root",
                "Operations": ["Decrypt", "CreateGrant"],
            },
            ["grant-broad-grantee"],
        ),
        (
            {"GrantId": "g6", "GranteePrincipal": f"arn:aws:iam::{FOREIGN}:root", "Operations": ["Decrypt"]},
            ["grant-external-principal"],
        ),
        (
            {
                "GrantId": "g5",
                "GranteePrincipal": "arn:aws:iam::222233334444:role/x",
                "Operations": ["Encrypt"],
            },
            [],
        ),
    ],
    ids=[
        "external",
        "same-account-role",
        "service-grant",
        "whole-account",
        "external-root",
        "trusted-account",
    ],
)
def test_grants(grant: dict[str, Any], expected: list[str]) -> None:
    found = analyze_grant(grant, ZONE)
    assert [f.code for f in found] == expected
    assert all(f.grant_id == (grant.get("GrantId") or grant.get("grantId")) for f in found)


def test_identity_policy_decrypt_on_every_key_for_non_admin() -> None:
    policy = policy_doc({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "*"})
    scoped = policy_doc(
        {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abc"}
    )
    app = f"arn:aws:iam::{ACCOUNT}:role/app"
    assert [f.code for f in analyze_identity_policy(policy, app, ZONE)] == ["decrypt-all-keys"]
    assert analyze_identity_policy(scoped, app, ZONE) == []
    assert analyze_identity_policy(policy, f"arn:aws:iam::{ACCOUNT}:role/KeyAdmin", ZONE) == []


@pytest.mark.parametrize(
    ("resource", "every_key"),
    [
        ("*", True),
        ("arn:aws:kms:*", True),
        (f"arn:aws:kms:*:{ACCOUNT}:*", True),  # every KMS resource of the account
        (f"arn:aws:kms:*:{ACCOUNT}:key/*", True),
        ("arn:aws:kms:us-east-1:*:*", True),
        ("arn:aws:kms:us-east-1:*", True),
        (["arn:aws:kms:us-east-1:111122223333:key/abc", "arn:aws:kms:*:*:*"], True),
        (f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abc", False),
        (f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abc*", False),
        (f"arn:aws:kms:*:{ACCOUNT}:alias/*", False),
        ("arn:aws:s3:::*", False),
    ],
)
def test_identity_policy_resources_that_cover_every_key(resource: object, every_key: bool) -> None:
    policy = policy_doc({"Effect": "Allow", "Action": "kms:Decrypt", "Resource": resource})
    found = analyze_identity_policy(policy, f"arn:aws:iam::{ACCOUNT}:role/app", ZONE)
    assert [f.code for f in found] == (["decrypt-all-keys"] if every_key else [])


def test_identity_policy_not_resource_allows_every_key_but_the_ones_it_names() -> None:
    app = f"arn:aws:iam::{ACCOUNT}:role/app"
    but_one = policy_doc(
        {"Effect": "Allow", "Action": "kms:Decrypt", "NotResource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/abc"}
    )
    but_all = policy_doc({"Effect": "Allow", "Action": "kms:Decrypt", "NotResource": "arn:aws:kms:*"})
    assert [f.code for f in analyze_identity_policy(but_one, app, ZONE)] == ["decrypt-all-keys"]
    assert analyze_identity_policy(but_all, app, ZONE) == []


def test_identity_policy_decrypt_denied_everywhere_is_not_decrypt_on_every_key() -> None:
    app = f"arn:aws:iam::{ACCOUNT}:role/app"
    allow_all = policy_doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})
    deny = {"Effect": "Deny", "Action": ["kms:Decrypt", "kms:ReEncrypt*"], "Resource": "*"}
    denied = denied_everywhere([allow_all, policy_doc(deny)])
    assert analyze_identity_policy(allow_all, app, ZONE, denied=denied) == []
    # a Deny that leaves kms:ReEncryptFrom, holds a condition or covers part of the keys takes nothing away
    condition = {"Bool": {"aws:SecureTransport": "false"}}
    for partial in (
        {**deny, "Action": "kms:Decrypt"},
        {**deny, "Condition": condition},
        {**deny, "Resource": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/*"},
    ):
        denied = denied_everywhere([allow_all, policy_doc(partial)])
        assert [f.code for f in analyze_identity_policy(allow_all, app, ZONE, denied=denied)] == ["decrypt-all-keys"]


@pytest.mark.parametrize("missing", ["Action", "Resource"])
def test_a_statement_without_action_or_resource_is_no_finding(missing: str) -> None:
    # "If either of the required Resource or Action elements are missing from a key policy
    # statement, the policy statement has no effect" (API reference, PutKeyPolicy): AWS stores it.
    statement = {k: v for k, v in allow("*", "kms:*").items() if k != missing}
    assert codes(statement) == []


@pytest.mark.parametrize(
    ("condition", "key_org", "expected"),
    [
        ({"StringEquals": {"aws:PrincipalOrgID": "o-homeorg123"}}, "o-homeorg123", []),
        (
            {"ForAnyValue:StringEquals": {"aws:PrincipalOrgPaths": "o-homeorg123/r-ab12/ou-ab12-11111111/"}},
            "o-homeorg123",
            [],
        ),
        ({"StringEquals": {"aws:PrincipalOrgID": "o-homeorg123"}}, None, ["external-account"]),
        ({"StringEquals": {"aws:PrincipalOrgID": "o-other"}}, "o-homeorg123", ["external-account"]),
    ],
    ids=["own-org", "own-org-path", "account-in-no-org", "another-org"],
)
def test_the_key_accounts_own_organization_is_trusted(
    condition: dict[str, Any], key_org: str | None, expected: list[str]
) -> None:
    zone = TrustZone(ACCOUNT, key_org_id=key_org)
    assert [f.code for f in analyze_policy(policy_doc(allow("*", condition=condition)), zone)] == expected


MEMBER = "444455556666"  # in the key account's organization
ORGANIZATIONS = {ACCOUNT: "o-homeorg123", MEMBER: "o-homeorg123", "555566667777": "o-other"}


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (allow({"AWS": f"arn:aws:iam::{MEMBER}:role/reader"}), []),
        (allow({"AWS": f"arn:aws:iam::{MEMBER}:root"}, ["kms:Decrypt", "kms:DescribeKey"]), []),
        (allow("*", condition={"StringEquals": {"kms:CallerAccount": MEMBER}}), []),
        # trusted as trusted_accounts are: kms:CreateGrant to its whole account is still a broad grantee
        (allow({"AWS": f"arn:aws:iam::{MEMBER}:root"}, "kms:CreateGrant"), ["broad-create-grant"]),
        (allow({"AWS": "arn:aws:iam::555566667777:role/reader"}), ["external-account"]),
        (allow({"AWS": f"arn:aws:iam::{FOREIGN}:role/reader"}), ["external-account"]),
    ],
    ids=["member-role", "member-root", "star-pinned-to-member", "member-root-create-grant", "other-org", "no-org"],
)
def test_accounts_of_the_key_accounts_organization_are_trusted(statement: dict[str, Any], expected: list[str]) -> None:
    """`"*"` pinned to the organization is trusted; naming one of its accounts gives no more."""
    zone = TrustZone(ACCOUNT, key_org_id="o-homeorg123", organization_of=ORGANIZATIONS.get)
    assert [f.code for f in analyze_policy(policy_doc(statement), zone)] == expected


def test_a_grant_to_an_account_of_the_key_accounts_organization_is_not_external() -> None:
    zone = TrustZone(ACCOUNT, key_org_id="o-homeorg123", organization_of=ORGANIZATIONS.get)
    role = {"GranteePrincipal": f"arn:aws:iam::{MEMBER}:role/reader", "GrantId": "g1"}
    assert analyze_grant(role, zone) == []
    outside = analyze_grant({"GranteePrincipal": "arn:aws:iam::555566667777:role/reader", "GrantId": "g2"}, zone)
    assert [f.code for f in outside] == ["grant-external-principal"]
