"""`unauthorized-decrypt`: cryptographic calls denied with AccessDenied, per principal x key.

A principal denied on many keys (stolen credentials trying every key) is one attack, not one page
per key: past `key_alarms_per_principal` open alarms of its own, its denials of further keys fold
into one principal-level alarm (keyArn null) that counts and names the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from keytrail.detect.alarms import MAX_GATHERED, Finding, caller_origin
from keytrail.detect.checks import LatestTime, arn_region_account, caller_id, caller_name, expected_caller
from keytrail.detect.deny import DENIED_CODES, parse_deny_reason
from keytrail.detect.events import CRYPTO_OPERATIONS, KmsEvent
from keytrail.detect.ledger import UNCONFIRMED_KEYS, KeyLedger
from keytrail.detect.rules import Rule

__all__ = ["UnauthorizedDecrypt"]

_RECOMMENDATION = (
    "Check whether {principal} should use this key. If not, find where its credentials are used "
    "(details.sourceIPAddresses and accessKeyIds; the events' userAgent) and rotate them; if it "
    "should, grant access in the {policy} policy."
)
_FLOOD_RECOMMENDATION = (
    "{principal} is being denied key after key (details.keyArns): treat its credentials as stolen. Find "
    "where they are used (details.sourceIPAddresses and accessKeyIds) and rotate them now."
)
# The keys a principal-level alarm tells apart to count them: a flood of random key ARNs must not
# grow the detector without bound (as the ledger keeps only so many keys never seen to exist);
# past it, keyCount counts every denial of a key not remembered.
MAX_FOLDED_KEYS = UNCONFIRMED_KEYS


@dataclass(slots=True)
class _Denials:
    """One principal's denials within the window: the keys with an open alarm of their own (key ->
    last denial) and the keys folded into its principal-level alarm."""

    keyed: dict[str, datetime] = field(default_factory=dict)
    folded: set[str] = field(default_factory=set)
    folded_count: int = 0
    folded_first: list[str] = field(default_factory=list)  # the first MAX_GATHERED, in order
    folded_last: datetime | None = None

    def close_expired(self, now: datetime, window: timedelta) -> None:
        """Forget what the alarm book has closed: an alarm's window passed since its last denial."""
        for key, last in list(self.keyed.items()):
            if now - last > window:
                del self.keyed[key]
        if self.folded_last is not None and now - self.folded_last > window:
            self.folded, self.folded_count, self.folded_first, self.folded_last = set(), 0, [], None

    def fold(self, key: str, now: datetime) -> None:
        if key not in self.folded:
            self.folded_count += 1
            if len(self.folded) < MAX_FOLDED_KEYS:
                self.folded.add(key)
            if len(self.folded_first) < MAX_GATHERED:
                self.folded_first.append(key)
        self.folded_last = max(now, self.folded_last or now)

    def idle(self) -> bool:
        return not self.keyed and self.folded_last is None


class UnauthorizedDecrypt:
    """Denied cryptographic calls; AWS service callers and allow-listed principals are suppressed."""

    rule_id = "unauthorized-decrypt"
    event_names = CRYPTO_OPERATIONS

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger
        self._per_principal = int(rule.param("key_alarms_per_principal"))
        self._denials: dict[str, _Denials] = {}  # caller (`caller_id`) -> its denials in the window
        self._read = LatestTime()  # of the denials folded or keyed

    def observe(self, event: KmsEvent) -> list[Finding]:
        if not event.is_crypto or event.error_code not in DENIED_CODES:
            return []
        if expected_caller(event, self.rule.parameters):
            return []
        finding = self._finding(event)
        return [self._folded(event, finding) if self._folds(event, finding.key_arn) else finding]

    def tick(self, now: datetime) -> list[Finding]:
        if (as_of := self._read.as_of(now)) is None:
            return []
        for principal, denials in list(self._denials.items()):
            denials.close_expired(as_of, self.rule.window)
            if denials.idle():
                del self._denials[principal]  # a principal denied once long ago costs nothing
        return []

    def _folds(self, event: KmsEvent, key: str | None) -> bool:
        """Whether this denial goes to the principal's alarm: its key has no open alarm of its own,
        and the principal's alarm is open or `key_alarms_per_principal` keys have theirs."""
        if not self._per_principal or key is None:
            return False
        self._read.saw(event.event_time)
        denials = self._denials.setdefault(caller_id(event), _Denials())
        denials.close_expired(event.event_time, self.rule.window)
        if key in denials.keyed:
            denials.keyed[key] = max(event.event_time, denials.keyed[key])
            return False
        if denials.folded_last is None and len(denials.keyed) < self._per_principal:
            denials.keyed[key] = event.event_time
            return False
        denials.fold(key, event.event_time)
        return True

    def _folded(self, event: KmsEvent, finding: Finding) -> Finding:
        denials = self._denials[caller_id(event)]
        details = {name: value for name, value in finding.details.items() if name != "newPrincipalOnKey"}
        details |= {"keyCount": str(denials.folded_count), "keyArns": ",".join(denials.folded_first)}
        who = caller_name(event)
        return replace(
            finding,
            key_arn=None,
            details=details,
            summary=f"{who} was denied on {denials.folded_count} key(s) past its first {self._per_principal} key "
            f"alarms, latest {event.event_name} on {finding.key_arn}",
            recommendation=_FLOOD_RECOMMENDATION.format(principal=who),
        )

    def _finding(self, event: KmsEvent) -> Finding:
        reason = parse_deny_reason(event.error_message)
        key = event.judged_key_arn  # a ReEncrypt may be refused on its destination
        # New on no key is no signal: every denial naming none would be (a HIGH alarm from the first).
        new = key is not None and not self.ledger.has_used(key, caller_id(event))
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
        who = caller_name(event)
        finding = Finding.on_event(
            self.rule_id,
            event,
            severity=self.rule.severity.bump(bump) if new and bump else None,
            summary=f"{who} was denied {event.event_name} on {key or 'a key'} "
            f"({reason.kind} deny, {reason.policy_type or 'unknown'} policy)",
            recommendation=_RECOMMENDATION.format(principal=who, policy=reason.policy_type or "key"),
            details=details,
            key_arn=key,
        )
        return replace(finding, scope=_scope(event, key))


def _scope(event: KmsEvent, key: str | None) -> str | None:
    """What tells a denial's alarm apart beyond its key and principal. A denial naming no key it
    resolved (an alias, a bare key id) has keyArn null as the principal's flood alarm has: in one
    alarm, the flood folded into the first such denial and never paged, or a denial of no key
    retold the flood as one call. And callers with no ARN (a SAML or web identity user, an
    AWSAccount caller: principalArn null) are one caller each by account and access key, not one
    alarm whose first caller hides the others."""
    parts = ["no key"] if key is None else []
    if event.principal_arn is None:
        parts.append(caller_id(event))
    return " ".join(parts) or None

