"""AlarmBook: findings of one rule, key and principal within the rule's window make one alarm; what
the alarm says (summary, details) is the finding that makes it as severe as it is."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from keytrail.detect import RuleSet
from keytrail.detect.alarms import AlarmBook, Finding
from keytrail.detect.rules import Severity

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ADMIN = "arn:aws:iam::111122223333:user/admin"
START = datetime(2026, 11, 2, 9, tzinfo=UTC)


def _grant(minutes: int, severity: Severity, grantee: str) -> Finding:
    return Finding(rule="permissive-key", time=START + timedelta(minutes=minutes), key_arn=KEY,
                   principal_arn=ADMIN, summary=f"grant to {grantee}", recommendation="retire it",
                   event_id=f"event-{minutes}", severity=severity, details={"findings": grantee})


def test_a_milder_finding_after_a_severe_one_counts_but_the_alarm_still_tells_the_severe_one() -> None:
    book = AlarmBook(RuleSet())
    raised = book.record(_grant(0, Severity.HIGH, "arn:aws:iam::444455556666:role/ext"))
    assert raised is not None and raised.severity is Severity.HIGH
    assert book.record(_grant(5, Severity.MEDIUM, "arn:aws:iam::444455556666:root")) is None  # no escalation
    (alarm,) = book.pending()
    assert (alarm.severity, alarm.count) == (Severity.HIGH, 2)
    assert alarm.summary == "grant to arn:aws:iam::444455556666:role/ext"
    assert alarm.details["findings"] == "arn:aws:iam::444455556666:role/ext"
    assert alarm.event_ids == ("event-0", "event-5")


def test_a_more_severe_finding_escalates_and_tells_its_own_story() -> None:
    book = AlarmBook(RuleSet())
    book.record(_grant(0, Severity.MEDIUM, "arn:aws:iam::444455556666:root"))
    escalated = book.record(_grant(5, Severity.HIGH, "arn:aws:iam::444455556666:role/ext"))
    assert escalated is not None and escalated.severity is Severity.HIGH
    assert escalated.summary == "grant to arn:aws:iam::444455556666:role/ext"
    assert escalated.details["findings"] == "arn:aws:iam::444455556666:role/ext"


def test_an_equally_severe_finding_updates_the_alarm_to_the_latest() -> None:
    book = AlarmBook(RuleSet())
    book.record(_grant(0, Severity.HIGH, "arn:aws:iam::444455556666:role/a"))
    book.record(_grant(5, Severity.HIGH, "arn:aws:iam::444455556666:role/b"))
    (alarm,) = book.pending()
    assert (alarm.count, alarm.summary) == (2, "grant to arn:aws:iam::444455556666:role/b")


def _deletion(minutes: int, severity: Severity | None, operation: str) -> Finding:
    return Finding(rule="key-deletion-in-use", time=START + timedelta(minutes=minutes), key_arn=KEY,
                   principal_arn=ADMIN, summary=f"{operation} on the key", recommendation="check",
                   event_id=f"event-{minutes}", severity=severity, details={"operation": operation})


def test_a_finding_stating_no_severity_has_the_rules_when_weighed_against_the_alarms() -> None:
    # key-deletion-in-use is HIGH: its DisableKey finding states no severity, the Encrypt refused
    # after it states MEDIUM, the ScheduleKeyDeletion before it CRITICAL.
    book = AlarmBook(RuleSet())
    book.record(_deletion(0, None, "DisableKey"))
    book.record(_deletion(5, Severity.MEDIUM, "Encrypt"))
    (alarm,) = book.pending()
    assert (alarm.severity, alarm.count, alarm.summary) == (Severity.HIGH, 2, "DisableKey on the key")
    assert alarm.details["operation"] == "DisableKey"
    book = AlarmBook(RuleSet())
    book.record(_deletion(0, Severity.CRITICAL, "ScheduleKeyDeletion"))
    book.record(_deletion(5, None, "DisableKey"))
    (alarm,) = book.pending()
    assert (alarm.severity, alarm.summary, alarm.details["operation"]) == (
        Severity.CRITICAL, "ScheduleKeyDeletion on the key", "ScheduleKeyDeletion")
