"""Every condition operator, present and missing keys, IfExists, set qualifiers, variables."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keytrail.kms.conditions import Condition, Pattern, parse_condition_operator, wildcard_match


def holds(operator: str, key: str, policy: Any, context: dict[str, Any]) -> bool:
    qualifier, name, if_exists = parse_condition_operator(operator)
    values = tuple(policy) if isinstance(policy, list) else (policy,)
    lowered = {k.lower(): v for k, v in context.items()}
    return Condition(name, key.lower(), values, qualifier, if_exists).holds(lowered.get)


WHEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# (operator, policy value(s), request value, expected)
PRESENT = [
    ("StringEquals", "Finance", "Finance", True),
    ("StringEquals", "Finance", "finance", False),
    ("StringEquals", ["HR", "Finance"], "Finance", True),
    ("StringNotEquals", "Finance", "HR", True),
    ("StringNotEquals", ["HR", "Finance"], "Finance", False),
    ("StringEqualsIgnoreCase", "Finance", "FINANCE", True),
    ("StringNotEqualsIgnoreCase", "Finance", "FINANCE", False),
    ("StringNotEqualsIgnoreCase", "Finance", "HR", True),
    ("StringLike", "fin*", "finance", True),
    ("StringLike", "fin?nce", "finance", True),
    ("StringLike", "fin?nce", "finnnance", False),
    ("StringLike", "Fin*", "finance", False),
    ("StringLike", "a.c", "abc", False),  # regex metacharacters are literal
    ("StringLike", "(x|y)+", "x", False),
    ("StringLike", "(x|y)+", "(x|y)+", True),
    ("StringNotLike", "fin*", "hr", True),
    ("StringNotLike", "fin*", "finance", False),
    ("StringEquals", "*", "anything", False),  # StringEquals has no wildcards
    ("NumericEquals", "30", 30, True),
    ("NumericEquals", "30", "30.0", True),
    ("NumericNotEquals", "30", 7, True),
    ("NumericLessThan", "30", 7, True),
    ("NumericLessThan", "30", 30, False),
    ("NumericLessThanEquals", "30", 30, True),
    ("NumericGreaterThan", "7", 30, True),
    ("NumericGreaterThan", "7", 7, False),
    ("NumericGreaterThanEquals", "7", 7, True),
    ("NumericEquals", "30", "thirty", False),
    ("DateEquals", "2026-06-01T12:00:00Z", WHEN, True),
    ("DateNotEquals", "2026-06-01T12:00:00Z", WHEN, False),
    ("DateLessThan", "2026-07-01T00:00:00Z", WHEN, True),
    ("DateLessThan", "2026-05-01T00:00:00Z", WHEN, False),
    ("DateLessThanEquals", "2026-06-01T12:00:00Z", WHEN, True),
    ("DateGreaterThan", "2026-05-01T00:00:00Z", WHEN, True),
    ("DateGreaterThanEquals", "2026-06-01T12:00:00Z", WHEN, True),
    ("DateGreaterThan", str(int(WHEN.timestamp()) - 1), WHEN, True),  # epoch seconds in the policy
    ("DateLessThan", "2026-07-01", int(WHEN.timestamp()), True),  # aws:EpochTime style request value
    ("Bool", "true", True, True),
    ("Bool", "true", False, False),
    ("Bool", "false", False, True),
    ("Bool", "TRUE", "true", True),
    ("BinaryEquals", "QmluYXJ5", b"Binary", True),
    ("IpAddress", "203.0.113.0/24", "203.0.113.7", True),
    ("IpAddress", "203.0.113.0/24", "198.51.100.7", False),
    ("IpAddress", "2001:db8::/32", "2001:db8::1", True),
    ("IpAddress", "203.0.113.7", "203.0.113.7", True),
    ("NotIpAddress", "203.0.113.0/24", "198.51.100.7", True),
    ("NotIpAddress", "203.0.113.0/24", "203.0.113.7", False),
    ("IpAddress", "not-a-cidr", "203.0.113.7", False),
    # The caller's address is recorded as the IPv4 address an IPv4-mapped one is (api/source_ip.py):
    # a range written mapped still holds it, or a Deny written so would miss every such caller.
    ("IpAddress", "::ffff:203.0.113.0/120", "203.0.113.7", True),
    ("IpAddress", "::ffff:203.0.113.7", "203.0.113.7", True),
    ("NotIpAddress", "::ffff:203.0.113.0/120", "203.0.113.7", False),
    ("IpAddress", "::ffff:203.0.113.0/120", "198.51.100.7", False),
    ("ArnEquals", "arn:aws:iam::111122223333:role/app", "arn:aws:iam::111122223333:role/app", True),
    ("ArnEquals", "arn:aws:iam::111122223333:role/*", "arn:aws:iam::111122223333:role/app", True),
    ("ArnLike", "arn:aws:iam::*:role/app", "arn:aws:iam::444455556666:role/app", True),
    ("ArnLike", "arn:aws:iam::*:role/app", "arn:aws:iam::444455556666:role/APP", False),
    ("ArnLike", "arn:aws:iam::111122223333:*", "not-an-arn", False),
    ("ArnNotEquals", "arn:aws:iam::111122223333:role/app", "arn:aws:iam::111122223333:role/x", True),
    ("ArnNotLike", "arn:aws:iam::*:role/app", "arn:aws:iam::444455556666:role/app", False),
]


@pytest.mark.parametrize(("operator", "policy", "value", "expected"), PRESENT)
def test_operator_with_key_present(operator: str, policy: Any, value: Any, expected: bool) -> None:
    assert holds(operator, "k", policy, {"k": value}) is expected


NEGATED = {
    "StringNotEquals",
    "StringNotEqualsIgnoreCase",
    "StringNotLike",
    "NumericNotEquals",
    "DateNotEquals",
    "NotIpAddress",
    "ArnNotEquals",
    "ArnNotLike",
}
ALL = sorted({row[0] for row in PRESENT})


@pytest.mark.parametrize("operator", ALL)
def test_missing_key_is_false_for_positive_and_true_for_negated_operators(operator: str) -> None:
    assert holds(operator, "k", "x", {}) is (operator in NEGATED)


@pytest.mark.parametrize("operator", ALL)
def test_missing_key_with_if_exists_is_true(operator: str) -> None:
    assert holds(operator + "IfExists", "k", "x", {}) is True


def test_if_exists_still_checks_a_present_key() -> None:
    assert holds("StringEqualsIfExists", "k", "a", {"k": "b"}) is False
    assert holds("StringEqualsIfExists", "k", "a", {"k": "a"}) is True


@pytest.mark.parametrize(
    ("policy", "present", "expected"),
    [
        ("true", False, True),
        ("true", True, False),
        ("false", True, True),
        ("false", False, False),
    ],
)
def test_null(policy: str, present: bool, expected: bool) -> None:
    context = {"k": "v"} if present else {}
    assert holds("Null", "k", policy, context) is expected


def test_empty_multi_valued_key_counts_as_missing_for_null() -> None:
    assert holds("Null", "k", "true", {"k": []}) is True


# Multi-valued keys: (operator, policy values, request values, expected)
SETS = [
    ("ForAllValues:StringEquals", ["a", "b"], ["a"], True),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "b"], True),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "c"], False),
    ("ForAllValues:StringEquals", ["a"], [], True),  # vacuously true on an empty set
    ("ForAnyValue:StringEquals", ["a", "b"], ["c", "a"], True),
    ("ForAnyValue:StringEquals", ["a", "b"], ["c"], False),
    ("ForAnyValue:StringEquals", ["a"], [], False),
    ("ForAllValues:StringLike", ["dept*"], ["deptone", "deptx"], True),
    ("ForAnyValue:StringLike", ["x*"], ["department", "xy"], True),
    ("ForAllValues:StringNotEquals", ["secret"], ["a", "b"], True),
    ("ForAllValues:StringNotEquals", ["secret"], ["a", "secret"], False),
    ("ForAnyValue:StringNotEquals", ["secret"], ["a", "secret"], True),
    ("ForAnyValue:StringNotEquals", ["secret"], ["secret"], False),
    ("StringEquals", ["a"], ["c", "a"], True),  # no set operator: one match suffices
    ("StringNotEquals", ["a"], ["c", "a"], False),  # negated: every value must miss
    ("ForAnyValue:StringEqualsIgnoreCase", ["ENCRYPT"], ["encrypt"], True),
    ("ForAllValues:ArnLike", ["arn:aws:iam::*:role/*"], ["arn:aws:iam::1:role/a"], True),
]


@pytest.mark.parametrize(("operator", "policy", "values", "expected"), SETS)
def test_set_qualifiers(operator: str, policy: list[str], values: list[str], expected: bool) -> None:
    assert (
        holds(operator, "kms:EncryptionContextKeys", policy, {"kms:EncryptionContextKeys": values})
        is expected
    )


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("ForAllValues:StringEquals", True),
        ("ForAnyValue:StringEquals", False),
        ("ForAllValues:StringEqualsIfExists", True),
        ("ForAnyValue:StringEqualsIfExists", True),
    ],
)
def test_set_qualifiers_with_the_key_missing(operator: str, expected: bool) -> None:
    assert holds(operator, "aws:TagKeys", ["a"], {}) is expected


def test_condition_key_names_are_case_insensitive() -> None:
    assert holds("StringEquals", "KMS:CallerAccount", "1", {"kms:calleraccount": "1"}) is True


def test_policy_variable_is_substituted_and_escaped() -> None:
    context = {"aws:username": "bob", "k": "home/bob/x"}
    assert holds("StringLike", "k", "home/${aws:username}/*", context) is True
    assert holds("StringLike", "k", "home/${aws:username}/*", {**context, "aws:username": "b.b"}) is False
    assert holds("StringLike", "k", "home/${aws:username}/*", {**context, "aws:username": "*"}) is False


def test_policy_variable_without_value_does_not_match_unless_defaulted() -> None:
    assert holds("StringEquals", "k", "${aws:username}", {"k": "bob"}) is False
    assert holds("StringEquals", "k", "${aws:username, 'bob'}", {"k": "bob"}) is True


def test_literal_escapes_in_patterns() -> None:
    assert holds("StringLike", "k", "a${*}", {"k": "a*"}) is True
    assert holds("StringLike", "k", "a${*}", {"k": "ab"}) is False
    assert holds("StringLike", "k", "a${?}", {"k": "a?"}) is True


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("kms:*", "kms:Encrypt", True),
        ("kms:Generate*", "kms:GenerateDataKey", True),
        ("kms:Generate*", "kms:Encrypt", False),
        ("kms:Re*", "kms:ReEncryptFrom", True),
        ("[a-z]", "b", False),
        ("[a-z]", "[a-z]", True),
        ("a+", "aa", False),
        ("\\d", "\\d", True),
    ],
)
def test_wildcard_match_escapes_everything_but_star_and_question(
    pattern: str, value: str, expected: bool
) -> None:
    assert wildcard_match(pattern, value) is expected


def test_pattern_reports_its_variables() -> None:
    assert Pattern.parse("a/${aws:username}/${aws:userid}", wildcards=True, variables=True).variables == (
        "aws:username",
        "aws:userid",
    )


@pytest.mark.parametrize("bad", ["StringEqualz", "ForEvery:StringEquals", "NullIfExists", "ForAnyValue:Null"])
def test_unknown_operators_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_condition_operator(bad)


@pytest.mark.parametrize(("policy", "value"), [
    ("2026-07-01T00:00:00Z", "1e300"),  # epoch seconds beyond any calendar
    ("2026-07-01T00:00:00Z", "nan"),
    ("2026-07-01T00:00:00Z", "99999999999999"),  # year 3170843
    ("99999999999999", WHEN),
])
def test_a_date_beyond_the_calendar_matches_nothing_rather_than_raising(policy: str, value: Any) -> None:
    # Request values such as an encryption context's are the caller's to choose.
    assert holds("DateLessThan", "k", policy, {"k": value}) is False
    assert holds("DateGreaterThan", "k", policy, {"k": value}) is False


def test_wildcards_take_steps_in_proportion_to_the_value_not_to_its_power() -> None:
    # `*` turned into a regex `.*` backtracks: "*a*a*a*a*Z" against 20,000 characters takes O(n^5)
    # steps (years), and a StringLike on a request value (an encryption context value, which the
    # caller chooses) held the event loop of the whole node. The value is read once per `*`-run.
    value = "a" * 20_000
    assert not wildcard_match("*a*a*a*a*Z", value)
    assert wildcard_match("*a*a*a*a*", value)
    context = {"kms:EncryptionContext:app": "-" * 20_000}
    assert not holds("StringLike", "kms:EncryptionContext:app", "*-prod-*-*x", context)


def _reference(pattern: str, value: str, ignore_case: bool) -> bool:
    """The regex reading of a wildcard pattern, for small inputs."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(body, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab*?.", max_size=8), st.text(alphabet="abAB.\n", max_size=10), st.booleans())
def test_wildcard_matching_agrees_with_its_regex_reading(pattern: str, value: str, ignore_case: bool) -> None:
    assert wildcard_match(pattern, value, ignore_case=ignore_case) == _reference(pattern, value, ignore_case)


@pytest.mark.parametrize(("operator", "pattern", "matching"), [
    ("StringLike", "x-${kms:EncryptionContext:b}*", "x-{}!"),
    ("StringLike", "x?${kms:EncryptionContext:b}*", "x-{}!"),
    ("StringEqualsIgnoreCase", "X-${kms:EncryptionContext:b}", "x-{}"),
])
def test_a_policy_variable_s_value_is_not_kept_as_a_compiled_regex_per_request(operator: str, pattern: str,
                                                                               matching: str) -> None:
    # `${kms:EncryptionContext:b}` takes its value from the caller: each distinct one was compiled
    # into a regex (50 ms for 100,000 characters) and kept with the runs and in `re`'s cache, 1.6 MB
    # each: 4,096 callers' values held 6 GB of the node's memory. A `?` in the pattern, or case
    # ignored, kept compiling them after the plain case had stopped.
    import gc
    import tracemalloc

    condition = Condition(operator, "kms:encryptioncontext:a", (pattern,))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(40):
            value = f"{number:05d}" * 20_000
            context = {"kms:encryptioncontext:a": matching.format(value), "kms:encryptioncontext:b": value}
            assert condition.holds(context.get)
            shorter = {"kms:encryptioncontext:a": matching.format(value[1:]), "kms:encryptioncontext:b": value}
            assert not condition.holds(shorter.get)
        gc.collect()
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert kept < 1 << 20, kept


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "*", "?", ".", "${v}"]), max_size=6), st.text(alphabet="ab*?.", max_size=3),
       st.text(alphabet="abAB*?.\n", max_size=10), st.booleans())
def test_patterns_with_a_variable_agree_with_their_regex_reading(parts: list[str], variable: str, value: str,
                                                                 ignore_case: bool) -> None:
    pattern = Pattern.parse("".join(parts), wildcards=True, variables=True, ignore_case=ignore_case)
    body = "".join(".*" if p == "*" else "." if p == "?" else re.escape(variable if p == "${v}" else p) for p in parts)
    expected = re.fullmatch(body, value, re.DOTALL | (re.IGNORECASE if ignore_case else 0)) is not None
    assert pattern.matches(value, {"v": variable}.get) == expected


@pytest.mark.parametrize(("policy", "value"), [("ſtatus", "STATUS"), ("ΟΔΟΣ", "οδος"), ("İstanbul", "istanbul"),
                                               ("straße", "STRAßE")])
@pytest.mark.parametrize("pattern", ["{}", "{}*", "?{}", "${v}", "${v}*", "?${v}"])
def test_case_is_set_aside_alike_for_literal_wildcard_and_variable_patterns(policy: str, value: str,
                                                                            pattern: str) -> None:
    # One reading of "ignore case" whichever way the pattern is matched (text, regex or variable),
    # one character for one as Java's equalsIgnoreCase: İ's lowercase is two characters to
    # str.lower, which moved every later position of a fixed-length run.
    text = pattern.replace("{}", policy)
    request = ("x" if pattern.startswith("?") else "") + value
    parsed = Pattern.parse(text, wildcards=True, variables=True, ignore_case=True)
    assert parsed.matches(request, {"v": policy}.get)
    assert not parsed.matches(request[:-1] + "#", {"v": policy}.get)
