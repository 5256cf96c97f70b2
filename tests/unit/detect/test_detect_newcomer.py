"""`new-principal-on-key`: a principal's first successful cryptographic call on an established key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.unit.detect.records import ACCOUNT, T0, create_key, denied, event, federated, key_arn, role, user

from keytrail.detect import Detector, RuleSet

KEY, OTHER = key_arn(1), key_arn(2)
APP, BATCH = role("app"), role("batch")
BATCH_ARN = f"arn:aws:iam::{ACCOUNT}:role/batch"
WEEK = T0 + timedelta(days=8)


def _newcomers(records: list[dict[str, Any]], rules: RuleSet | None = None) -> list[Any]:
    detector = Detector(rules)
    detector.process(records)
    return [alarm for alarm in detector.alarms() if alarm.rule == "new-principal-on-key"]


def _established() -> list[dict[str, Any]]:
    """KEY created and used by APP for 8 days."""
    return [create_key(T0, KEY)] + [event("Decrypt", T0 + timedelta(days=d, minutes=1), KEY, APP) for d in range(9)]


def test_a_principal_new_on_an_established_key_raises_one_low_alarm() -> None:
    first, again = (
        event("GenerateDataKey", WEEK + timedelta(hours=2), KEY, BATCH),
        event("Decrypt", WEEK + timedelta(hours=3), KEY, BATCH),
    )
    [alarm] = _newcomers([*_established(), first, again])
    assert (alarm.severity, alarm.key_arn, alarm.principal_arn, alarm.count) == ("LOW", KEY, BATCH_ARN, 1)
    assert alarm.event_ids == (first["eventID"],)  # known from its first call on: the next is nothing new
    assert alarm.details["eventName"] == "GenerateDataKey"
    assert alarm.details["keyUsedSince"] == "2026-01-05T12:01:00Z" and alarm.details["knownPrincipals"] == "1"
    assert alarm.details["sourceIPAddresses"] == "192.0.2.0"


def test_aws_managed_keys_raise_nothing() -> None:
    """alias/aws/s3's policy lets every principal of the account use it through S3: a role reading
    its first SSE-KMS object there is no finding, and no policy could narrow it. The key is known
    as AWS managed by its CreateKey, or by a call naming its alias when the trail has no CreateKey."""
    created = [create_key(T0, KEY, manager="AWS")] + [
        event("Decrypt", T0 + timedelta(days=d, minutes=1), KEY, APP) for d in range(9)
    ]
    named = [
        event("GenerateDataKey", T0 + timedelta(days=d, minutes=1), OTHER, APP, params={"keyId": "alias/aws/s3"})
        for d in range(9)
    ]
    later = [event("Decrypt", WEEK + timedelta(hours=2), key, BATCH) for key in (KEY, OTHER)]
    assert _newcomers([*created, *named, *later]) == []
    customer = [*_established(), event("Decrypt", WEEK + timedelta(hours=2), KEY, BATCH)]
    assert [a.principal_arn for a in _newcomers(customer)] == [BATCH_ARN]


def test_keys_in_their_learning_period_raise_nothing() -> None:
    """A new key, and a detector that has seen a key used for less than min_history_days, would
    raise one alarm per caller."""
    young = [
        create_key(T0, KEY),
        event("Decrypt", T0 + timedelta(days=6), KEY, APP),
        event("Decrypt", T0 + timedelta(days=12), KEY, BATCH),
    ]
    assert _newcomers(young) == []  # created 12 days ago, but first used 6 days before BATCH came
    shorter = RuleSet().override({"new-principal-on-key": {"parameters": {"min_history_days": 5}}})
    assert [a.principal_arn for a in _newcomers(young, shorter)] == [BATCH_ARN]


def test_a_principal_that_only_read_the_key_s_metadata_is_new_at_its_first_use() -> None:
    records = [
        *_established(),
        event("DescribeKey", T0 + timedelta(days=1), KEY, BATCH),
        event("Encrypt", WEEK + timedelta(hours=2), KEY, BATCH),
    ]
    assert [a.principal_arn for a in _newcomers(records)] == [BATCH_ARN]


def test_denied_calls_and_allow_listed_principals_raise_nothing() -> None:
    records = [
        *_established(),
        denied("Decrypt", WEEK + timedelta(hours=2), KEY, user("mallory")),
        event("Decrypt", WEEK + timedelta(hours=3), KEY, role("scanner-prod")),
    ]
    rules = RuleSet().override(
        {"new-principal-on-key": {"parameters": {"allow_principals": [f"arn:aws:iam::{ACCOUNT}:role/scanner-*"]}}}
    )
    assert _newcomers(records, rules) == []
    assert [a.principal_arn for a in _newcomers(records)] == [f"arn:aws:iam::{ACCOUNT}:role/scanner-prod"]


def test_a_re_encrypt_to_an_established_key_is_a_first_use_of_the_destination() -> None:
    records = [*_established(), create_key(T0, OTHER), event("Encrypt", T0 + timedelta(minutes=5), OTHER, BATCH)]
    re_encrypt = event("ReEncrypt", WEEK + timedelta(hours=2), OTHER, BATCH)
    re_encrypt["resources"].append({"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": KEY})
    [alarm] = _newcomers([*records, re_encrypt])
    assert (alarm.key_arn, alarm.principal_arn) == (KEY, BATCH_ARN)  # not OTHER, which BATCH uses


def test_the_rule_keeps_no_state_of_its_own_but_the_ledger_s() -> None:
    detector = Detector()
    detector.process([*_established(), event("Decrypt", WEEK + timedelta(hours=2), KEY, BATCH)])
    record = detector.ledger.get(KEY)
    # who created it (no use), who uses it: one entry a principal, which the rule reads
    assert record is not None and record.principals == {
        user()["arn"]: False,
        f"arn:aws:iam::{ACCOUNT}:role/app": True,
        BATCH_ARN: True,
    }


def test_callers_with_no_arn_new_on_an_established_key_each_raise_their_own_alarm() -> None:
    """SAML and web identity users (as CloudTrail logs them: no ARN, account or access key) using
    a key for the first time raised nothing: the rule passed over callers with no ARN. Each is one
    caller by its principalId, known once it used the key, as the ledger remembers any principal."""
    ann, bo = federated("SAMLUser", "ann"), federated("WebIdentityUser", "bo")
    calls = [event("Decrypt", WEEK + timedelta(hours=h), KEY, who) for h, who in ((2, ann), (3, bo), (4, ann))]
    alarms = sorted(_newcomers([*_established(), *calls]), key=lambda a: a.summary)
    assert [(a.principal_arn, a.key_arn, a.event_ids) for a in alarms] == [
        (None, KEY, (calls[1]["eventID"],)),
        (None, KEY, (calls[0]["eventID"],)),
    ]
    assert alarms[0].summary.startswith(
        f"a caller with no ARN (account {ACCOUNT}, principalId accounts.google.com:bo) used {KEY} for the first time"
    )
    assert alarms[1].details["knownPrincipals"] == "1"  # APP; bo came after ann
