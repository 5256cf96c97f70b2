"""`new-principal-on-key`: a principal's first successful cryptographic call on an established key.

A key's callers are usually a settled few (an application's role, a backup job); one that starts
using it is a grant, policy or deploy to confirm, or credentials that reach further than meant.
Keys still in their learning period (`min_history_days` of observed use) are passed over, so a
new key, or a detector that starts reading, does not raise one alarm per caller.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from keytrail.detect.alarms import Finding, caller_origin, format_time
from keytrail.detect.checks import caller_id, caller_name, caller_scope, expected_caller
from keytrail.detect.events import CRYPTO_OPERATIONS, KmsEvent
from keytrail.detect.ledger import KeyLedger
from keytrail.detect.rules import Rule

__all__ = ["NewPrincipalOnKey"]

_RECOMMENDATION = (
    "Confirm that {principal} is meant to use this key (a new service, deploy or grant). If not, find "
    "the key policy statement or grant that lets it, and where its credentials are used "
    "(details.sourceIPAddresses and accessKeyIds)."
)


class NewPrincipalOnKey:
    """Reads the ledger's key x principal record (who used each key), keeping no state of its own."""

    rule_id = "new-principal-on-key"
    event_names = CRYPTO_OPERATIONS

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger
        self._learning = timedelta(days=int(rule.param("min_history_days")))

    def observe(self, event: KmsEvent) -> list[Finding]:
        # Every successful cryptographic call passes here, almost all by a known user of the key:
        # that case is kept to two lookups (judged after the learning period first, it took about a
        # quarter of the detector's per-event time).
        if event.error_code is not None:
            return []
        # A caller with no ARN (a SAML or web identity user) by its account and what tells it apart
        # there, as the ledger remembers it: stolen federated credentials reach keys as any others do.
        principal, keys = event.principal_arn or caller_id(event), event.key_arns
        # A ReEncrypt uses its source and its destination key (the same one, possibly).
        new = [
            key
            for key in (keys if len(keys) < 2 else dict.fromkeys(keys))
            if self._new_on(key, principal, event.event_time)
        ]
        if not new or expected_caller(event, self.rule.parameters):
            return []
        return [self._finding(event, key) for key in new]

    def tick(self, now: datetime) -> list[Finding]:
        return []

    def _new_on(self, key_arn: str, principal: str, at: datetime) -> bool:
        record = self.ledger.get(key_arn)
        if record is None or record.principals.get(principal):  # a key never seen, or a known user of it
            return False
        if record.key_manager == "AWS":
            # An AWS managed key's policy lets every principal of the account use it through its
            # service (kms:CallerAccount + kms:ViaService), and cannot be changed: its callers are
            # whoever uses S3, EBS… there, no settled few, and no statement or grant to narrow.
            return False
        if record.first_used is None or at - record.first_used < self._learning:
            return False  # still learning who uses the key
        return not self.ledger.has_used_cryptographically(key_arn, principal)

    def _finding(self, event: KmsEvent, key_arn: str) -> Finding:
        record = self.ledger.get(key_arn)
        assert record is not None and record.first_used is not None  # _new_on found both
        known = sum(record.principals.values())  # of its callers remembered (a crowded key has more)
        who = caller_name(event)
        return Finding.on_event(
            self.rule_id,
            event,
            summary=f"{who} used {key_arn} for the first time ({event.event_name}); "
            f"{'at least ' if record.crowded else ''}{known} other principal(s) "
            f"used it since {format_time(record.first_used)}",
            recommendation=_RECOMMENDATION.format(principal=who),
            details={
                "eventName": event.event_name,
                "keyUsedSince": format_time(record.first_used),
                "knownPrincipals": str(known),
            }
            | caller_origin(event),
            key_arn=key_arn,
            scope=caller_scope(event),
        )
