"""Policy grammar: what parses, and the MalformedPolicyDocumentException text for what does not."""

from __future__ import annotations

import json
from typing import Any

import pytest

from keytrail.kms.authz import AccessRequest, Verdict
from keytrail.kms.errors import MalformedPolicyDocumentException
from keytrail.kms.policy import MAX_POLICY_BYTES, compile_policy, default_policy, parse_policy, validate_key_policy

from .support import ACCOUNT, authorizer, doc, key, request, root, user

OK_STATEMENT = {"Effect": "Allow", "Principal": {"AWS": "111122223333"}, "Action": "kms:*", "Resource": "*"}


def malformed(document: Any, kind: str = "key") -> str:
    text = document if isinstance(document, str) else json.dumps(document)
    with pytest.raises(MalformedPolicyDocumentException) as info:
        parse_policy(text, kind)  # type: ignore[arg-type]
    return info.value.message


def test_default_policy_parses_and_names_the_account_root() -> None:
    policy = compile_policy(default_policy("111122223333"))
    assert policy.statements[0].principals is not None
    assert policy.statements[0].principals.arns == {"arn:aws:iam::111122223333:root"}


def test_statement_may_be_a_single_object_and_principal_forms_are_accepted() -> None:
    doc = {
        "Version": "2012-10-17",
        "Id": "x",
        "Statement": {
            "Sid": "s",
            "Effect": "Deny",
            "NotPrincipal": {
                "AWS": ["arn:aws:iam::111122223333:user/a", "*"],
                "Service": "ec2.amazonaws.com",
            },
            "NotAction": ["kms:Encrypt"],
            "NotResource": "*",
            "Condition": {"ForAnyValue:StringLikeIfExists": {"kms:EncryptionContextKeys": ["a*", "b"]}},
        },
    }
    assert compile_policy(json.dumps(doc)).statements[0].not_principal is True


def test_account_id_principal_is_kept_bare_for_the_partition_of_the_call() -> None:
    # The evaluator reads it as the account root of the caller's partition (test_partitions.py).
    policy = compile_policy(json.dumps({"Statement": [OK_STATEMENT]}))
    assert policy.statements[0].principals.arns == {"111122223333"}  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("{not json", "not valid JSON"),
        ([], "must be a JSON object"),
        ({"Version": "2012-10-17"}, "has no Statement"),
        ({"Statement": []}, "non-empty list"),
        ({"Statement": [OK_STATEMENT], "Extra": 1}, "unsupported element(s): Extra"),
        ({"Version": "2020-01-01", "Statement": [OK_STATEMENT]}, "Version '2020-01-01'"),
        ({"Statement": [{**OK_STATEMENT, "Effect": "allow"}]}, "statement 1: Effect must be"),
        (
            {"Statement": [OK_STATEMENT, {**OK_STATEMENT, "Sid": "Two", "Effect": "Maybe"}]},
            "statement 2 (Sid 'Two'): Effect",
        ),
        ({"Statement": [{**OK_STATEMENT, "NotAction": "kms:Encrypt"}]}, "exactly one of Action or NotAction"),
        ({"Statement": [{**OK_STATEMENT, "NotResource": "*"}]}, "exactly one of Resource or NotResource"),
        (
            {"Statement": [{**OK_STATEMENT, "NotPrincipal": {"AWS": "111122223333"}}]},
            "Policy statement 1 must contain exactly one of Principal or NotPrincipal.",
        ),
        (
            {"Statement": [{**OK_STATEMENT, "Principal": {"AWS": "bob"}}]},
            "Policy contains a statement with one or more invalid principals. Statement 1 names 'bob'.",
        ),
        (
            {"Statement": [{**OK_STATEMENT, "Principal": {"Users": "x"}}]},
            "Policy contains a statement with one or more invalid principals. Statement 1 has a Principal that "
            'is not "*" nor an object of AWS, Service, Federated or CanonicalUser principals.',
        ),
        # `$` alone would take a final newline; `\\d` alone, any script's digits
        ({"Statement": [{**OK_STATEMENT, "Principal": {"AWS": "111122223333\n"}}]}, "invalid principals"),
        ({"Statement": [{**OK_STATEMENT, "Principal": {"AWS": "١١١١٢٢٢٢٣٣٣٣"}}]}, "invalid principals"),
        (
            {"Statement": [{**OK_STATEMENT, "Principal": {"AWS": "arn:aws:iam::111122223333:user/a\n"}}]},
            "invalid principals",
        ),
        ({"Statement": [{**OK_STATEMENT, "Action": "kms:Encrypt\n"}]}, "is not a valid action"),
        ({"Statement": [{**OK_STATEMENT, "Action": "Encrypt"}]}, "'Encrypt' is not a valid action"),
        ({"Statement": [{**OK_STATEMENT, "Action": []}]}, "Action must be a non-empty"),
        (
            {"Statement": [{**OK_STATEMENT, "Condition": {"StringEqualz": {"k": "v"}}}]},
            "unknown condition operator",
        ),
        (
            {"Statement": [{**OK_STATEMENT, "Condition": {"StringEquals": {"k": {"nested": 1}}}}]},
            "invalid value",
        ),
        ({"Statement": [{**OK_STATEMENT, "Condition": {"StringEquals": "k"}}]}, "must map keys to values"),
        ({"Statement": [{**OK_STATEMENT, "Effect2": "x"}]}, "unsupported element(s): Effect2"),
    ],
)
def test_invalid_documents_name_what_is_wrong(document: Any, fragment: str) -> None:
    assert fragment in malformed(document)


def test_identity_policies_must_not_name_principals() -> None:
    assert "cannot contain Principal" in malformed({"Statement": [OK_STATEMENT]}, "identity")


def test_identity_policy_without_principal_parses() -> None:
    document = {"Statement": [{"Effect": "Allow", "Action": "kms:*", "Resource": "*"}]}
    assert parse_policy(json.dumps(document), "identity") == document
    assert "Principal" in malformed(document)  # as a key policy, the same document is refused


def test_a_statement_without_a_principal_is_refused_in_awss_words_then_keytrails() -> None:
    # "Policy contains a statement with no principal.", as quoted in terraform-aws-eks PR #2163.
    statement = {k: v for k, v in OK_STATEMENT.items() if k != "Principal"}
    assert malformed({"Statement": [OK_STATEMENT, statement]}) == (
        "Policy contains a statement with no principal. "
        "Policy statement 2 must contain exactly one of Principal or NotPrincipal.")


def test_a_stored_key_policy_statement_without_action_or_resource_loads_and_applies_to_nothing() -> None:
    # The API reference's older text: such a statement "has no effect"; PutKeyPolicy took it
    # before 18 August 2025 (now refused when set, below). IAM refuses an identity policy without them.
    for missing in ("Action", "Resource"):
        statement = {k: v for k, v in OK_STATEMENT.items() if k != missing}
        compiled = compile_policy(json.dumps({"Statement": [statement]}))
        assert not compiled.statements[0].applies_to("kms:Encrypt", "arn:aws:kms:us-east-1:111122223333:key/k", None)
        identity = {k: v for k, v in statement.items() if k != "Principal"}
        assert f"exactly one of {missing} or Not{missing}" in malformed({"Statement": [identity]}, "identity")


@pytest.mark.parametrize("resource", ["alias/prod", "1234abcd-12ab-34cd-56ef-1234567890ab", ["*", "kms:*"]])
def test_an_identity_policy_resource_is_an_arn_or_star(resource: Any) -> None:
    # IAM's check: a key id or alias name is no resource ARN and would match no request.
    statement = {"Effect": "Deny", "Action": "kms:Decrypt", "NotResource": resource}
    shown = resource if isinstance(resource, str) else resource[1]
    assert malformed(doc(statement), "identity") == (
        f'Policy statement 1: NotResource {shown} must be in ARN format or "*".')
    allowed = {"Effect": "Allow", "Action": "kms:*", "Resource": ["*", "arn:aws:kms:*:111122223333:key/*"]}
    assert parse_policy(json.dumps(doc(allowed)), "identity")["Statement"] == [allowed]


def test_size_limit_is_32_kb() -> None:
    padding = "x" * (MAX_POLICY_BYTES + 1)
    assert "32 KB" in malformed(json.dumps({"Statement": [{**OK_STATEMENT, "Sid": padding}]}))


def test_compiled_policy_knows_which_condition_keys_it_reads() -> None:
    statement = {
        **OK_STATEMENT,
        "Resource": "arn:aws:kms:*:*:key/${aws:PrincipalTag/team}",
        "Condition": {"StringEquals": {"kms:EncryptionContext:Dept": "${aws:username}"}},
    }
    reads = compile_policy(json.dumps({"Version": "2012-10-17", "Statement": [statement]})).reads
    assert reads == {"kms:encryptioncontext:dept", "aws:username", "aws:principaltag/team"}
    # Without Version 2012-10-17 there are no variables: the text stands for itself.
    assert compile_policy(json.dumps({"Statement": [statement]})).reads == {"kms:encryptioncontext:dept"}


@pytest.mark.parametrize("name", ["arn:aws:iam::111122223333:user/*", "arn:aws:iam::111122223333:role/app-?"])
def test_a_wildcard_inside_a_principal_arn_is_refused_when_the_policy_is_set(name: str) -> None:
    # A Deny naming `user/*` would match no caller here: AWS refuses it, so it must not be stored.
    statement = {**OK_STATEMENT, "Effect": "Deny", "Principal": {"AWS": name}}
    text = json.dumps({"Statement": [{**OK_STATEMENT, "Principal": {"AWS": "*"}}, statement]})
    with pytest.raises(MalformedPolicyDocumentException) as info:
        validate_key_policy(text, root(), bypass=True)
    assert info.value.message == ("Policy contains a statement with one or more invalid principals. "
                                  f"Statement 2 names {name!r} (a wildcard cannot match part of a principal ARN).")
    compile_policy(text)  # a stored policy that has one still loads: the principal matches no one


NAME_RULE = "an IAM name has only letters, digits and +=,.@_-, at most 64 of them"


@pytest.mark.parametrize(("name", "problem"), [
    (f"arn:aws:iam::{ACCOUNT}:user/bob smith", NAME_RULE),
    (f"arn:aws:iam::{ACCOUNT}:role/" + "r" * 65, NAME_RULE),
    (f"arn:aws:iam::{ACCOUNT}:role/ops/", NAME_RULE),
    (f"arn:aws:iam::{ACCOUNT}:user/pay ments/bob", "an IAM path is printable ASCII without blanks"),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/app/session one", NAME_RULE),
    (f"arn:aws:sts::{ACCOUNT}:assumed-role/service-role/app/session",
     "a role session is assumed-role/<role name>/<session name>, without the role's path"),
    (f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}",
     "a policy variable is no principal: variables work in Resource and Condition only"),
])
def test_a_principal_arn_no_iam_identity_can_have_is_refused_when_the_policy_is_set(name: str, problem: str) -> None:
    # AWS refuses a principal that does not exist, and none has such a name: stored, the Deny
    # would match no caller and protect nothing (the principals file refuses such names too).
    statement = {**OK_STATEMENT, "Effect": "Deny", "Principal": {"AWS": name}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [{**OK_STATEMENT, "Principal": {"AWS": "*"}}, statement]})
    with pytest.raises(MalformedPolicyDocumentException) as info:
        validate_key_policy(text, root(), bypass=True)
    assert info.value.message == ("Policy contains a statement with one or more invalid principals. "
                                  f"Statement 2 names {name!r} ({problem}).")
    compile_policy(text)  # a stored policy that has one still loads: the principal matches no one


@pytest.mark.parametrize("name", [
    ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root", f"arn:aws:iam::{ACCOUNT}:user/staff/a+b=c,d.e@f_g-h",
    f"arn:aws:iam::{ACCOUNT}:role/service-role/{'r' * 64}", f"arn:aws:sts::{ACCOUNT}:assumed-role/app/i-0abc@corp",
    f"arn:aws:sts::{ACCOUNT}:federated-user/fed", f"arn:aws-cn:iam::{ACCOUNT}:user/bob",
])
def test_every_principal_arn_iam_can_name_is_accepted(name: str) -> None:
    statement = {**OK_STATEMENT, "Principal": {"AWS": name}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [OK_STATEMENT, statement]})
    assert validate_key_policy(text, root(), bypass=True)["Statement"][1] == statement


def test_a_policy_nested_deeper_than_the_json_reader_goes_is_malformed_not_an_internal_error() -> None:
    # 32 KB of `[` nest far deeper than json's parser recurses: it raised RecursionError, which
    # PutKeyPolicy answered with a 500 KMSInternalException (and the principals file with a traceback).
    deep = "[" * 16_000 + "]" * 16_000
    assert malformed(deep).startswith("The policy is not valid JSON: ")
    assert malformed(deep, "identity").startswith("The policy is not valid JSON: ")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_no_json(constant: str) -> None:
    # RFC 8259 has no NaN or Infinity; Python's json reader takes them, so a condition value of
    # NaN (never equal, never less) was stored and evaluated.
    statement = {**OK_STATEMENT, "Condition": {"NumericLessThan": {"kms:RotationPeriodInDays": "X"}}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]}).replace('"X"', constant)
    assert malformed(text) == f"The policy is not valid JSON: {constant} is not a JSON value."


_EC_OVERLY_PERMISSIVE = (
    "OverlyPermissiveCondition:EncryptionContext: Using the ForAllValues set operator with a single-valued "
    "condition key matches requests without the specified encryption context or with an unspecified encryption "
    "context. To fix, remove ForAllValues.")
_TAG_OVERLY_PERMISSIVE = (
    "OverlyPermissiveCondition: Using the ForAllValues set operator with a single-valued condition key matches "
    "requests without the specified tag or with an unspecified tag. To fix, remove ForAllValues.")


@pytest.mark.parametrize(("operator", "key", "message"), [
    ("ForAllValues:StringEquals", "kms:EncryptionContext:Department", _EC_OVERLY_PERMISSIVE),
    ("forallvalues:StringLikeIfExists", "KMS:encryptioncontext:department", _EC_OVERLY_PERMISSIVE),
    ("ForAllValues:StringEquals", "aws:RequestTag/Team", _TAG_OVERLY_PERMISSIVE),
])
def test_for_all_values_on_a_single_valued_key_is_refused_when_the_policy_is_set(
        operator: str, key: str, message: str) -> None:
    # "AWS KMS condition keys": such a condition "allows requests with no encryption context and
    # requests with unspecified encryption context pairs"; AWS KMS refuses the policy.
    statement = {**OK_STATEMENT, "Principal": {"AWS": "*"}, "Condition": {operator: {key: "IT"}}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [OK_STATEMENT, statement]})
    with pytest.raises(MalformedPolicyDocumentException) as info:
        validate_key_policy(text, root(), bypass=True)
    assert info.value.message == message
    compile_policy(text)  # a stored policy that has one still loads


def test_set_operators_on_multi_valued_keys_stay_allowed() -> None:
    conditions = {"ForAllValues:StringEquals": {"kms:EncryptionContextKeys": ["a"], "aws:TagKeys": ["t"]},
                  "ForAnyValue:StringEquals": {"kms:EncryptionContext:Department": "IT"}}
    statement = {**OK_STATEMENT, "Condition": conditions}
    validate_key_policy(json.dumps({"Version": "2012-10-17", "Statement": [statement]}), root(), bypass=True)


@pytest.mark.parametrize(("text", "shown"), [
    ("Restr\u0456cted", "U+0456"),  # a Cyrillic i (U+0456): the Deny below would never match "Restricted"
    ("Restricted\u202e", "U+202E"),  # a right-to-left override, which makes the text read otherwise
    ("\\u200bRestricted", "U+200B"),  # a zero-width space, written as a JSON escape
])
def test_key_policy_characters_are_those_aws_allows(text: str, shown: str) -> None:
    # "Key policy format": printable ASCII, printable Basic Latin and Latin-1 Supplement, tab, LF, CR.
    statement = {**OK_STATEMENT, "Effect": "Deny", "Principal": {"AWS": "*"},
                 "Condition": {"StringEquals": {"kms:EncryptionContext:stage": "X"}}}
    policy = json.dumps({"Version": "2012-10-17", "Statement": [OK_STATEMENT, statement]}, ensure_ascii=False)
    policy = policy.replace('"X"', f'"{text}"')
    with pytest.raises(MalformedPolicyDocumentException) as info:
        validate_key_policy(policy, root(), bypass=True)
    assert info.value.message == f"The policy document contains a character key policies do not allow: {shown}."
    compile_policy(policy)  # a stored policy that has one still loads


def test_latin_1_letters_tabs_and_line_breaks_are_allowed_in_key_policies() -> None:
    statement = {**OK_STATEMENT, "Sid": "Équipe café", "Condition": {"StringEquals": {"kms:EncryptionContext:a": "ü"}}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]}, ensure_ascii=False, indent="\t")
    validate_key_policy(text.replace("\n", "\r\n"), root(), bypass=True)


@pytest.mark.parametrize(("number", "shown"), [
    ("1" + "0" * 400, "10000000000000000000… (401 characters)"),
    ("-1" + "0" * 5000, "-1000000000000000000… (5002 characters)"),  # past int()'s 4,300 digits too
    ("1e999", "1e999"),
])
def test_a_number_beyond_a_doubles_range_is_malformed(number: str, shown: str) -> None:
    # Conditions compare numbers as doubles: a 401-digit one was stored, then every call on the key
    # was a 500 (float() overflowed), PutKeyPolicy and ScheduleKeyDeletion too.
    statement = {**OK_STATEMENT, "Condition": {"DateGreaterThan": {"aws:CurrentTime": "X"}}}
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]}).replace('"X"', number)
    beyond = f"the number {shown} is beyond the range of a policy number."
    assert malformed(text) == f"The policy is not valid JSON: {beyond}"


def test_large_numbers_within_a_doubles_range_are_kept() -> None:
    condition = {"NumericLessThan": {"kms:x": 2**64}, "DateLessThan": {"aws:y": 1e300}}
    statement = {**OK_STATEMENT, "Condition": condition}
    parsed = parse_policy(json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    assert parsed["Statement"][0]["Condition"] == condition


KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
NO_KEY_POLICY_RESOURCE = ('Policy statement 2 (Sid \'Ops\'): the only Resource a key policy accepts is "*" '
                          "(the KMS key the policy is attached to).")


def refusal_when_set(*statements: dict[str, Any]) -> str:
    text = json.dumps(doc(OK_STATEMENT, *statements))
    with pytest.raises(MalformedPolicyDocumentException) as info:
        validate_key_policy(text, root(), bypass=True)
    compile_policy(text)  # a stored policy that has one still loads
    return info.value.message


def test_a_key_policy_statement_without_action_is_refused_when_the_policy_is_set() -> None:
    # AWS Health notice (ministryofjustice/analytical-platform#7691): since 18 August 2025 CreateKey,
    # ReplicateKey and PutKeyPolicy refuse a statement "without a valid Action or NotAction".
    no_action = {k: v for k, v in OK_STATEMENT.items() if k != "Action"}
    assert refusal_when_set({**no_action, "Sid": "Ops", "Effect": "Deny"}) == (
        "Policy statement 2 (Sid 'Ops') must contain exactly one of Action or NotAction.")


@pytest.mark.parametrize("resource", [
    {},  # no Resource
    {"NotResource": "*"},
    {"NotResource": KEY_ARN},
    {"Resource": KEY_ARN},  # matched the key ARN; `…:alias/*` matched no key
    {"Resource": ["*", "x"]},
    {"Resource": ["*", KEY_ARN]},
], ids=["missing", "not-resource-star", "not-resource-key", "key-arn", "star-and-x", "star-and-key"])
def test_a_key_policy_resource_other_than_star_is_refused_when_the_policy_is_set(resource: dict[str, Any]) -> None:
    # The same notice: "the only accepted Resource element value in a KMS key policy is "*"".
    bare = {k: v for k, v in OK_STATEMENT.items() if k != "Resource"}
    assert refusal_when_set({**bare, "Sid": "Ops", "Effect": "Deny", **resource}) == NO_KEY_POLICY_RESOURCE


@pytest.mark.parametrize("resource", ["*", ["*"]])
def test_a_key_policy_resource_of_star_alone_is_accepted(resource: Any) -> None:
    statement = {**OK_STATEMENT, "Resource": resource, "NotAction": "kms:ScheduleKeyDeletion"}
    del statement["Action"]
    validate_key_policy(json.dumps(doc(statement)), root(), bypass=True)


@pytest.mark.parametrize(("operator", "name"), [
    ("ForAnyValue:StringLike", "kms:ResourceAliases"),
    ("forallvalues:stringequalsifexists", "KMS:resourcealiases"),
    ("StringEquals", "kms:resourceAliases"),
])
def test_a_key_policy_condition_on_resource_aliases_is_refused_when_the_policy_is_set(operator: str, name: str) -> None:
    # "AWS KMS condition keys": kms:ResourceAliases is for "IAM policies only"; AWS refuses a key
    # policy with it (awsdocs/aws-kms-developer-guide PR #47). Absent from a key policy's context,
    # a Deny on it protected nothing.
    deny = {**OK_STATEMENT, "Effect": "Deny", "Principal": "*", "Condition": {operator: {name: "alias/prod-*"}}}
    assert refusal_when_set(deny) == "These condition keys are not permitted in a key policy: kms:ResourceAliases"


def test_a_key_policy_stored_before_these_checks_loads_and_is_evaluated_as_written() -> None:
    # A key whose policy an earlier release stored: its Deny on NotResource or on the key ARN still
    # denies, its statement without Action still allows nothing, its Deny on kms:ResourceAliases
    # still never matches (the key is absent from a key policy's context).
    allow_bob = {**OK_STATEMENT, "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/bob"}}
    bare = {k: v for k, v in allow_bob.items() if k != "Resource"}
    no_action = {k: v for k, v in allow_bob.items() if k != "Action"}
    by_alias = {**allow_bob, "Effect": "Deny", "Condition": {"ForAnyValue:StringLike": {"kms:ResourceAliases": "*"}}}
    cases = [
        (doc(allow_bob, {**bare, "Effect": "Deny", "NotResource": f"{KEY_ARN}-other"}), Verdict.EXPLICIT_DENY),
        (doc(allow_bob, {**bare, "Effect": "Deny", "Resource": KEY_ARN}), Verdict.EXPLICIT_DENY),
        (doc(allow_bob, {**bare, "Effect": "Deny", "Resource": f"{KEY_ARN}-other"}), Verdict.ALLOW),
        (doc(no_action), Verdict.IMPLICIT_DENY),
        (doc(bare), Verdict.IMPLICIT_DENY),
        (doc(allow_bob, by_alias), Verdict.ALLOW),
    ]
    for policy, verdict in cases:
        stored = key(policy)
        assert stored.arn == KEY_ARN
        encrypt = request(user("bob"), "kms:Encrypt", stored)
        aliased = AccessRequest(encrypt.call, "kms:Encrypt", stored, {"kms:ResourceAliases": ["alias/prod-db"]})
        assert authorizer().authorize(aliased).verdict is verdict, policy
