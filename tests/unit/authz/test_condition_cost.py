"""A request whose values would take too long to compare with its policies' conditions is refused
before any comparison, whoever sends it (condition_cost.py)."""

from __future__ import annotations

from typing import Any

from keytrail.kms.authz import Verdict, denial_message
from keytrail.kms.condition_cost import MAX_COMPARISONS, compared_values, comparisons
from keytrail.kms.conditions import Condition
from keytrail.kms.policy_document import compile_policy

from .support import ACCOUNT, authorizer, doc, key, request, user

ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"
PATTERNS = [f"*q*{n}" for n in range(2800)]  # a 30 KB key policy holds this many


def _policy(patterns: list[str]) -> dict[str, Any]:
    """Everything allowed to the account, Encrypt denied for context keys matching `patterns`."""
    return doc({"Effect": "Allow", "Principal": {"AWS": ROOT_ARN}, "Action": "kms:*", "Resource": "*"},
               {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
                "Condition": {"ForAnyValue:StringLike": {"kms:EncryptionContextKeys": patterns}}})


def _encrypt(context: dict[str, str], patterns: list[str], name: str = "alice") -> Any:
    return request(user(name), "kms:Encrypt", key(_policy(patterns)), {"EncryptionContext": context})


def test_a_condition_weighs_each_request_value_against_each_of_its_values_and_their_characters() -> None:
    conditions = [Condition("StringLike", "kms:encryptioncontextkeys", ("a*", "b?c"), "ForAnyValue"),
                  Condition("StringEquals", "kms:encryptioncontextkeys", ("dept",), "ForAnyValue"),
                  Condition("StringEquals", "aws:username", ("alice",))]
    compared = compared_values(conditions)
    values = {"kms:encryptioncontextkeys": ["x" * 1024, "y"], "aws:username": "bob"}.get
    # 2 keys x 3 values, plus 1025 characters x the values' 9, over 1024; then 1 x 1 and 3 x 5 characters.
    assert comparisons(compared, values) == 2 * 3 + 1025 * 9 // 1024 + 1 + 3 * 5 // 1024
    assert comparisons(compared, {}.get) == 0  # keys the request lacks are compared with nothing


def test_16000_context_keys_against_2800_patterns_are_refused_unevaluated_with_the_cost() -> None:
    context = {f"k{n}": "" for n in range(16_000)}
    bob = _encrypt(context, PATTERNS, name="bob")  # no permission at all: refused all the same
    decision = authorizer().authorize(bob)
    assert decision.verdict is Verdict.IMPLICIT_DENY and decision.comparisons > 16_000 * 2800
    assert denial_message(bob, decision) == (
        f"User: arn:aws:iam::{ACCOUNT}:user/bob is not authorized to perform: kms:Encrypt on resource: "
        f"{bob.resource_arn}: comparing this request's values with the conditions of the policies that apply "
        f"would take {decision.comparisons:,} comparisons, over keytrail's limit of {MAX_COMPARISONS:,} a request")


def test_one_long_value_against_long_single_character_wildcard_patterns_is_refused() -> None:
    # "?" makes the pattern's runs regular expressions: one scan of the value per pattern character.
    policy = doc({"Effect": "Allow", "Principal": {"AWS": ROOT_ARN}, "Action": "kms:*", "Resource": "*"},
                 {"Effect": "Deny", "Principal": "*", "Action": "kms:Encrypt", "Resource": "*",
                  "Condition": {"StringLike": {"kms:EncryptionContext:k": ["*" + "a?" * 1000 + "b*"] * 15}}})
    call = request(user("alice"), "kms:Encrypt", key(policy), {"EncryptionContext": {"k": "a" * 200_000}})
    assert authorizer().authorize(call).comparisons > MAX_COMPARISONS


def test_a_large_context_against_a_policy_of_realistic_size_is_decided_as_ever() -> None:
    context = {f"k{n}": "v" * 20 for n in range(500)}
    patterns = [f"secret-{n}*" for n in range(20)]
    assert authorizer().authorize(_encrypt(context, patterns)).verdict is Verdict.IMPLICIT_DENY  # no identity policy
    denied = {**context, "secret-7-x": "v"}
    decision = authorizer().authorize(_encrypt(denied, patterns))
    assert (decision.verdict, decision.comparisons) == (Verdict.EXPLICIT_DENY, 0)


def test_a_compiled_policy_tallies_its_conditions_values_by_key() -> None:
    policy = compile_policy(_policy(["ab*", "c"]))
    assert [(c.key, c.values, c.chars) for c in policy.compared] == [("kms:encryptioncontextkeys", 2, 4)]
