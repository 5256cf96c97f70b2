"""Grant rules: operations per key kind, constraints, CreateGrant through a grant, tokens."""

from __future__ import annotations

import pytest

from keytrail.kms.grants import (
    account_spellings,
    allowed_operations,
    constraints_at_least_as_strict,
    constraints_hold,
    grant_allows,
    grantee_matches,
    make_grant_token,
    parse_grant_token,
    retire_allowed,
)
from keytrail.kms.model import KeySpec, KeyUsage

from .support import ACCOUNT, KEY_ID, OTHER, REGION, grant, key, role, root, user


@pytest.mark.parametrize(
    ("spec", "usage", "allowed", "refused"),
    [
        (
            KeySpec.SYMMETRIC_DEFAULT,
            KeyUsage.ENCRYPT_DECRYPT,
            {"GenerateDataKey", "Decrypt", "RetireGrant"},
            {"Sign", "GetPublicKey", "GenerateMac"},
        ),
        (
            KeySpec.RSA_2048,
            KeyUsage.ENCRYPT_DECRYPT,
            {"Encrypt", "GetPublicKey"},
            {"GenerateDataKey", "Sign"},
        ),
        (KeySpec.RSA_2048, KeyUsage.SIGN_VERIFY, {"Sign", "Verify", "DescribeKey"}, {"Encrypt", "Decrypt"}),
        (KeySpec.HMAC_256, KeyUsage.GENERATE_VERIFY_MAC, {"GenerateMac", "VerifyMac"}, {"Encrypt", "Sign"}),
        (KeySpec.ECC_NIST_P256, KeyUsage.KEY_AGREEMENT, {"DeriveSharedSecret", "GetPublicKey"}, {"Sign"}),
    ],
)
def test_grant_operations_follow_key_spec_and_usage(
    spec: KeySpec, usage: KeyUsage, allowed: set[str], refused: set[str]
) -> None:
    operations = allowed_operations(key("{}", key_spec=spec, key_usage=usage))
    assert allowed <= operations
    assert not refused & operations


@pytest.mark.parametrize(
    ("constraints", "context", "expected"),
    [
        (None, {}, True),
        ({"EncryptionContextSubset": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"EncryptionContextSubset": {"a": "1"}}, {"a": "2"}, False),
        ({"EncryptionContextEquals": {"a": "1"}}, {"a": "1"}, True),
        ({"EncryptionContextEquals": {"a": "1"}}, {"a": "1", "b": "2"}, False),
        # AWS: "in a grant constraint, the key in each key-value pair is not case sensitive, but the
        # value is case sensitive"
        ({"EncryptionContextEquals": {"a": "1"}}, {"A": "1"}, True),
        ({"EncryptionContextSubset": {"Dept": "HR"}}, {"dept": "HR", "b": "2"}, True),
        ({"EncryptionContextSubset": {"dept": "HR"}}, {"dept": "hr"}, False),
        ({"EncryptionContextEquals": {"a": "1"}}, {"a": "1", "A": "1"}, False),  # twins are two pairs
    ],
)
def test_constraints(
    constraints: dict[str, dict[str, str]] | None, context: dict[str, str], expected: bool
) -> None:
    assert constraints_hold(constraints, context) is expected


@pytest.mark.parametrize(
    ("parent", "child", "expected"),
    [
        (None, None, True),
        ({"EncryptionContextSubset": {"a": "1"}}, None, False),
        ({"EncryptionContextSubset": {"a": "1"}}, {"EncryptionContextSubset": {"a": "1", "b": "2"}}, True),
        ({"EncryptionContextSubset": {"a": "1"}}, {"EncryptionContextEquals": {"a": "1"}}, True),
        ({"EncryptionContextSubset": {"a": "1"}}, {"EncryptionContextSubset": {"b": "2"}}, False),
        ({"EncryptionContextEquals": {"a": "1"}}, {"EncryptionContextEquals": {"a": "1"}}, True),
        ({"EncryptionContextEquals": {"a": "1"}}, {"EncryptionContextSubset": {"a": "1"}}, False),
        ({"EncryptionContextEquals": {"a": "1"}}, {"EncryptionContextEquals": {"A": "1"}}, True),
        ({"EncryptionContextEquals": {"a": "1"}}, {"EncryptionContextEquals": {"a": "2"}}, False),
        ({"EncryptionContextSubset": {"a": "1"}}, {"EncryptionContextSubset": {"A": "1"}}, True),
        ({"EncryptionContextEquals": {}}, None, False),  # an empty context required: none is looser
    ],
)
def test_child_grants_are_at_least_as_strict(parent: object, child: object, expected: bool) -> None:
    assert constraints_at_least_as_strict(parent, child) is expected  # type: ignore[arg-type]


def test_grantee_matching() -> None:
    assert grantee_matches(f"arn:aws:iam::{ACCOUNT}:role/app", role("app"), False)
    assert not grantee_matches(f"arn:aws:iam::{ACCOUNT}:user/bob", user("alice"), True)
    account_grant = f"arn:aws:iam::{ACCOUNT}:root"
    assert grantee_matches(account_grant, root(), False)
    assert grantee_matches(account_grant, user("alice"), True)
    assert not grantee_matches(account_grant, user("alice"), False)


def _create_grant_asking(*operations: str) -> dict[str, object]:
    """What `grant_allows` is given for a CreateGrant asking for `operations`, unconstrained."""
    return {"context": {}, "operations": operations, "constraints": None}


def test_create_grant_through_a_grant_may_pass_on_its_operations_but_no_other() -> None:
    parent = grant(f"arn:aws:iam::{ACCOUNT}:user/alice", "Decrypt", "CreateGrant")
    asked = _create_grant_asking
    assert grant_allows(parent, "CreateGrant", user("alice"), asked("Decrypt", "CreateGrant"), False)
    assert grant_allows(parent, "CreateGrant", user("alice"), asked("Decrypt"), False)
    assert not grant_allows(parent, "CreateGrant", user("alice"), asked("Decrypt", "Encrypt"), False)


def test_a_grant_to_a_role_session_names_that_session_and_no_other() -> None:
    session = role("app")
    assert grantee_matches(session.arn, session, False)
    assert not grantee_matches(session.arn.replace("/session", "/other"), session, False)


def test_a_grant_that_includes_retire_grant_is_retired_by_its_grantee_not_by_anyone() -> None:
    # "Retiring and revoking grants": RetireGrant in the grant lets its grantee retire it; a caller
    # the grant does not name, whom neither IAM nor a retiring principal allows, may not.
    the_grant = grant(f"arn:aws:iam::{ACCOUNT}:user/bob", "Decrypt", "RetireGrant")
    assert retire_allowed(the_grant, user("bob"), False)
    assert not retire_allowed(the_grant, user("carol"), False)
    assert not retire_allowed(the_grant, user("carol", OTHER), True)


def test_a_grant_to_a_bare_account_id_is_a_grant_to_that_account() -> None:
    # CreateGrant accepts an account id as GranteePrincipal or RetiringPrincipal, as key policies take one.
    assert grantee_matches(ACCOUNT, root(), False)
    assert grantee_matches(ACCOUNT, user("alice"), True)
    assert grantee_matches(ACCOUNT, role("app"), True)
    assert not grantee_matches(ACCOUNT, user("alice"), False)
    assert not grantee_matches(ACCOUNT, root(OTHER), False)
    retirable = grant(f"arn:aws:iam::{OTHER}:user/carol", "Decrypt", retiring=OTHER)
    assert retire_allowed(retirable, root(OTHER), False)  # not the grant's account: its retiring principal


def test_an_account_grantee_goes_by_both_its_names_in_condition_keys() -> None:
    # kms:GranteePrincipal held the name as written: a Deny on one of an account's names missed the other.
    assert account_spellings("444455556666", "aws-cn") == ["444455556666", "arn:aws-cn:iam::444455556666:root"]
    assert account_spellings("arn:aws:iam::444455556666:root", "aws") == ["arn:aws:iam::444455556666:root",
                                                                          "444455556666"]
    assert account_spellings("arn:aws:iam::444455556666:user/root", "aws") == "arn:aws:iam::444455556666:user/root"
    assert account_spellings("4444555566667", "aws") == "4444555566667"


def test_tokens_name_their_grant_and_differ_per_call() -> None:
    the_grant = grant("x", "Decrypt")
    first, second = make_grant_token(the_grant, b"\x00:1"), make_grant_token(the_grant, b"\x00:2")
    assert first != second
    assert (
        parse_grant_token(first) == parse_grant_token(second) == (ACCOUNT, REGION, KEY_ID, the_grant.grant_id)
    )
    assert parse_grant_token("garbage") is None
    assert parse_grant_token("ktg1!!!") is None
