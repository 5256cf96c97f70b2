"""`key-deletion-in-use`: disabling or deleting a key still in use, and use of a doomed key."""

from __future__ import annotations

from datetime import datetime, timedelta

from keytrail.detect.alarms import Finding, caller_origin, format_time
from keytrail.detect.events import CRYPTO_OPERATIONS, KmsEvent
from keytrail.detect.ledger import KeyLedger
from keytrail.detect.rules import Rule
from keytrail.detect.severity import Severity

__all__ = ["KeyDeletionInUse"]

_STOPS = frozenset({"ScheduleKeyDeletion", "DisableKey"})
# CancelKeyDeletion leaves the key Disabled (API_CancelKeyDeletion: "To enable the KMS key, use
# EnableKey"): a responder told "cancel or re-enable" who only cancels still has its users failing.
_UNDO = {
    "ScheduleKeyDeletion": "cancel the deletion (CancelKeyDeletion) and enable the key again (EnableKey: "
    "a cancelled key is left Disabled)",
    "DisableKey": "enable the key again (EnableKey)",
}
_STOP_RECOMMENDATION = (
    "The key was used recently: {undo} until its users ({user}) have moved; ciphertext under a "
    "deleted key is lost for good."
)
_USE_RECOMMENDATION = (
    "Something still needs this key: find the caller and either {undo} or move the caller to another "
    "key before the waiting period ends."
)


# ScheduleKeyDeletion's waiting period when the request names none (API_ScheduleKeyDeletion).
_DEFAULT_PENDING_WINDOW_DAYS = 30


def _pending_window(event: KmsEvent) -> str:
    """The days before the key is deleted: the request's, else the response's (a caller relying on
    the default sends none; the API's response carries it), else AWS's default of 30."""
    for elements in (event.request_parameters, event.response_elements):
        window = elements.get("pendingWindowInDays")
        if window is not None:
            return str(window)
    return str(_DEFAULT_PENDING_WINDOW_DAYS)


# How KMS refuses a key on its way to deletion: "<ARN> is pending deletion.", and for a multi-Region
# primary scheduled for deletion while replicas remain (PendingReplicaDeletion, deleted once they
# are) "<ARN> is pending replica deletion.", which the first phrase does not match.
_PENDING_DELETION_PHRASES = ("pending deletion", "pending replica deletion")


def _names_pending_deletion(message: str | None) -> bool:
    """Whether an error message says the key is scheduled for deletion, in either state's words."""
    lowered = (message or "").lower()
    return any(phrase in lowered for phrase in _PENDING_DELETION_PHRASES)


class KeyDeletionInUse:
    """ScheduleKeyDeletion/DisableKey within `recent_days` of a use; any use attempt afterwards."""

    rule_id = "key-deletion-in-use"
    event_names = CRYPTO_OPERATIONS | _STOPS

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger

    def observe(self, event: KmsEvent) -> list[Finding]:
        if event.event_name in _STOPS and event.succeeded:
            return self._stopped(event)
        if event.is_crypto and not event.succeeded:
            return self._attempt(event)
        return []

    def tick(self, now: datetime) -> list[Finding]:
        return []

    def _stopped(self, event: KmsEvent) -> list[Finding]:
        record = self.ledger.get(event.key_arn)
        recent = timedelta(days=float(self.rule.param("recent_days")))
        if record is None or record.last_used is None or event.event_time - record.last_used > recent:
            return []
        details = {
            "operation": event.event_name,
            "lastUsed": format_time(record.last_used),
            "lastUsedBy": record.last_used_by or "",
            "lastUsedEventId": record.last_used_event_id or "",
        }
        if event.event_name == "ScheduleKeyDeletion":
            details["pendingWindowInDays"] = _pending_window(event)
        return [
            self._finding(
                event,
                Severity.CRITICAL if event.event_name == "ScheduleKeyDeletion" else None,
                f"{event.event_name} on {event.key_arn}, last used {format_time(record.last_used)} "
                f"by {record.last_used_by or 'unknown'}",
                _STOP_RECOMMENDATION.format(undo=_UNDO[event.event_name], user=record.last_used_by or "unknown"),
                details,
            )
        ]

    def _attempt(self, event: KmsEvent) -> list[Finding]:
        key = event.judged_key_arn  # a ReEncrypt may fail on its destination
        record = self.ledger.get(key)
        pending = _names_pending_deletion(event.error_message) or (
            event.error_code == "KMSInvalidStateException"
            and record is not None
            and record.state == "PendingDeletion"
        )
        if pending:
            what, severity, undo = "pending deletion", Severity.HIGH, _UNDO["ScheduleKeyDeletion"]
        elif event.error_code == "DisabledException" and self.rule.param("alert_on_disabled_use"):
            what, severity, undo = "disabled", Severity.MEDIUM, _UNDO["DisableKey"]
        else:
            return []
        return [
            self._finding(
                event,
                severity,
                f"{event.principal_arn or 'unknown principal'} tried {event.event_name} on {key}, which is {what}",
                _USE_RECOMMENDATION.format(undo=undo),
                {"operation": event.event_name, "keyState": what, "errorCode": event.error_code or "",
                 **caller_origin(event)},  # the recommendation: find the caller
                key_arn=key,
            )
        ]

    def _finding(self, event: KmsEvent, severity: Severity | None, summary: str, recommendation: str,
                 details: dict[str, str], key_arn: str | None = None) -> Finding:
        return Finding.on_event(self.rule_id, event, severity=severity, summary=summary,
                                recommendation=recommendation, details=details, key_arn=key_arn)
