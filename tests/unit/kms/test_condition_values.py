"""Condition values: what each operator reads as a number, date, IP range, true/false or base-64 text,
what a policy with a value it cannot read is refused with, and the keys policies cannot see."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.api.credentials import PrincipalsFileError, load_principals
from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.conditions import Condition, parse_condition_operator
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.model import CallRecord
from keytrail.kms.policy import compile_policy, validate_key_policy
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.unit.authz.support import ACCOUNT, NOW, REGION, authorizer, doc, grant, key, request, root, user

WHEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
ALICE_ARN = f"arn:aws:iam::{ACCOUNT}:user/alice"
ROOT_ARN = f"arn:aws:iam::{ACCOUNT}:root"
ROOT_STATEMENT = {"Effect": "Allow", "Principal": {"AWS": ROOT_ARN}, "Action": "kms:*", "Resource": "*"}


def holds(operator: str, key_name: str, policy: Any, context: dict[str, Any]) -> bool:
    qualifier, name, if_exists = parse_condition_operator(operator)
    values = tuple(policy) if isinstance(policy, list) else (policy,)
    lowered = {k.lower(): v for k, v in context.items()}
    return Condition(name, key_name.lower(), values, qualifier, if_exists).holds(lowered.get)


# --- numbers: ASCII decimal integers and decimals only ---------------------------------------------

@pytest.mark.parametrize("value", ["\u0663", "\uff13", " 3 ", "3\n", "-inf", "inf", "nan", "1_0", "1e0", "0x3",
                                   "3.", ".5", "", "+-3"])
def test_a_request_value_that_is_no_decimal_number_matches_no_numeric_operator(value: str) -> None:
    # Python's float() reads all of these (an Arabic-Indic 3, blanks, -inf, 1_0 as 10); IAM compares
    # "a key to an integer or decimal value", and the caller chooses an encryption context's values.
    assert holds("NumericLessThan", "kms:EncryptionContext:n", "5", {"kms:EncryptionContext:n": value}) is False
    assert holds("NumericGreaterThan", "kms:EncryptionContext:n", "5", {"kms:EncryptionContext:n": value}) is False
    assert holds("NumericNotEquals", "kms:EncryptionContext:n", "5", {"kms:EncryptionContext:n": value}) is True


@pytest.mark.parametrize(("value", "less_than_five"), [
    ("3", True), ("+3", True), ("-2.5", True), ("4.99", True), ("5", False), ("12", False), ("007", False),
])
def test_decimal_request_values_are_compared_as_numbers(value: str, less_than_five: bool) -> None:
    assert holds("NumericLessThan", "kms:EncryptionContext:n", "5", {"kms:EncryptionContext:n": value}) is (
        less_than_five)


# --- dates ---------------------------------------------------------------------------------------

def test_a_year_and_month_is_the_first_instant_of_that_month() -> None:
    # W3C's ISO 8601 profile, which IAM's Date operators take, has YYYY-MM; it was read as nothing,
    # so a Deny "after June 2020" written `2020-06` never applied.
    assert holds("DateGreaterThan", "aws:CurrentTime", "2020-06", {"aws:CurrentTime": WHEN}) is True
    before = datetime(2020, 5, 31, 23, 59, 59, tzinfo=UTC)
    assert holds("DateLessThan", "aws:CurrentTime", "2020-06", {"aws:CurrentTime": before}) is True
    assert holds("DateEquals", "aws:CurrentTime", "2020-06", {"aws:CurrentTime": datetime(2020, 6, 1, tzinfo=UTC)})


def test_four_digits_alone_are_epoch_seconds_as_iam_reads_a_number() -> None:
    # IAM's Date operators take ISO 8601 "or epoch (UNIX) time": a bare number is seconds since 1970.
    assert holds("DateLessThan", "aws:CurrentTime", "2099", {"aws:CurrentTime": WHEN}) is False
    assert holds("DateGreaterThan", "aws:CurrentTime", "2099", {"aws:CurrentTime": WHEN}) is True


@pytest.mark.parametrize("value", [" 1780315200", "1.78e9", "\u0661\u0667\u0668\u0660315200"])
def test_a_request_date_that_is_no_decimal_number_nor_iso_8601_matches_nothing(value: str) -> None:
    assert holds("DateLessThan", "kms:EncryptionContext:d", "2099-01-01", {"kms:EncryptionContext:d": value}) is False


# --- BinaryEquals -------------------------------------------------------------------------------

@pytest.mark.parametrize(("policy", "value", "expected"), [
    ("aGVsbG8=", "hello", True),
    ("aGVsbG8=", b"hello", True),
    ("hello", "hello", False),  # the raw text matched too, as if StringEquals
    ("aGVsbG8=", "aGVsbG8=", False),
    ("aGVsbG8=", "Hello", False),
    ("\u00e9", "\u00e9", False),  # not base 64: a stored policy's value matching nothing, never a 500
])
def test_binary_equals_compares_the_bytes_the_policy_value_encodes(policy: str, value: Any, expected: bool) -> None:
    assert holds("BinaryEquals", "kms:EncryptionContext:a", policy, {"kms:EncryptionContext:a": value}) is expected


# --- keytrail's own request values are no condition keys ------------------------------------------

def _encrypt_allowed_when(condition: dict[str, Any]) -> bool:
    bob = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/bob"}, "Action": "kms:Encrypt",
           "Resource": "*", "Condition": condition}
    the_key = key(doc(ROOT_STATEMENT, bob))
    decision = authorizer().authorize(request(user("bob"), "kms:Encrypt", the_key, {"EncryptionContext": {"a": "b"}}))
    return decision.allowed


@pytest.mark.parametrize("condition", [
    {"Null": {"keytrail:EncryptionContext": "false"}},
    {"StringLike": {"keytrail:EncryptionContext": "*'a': 'b'*"}},
])
def test_a_policy_cannot_read_keytrails_private_request_values(condition: dict[str, Any]) -> None:
    # AWS has no such key: absent from the request context, not Python's text of a dict.
    assert _encrypt_allowed_when(condition) is False


def test_a_private_request_value_is_absent_to_a_null_check_and_as_a_policy_variable() -> None:
    assert _encrypt_allowed_when({"Null": {"keytrail:EncryptionContext": "true",
                                           "keytrail:GrantConstraints": "true"}}) is True
    assert _encrypt_allowed_when({"StringEquals": {"kms:EncryptionContext:a": "${keytrail:EncryptionContext, 'b'}"}})


def test_a_grant_with_an_encryption_context_constraint_still_reads_the_requests_context() -> None:
    the_key = key(doc(ROOT_STATEMENT))
    constrained = grant(ALICE_ARN, "Encrypt", constraints={"EncryptionContextEquals": {"a": "b"}})
    matching = request(user("alice"), "kms:Encrypt", the_key, {"EncryptionContext": {"a": "b"}}, (constrained,))
    other = request(user("alice"), "kms:Encrypt", the_key, {"EncryptionContext": {"a": "c"}}, (constrained,))
    assert authorizer().authorize(matching).allowed
    assert not authorizer().authorize(other).allowed


# --- values an operator cannot read are refused when a policy is set --------------------------------

def _with(condition: dict[str, Any], effect: str = "Deny") -> str:
    statement = {"Sid": "Guard", "Effect": effect, "Principal": "*", "Action": "kms:*", "Resource": "*",
                 "Condition": condition}
    return json.dumps(doc(ROOT_STATEMENT, statement))


def refusal_when_set(condition: dict[str, Any]) -> str:
    text = _with(condition)
    with pytest.raises(errors.MalformedPolicyDocumentException) as info:
        validate_key_policy(text, root(), bypass=True)
    compile_policy(text)  # a policy stored before this check still loads
    return info.value.message


@pytest.mark.parametrize(("condition", "message"), [
    ({"DateGreaterThan": {"aws:CurrentTime": "next tuesday"}},
     "Policy statement 2 (Sid 'Guard'): Condition DateGreaterThan aws:CurrentTime has a value that is not a date "
     "(ISO 8601 or epoch seconds): 'next tuesday'."),
    ({"NumericLessThan": {"kms:RotationPeriodInDays": "abc"}},
     "Policy statement 2 (Sid 'Guard'): Condition NumericLessThan kms:RotationPeriodInDays has a value that is not "
     "a number (an integer or decimal): 'abc'."),
    ({"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "10.0.0.0/33"]}},
     "Policy statement 2 (Sid 'Guard'): Condition IpAddress aws:SourceIp has a value that is not an IP address or "
     "CIDR range: '10.0.0.0/33'."),
    ({"Bool": {"aws:SecureTransport": "yes"}},
     "Policy statement 2 (Sid 'Guard'): Condition Bool aws:SecureTransport has a value that is not true or false: "
     "'yes'."),
])
def test_a_value_its_operator_cannot_read_is_malformed(condition: dict[str, Any], message: str) -> None:
    # It was taken and never matched: a positive operator false, a negated one true, so a Deny
    # written with it silently never applied (or, negated, always did).
    assert refusal_when_set(condition) == message


@pytest.mark.parametrize("condition", [
    {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/33"}},
    {"NumericNotEqualsIfExists": {"kms:EncryptionContext:n": "\u00b2"}},  # superscript two
    {"NumericLessThan": {"kms:EncryptionContext:n": " 3"}},
    {"NumericLessThan": {"kms:EncryptionContext:n": "1e3"}},
    {"NumericLessThan": {"kms:EncryptionContext:n": True}},
    {"NumericLessThan": {"kms:EncryptionContext:n": "1" + "0" * 400}},  # past a double, as a JSON number is refused
    {"ForAnyValue:DateLessThan": {"kms:EncryptionContext:d": "2020-13"}},
    {"DateNotEquals": {"aws:CurrentTime": "2020-06-01T25:00:00Z"}},
    {"DateLessThan": {"aws:CurrentTime": "${aws:TokenIssueTime}"}},  # IAM: no policy variables with Date
    {"DateLessThan": {"aws:EpochTime": 1e300}},  # seconds beyond any calendar
    {"Bool": {"aws:SecureTransport": 1}},
    {"Null": {"kms:EncryptionContextKeys": "no"}},
    {"BinaryEquals": {"kms:EncryptionContext:a": "hello!"}},
    # Latin-1 passes the key policy's character check, and base64's reader refused it with a
    # ValueError of its own, not binascii.Error: CreateKey and PutKeyPolicy were a 500 with it.
    {"BinaryEquals": {"kms:EncryptionContext:a": "caf\u00e9"}},
])
def test_other_unreadable_values_are_malformed_too(condition: dict[str, Any]) -> None:
    assert "has a value that is not" in refusal_when_set(condition)


@pytest.mark.parametrize("condition", [
    {"DateGreaterThan": {"aws:CurrentTime": ["2020-06", "2099", "2026-06-01", "2026-06-01T12:00:00Z", 1780315200]}},
    {"NumericLessThan": {"kms:RotationPeriodInDays": ["30", "-1.5", "+7", 30, 2.5]}},
    {"NotIpAddress": {"aws:SourceIp": ["10.0.0.0/8", "203.0.113.7", "2001:db8::/32"]}},
    {"Bool": {"aws:SecureTransport": ["true", "FALSE", True]}},
    {"Null": {"kms:EncryptionContextKeys": False}},
    {"BinaryEquals": {"kms:EncryptionContext:a": "aGVsbG8="}},
    {"StringEquals": {"kms:EncryptionContext:a": "next tuesday"}},
])
def test_values_each_operator_reads_are_accepted(condition: dict[str, Any]) -> None:
    validate_key_policy(_with(condition), root(), bypass=True)


def test_a_stored_policy_with_an_unreadable_value_is_evaluated_as_before() -> None:
    # Not refused when read, and not failed closed either: a stored Deny on `kms:*` that then always
    # applied would refuse the PutKeyPolicy that mends it, even to the account root.
    text = _with({"DateGreaterThan": {"aws:CurrentTime": "next tuesday"}})
    assert authorizer().authorize(request(root(), "kms:PutKeyPolicy", key(text))).allowed


# --- identity policies: refused when the principals file is loaded -------------------------------------

def test_a_principals_file_with_an_unreadable_condition_value_is_refused(tmp_path: Path) -> None:
    policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "kms:*", "Resource": "*",
         "Condition": {"DateGreaterThan": {"aws:CurrentTime": "2020-06-31"}}}]})
    path = tmp_path / "principals.toml"
    path.write_text(f'[[principal]]\narn = "{ALICE_ARN}"\naccess_key_id = "AKIAALICE000000000001"\n'
                    f"secret_access_key = \"s\"\npolicies = ['''{policy}''']\n")
    with pytest.raises(PrincipalsFileError) as info:
        load_principals(path)
    assert str(info.value) == (
        f"{path}: principal #1: policy 1: Policy statement 2: Condition DateGreaterThan aws:CurrentTime has a value "
        "that is not a date (ISO 8601 or epoch seconds): '2020-06-31'.")


# --- through the service: PutKeyPolicy ------------------------------------------------------------

class _Trail:
    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


async def test_put_key_policy_refuses_an_unreadable_date_and_keeps_the_policy(tmp_path: Path) -> None:
    trail = _Trail()
    clock = ManualClock(NOW)
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    svc = KmsService(ServiceDeps(store=store, clock=clock, audit=trail, authorizer=PolicyAuthorizer(clock)))

    async def call(principal: Principal, name: str, **params: Any) -> dict[str, Any]:
        return await svc.execute(name, CallContext(principal=principal, region=REGION, request_id="r"), params)

    key_id = (await call(root(), "CreateKey"))["KeyMetadata"]["KeyId"]
    before = (await call(root(), "GetKeyPolicy", KeyId=key_id))["Policy"]
    with pytest.raises(errors.MalformedPolicyDocumentException) as info:
        await call(root(), "PutKeyPolicy", KeyId=key_id, PolicyName="default",
                   Policy=_with({"DateGreaterThan": {"aws:CurrentTime": "2020-06-01 noon"}}))
    assert "Condition DateGreaterThan aws:CurrentTime has a value that is not a date" in info.value.message
    assert (trail.records[-1].event_name, trail.records[-1].error_code) == (
        "PutKeyPolicy", "MalformedPolicyDocumentException")
    assert (await call(root(), "GetKeyPolicy", KeyId=key_id))["Policy"] == before
