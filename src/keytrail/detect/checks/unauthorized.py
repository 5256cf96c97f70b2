"""`unauthorized-decrypt`: cryptographic calls denied with AccessDenied, per principal x key."""

from __future__ import annotations

from datetime import datetime
from fnmatch import fnmatchcase

from keytrail.detect.alarms import Finding, caller_origin
from keytrail.detect.checks import arn_region_account
from keytrail.detect.deny import DENIED_CODES, parse_deny_reason
from keytrail.detect.events import CRYPTO_OPERATIONS, KmsEvent
from keytrail.detect.ledger import KeyLedger
from keytrail.detect.rules import Rule

__all__ = ["UnauthorizedDecrypt"]

_RECOMMENDATION = (
    "Check whether {principal} should use this key. If not, find where its credentials are used "
    "(details.sourceIPAddresses and accessKeyIds; the events' userAgent) and rotate them; if it "
    "should, grant access in the {policy} policy."
)


class UnauthorizedDecrypt:
    """Denied cryptographic calls; AWS service callers and allow-listed principals are suppressed."""

    rule_id = "unauthorized-decrypt"
    event_names = CRYPTO_OPERATIONS

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger

    def observe(self, event: KmsEvent) -> list[Finding]:
        if not event.is_crypto or event.error_code not in DENIED_CODES:
            return []
        if self._suppressed(event):
            return []
        return [self._finding(event)]

    def tick(self, now: datetime) -> list[Finding]:
        return []

    def _suppressed(self, event: KmsEvent) -> bool:
        params = self.rule.parameters
        if params["suppress_aws_services"] and (
            event.identity_type == "AWSService" or event.invoked_by in params["aws_service_callers"]
        ):
            return True
        principal = event.principal_arn or ""
        return any(fnmatchcase(principal, pattern) for pattern in params["allow_principals"])

    def _finding(self, event: KmsEvent) -> Finding:
        reason = parse_deny_reason(event.error_message)
        key = event.judged_key_arn  # a ReEncrypt may be refused on its destination
        new = not self.ledger.has_used(key, event.principal_arn)
        bump = int(self.rule.param("new_principal_bump"))
        details = {
            "denyType": reason.kind,
            "policyType": reason.policy_type or "unknown",
            "eventName": event.event_name,
            "errorCode": event.error_code or "",
        }
        key_account = arn_region_account(key)[1]
        if event.account_id and key_account and event.account_id != key_account:
            details["crossAccount"] = "true"
        if new:
            details["newPrincipalOnKey"] = "true"  # never made a successful call on this key
        details |= caller_origin(event)  # the recommendation sends the responder after the credentials
        who = event.principal_arn or "an unknown principal"
        return Finding.on_event(
            self.rule_id,
            event,
            severity=self.rule.severity.bump(bump) if new and bump else None,
            summary=f"{who} was denied {event.event_name} on {key or 'a key'} "
            f"({reason.kind} deny, {reason.policy_type or 'unknown'} policy)",
            recommendation=_RECOMMENDATION.format(principal=who, policy=reason.policy_type or "key"),
            details=details,
            key_arn=key,
        )
