"""`key-reconnaissance`: one principal reading the metadata of many keys within the window.

Enumeration comes before an attack: which keys exist, who may use them (policies, grants), which
sign. A principal's key-metadata calls are counted per distinct key over a sliding window; at
`min_keys` keys it raises, MEDIUM once `min_denied` of those keys refused it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from keytrail.detect.alarms import Finding, caller_origin
from keytrail.detect.checks import expected_caller
from keytrail.detect.deny import DENIED_CODES
from keytrail.detect.events import KmsEvent
from keytrail.detect.ledger import UNCONFIRMED_KEYS
from keytrail.detect.rules import Rule
from keytrail.detect.severity import Severity

__all__ = ["METADATA_OPERATIONS", "KeyReconnaissance"]

METADATA_OPERATIONS = frozenset({
    "DescribeKey", "GetKeyPolicy", "GetKeyRotationStatus", "GetPublicKey", "ListGrants", "ListKeyPolicies",
    "ListResourceTags",
})
# The keys one principal's survey remembers, the least recently called let go first: a principal
# enumerating random key ARNs must not grow the detector without bound (the ledger's bound).
MAX_SURVEYED_KEYS = UNCONFIRMED_KEYS

_RECOMMENDATION = (
    "Confirm that {principal} is an inventory or compliance tool; if so, add it to allow_principals. If "
    "not, treat it as enumeration before an attack: find where its credentials are used "
    "(details.sourceIPAddresses and accessKeyIds) and rotate them."
)


@dataclass(slots=True)
class _Survey:
    """One principal's metadata calls within the window: key -> (last call, a call was denied),
    in the order last called; event name -> last call."""

    keys: OrderedDict[str, tuple[datetime, bool]] = field(default_factory=OrderedDict)
    names: dict[str, datetime] = field(default_factory=dict)
    denied_keys: int = 0

    def add(self, key: str, name: str, at: datetime, denied: bool) -> None:
        last, was_denied = self.keys.pop(key, (at, False))
        self.keys[key] = (max(at, last), was_denied or denied)
        if denied and not was_denied:
            self.denied_keys += 1
        self.names[name] = max(at, self.names.get(name, at))
        if len(self.keys) > MAX_SURVEYED_KEYS:
            self._drop_oldest()

    def expire(self, now: datetime, window: timedelta) -> None:
        while self.keys and now - next(iter(self.keys.values()))[0] > window:
            self._drop_oldest()
        for name, last in list(self.names.items()):
            if now - last > window:
                del self.names[name]

    def _drop_oldest(self) -> None:
        _, (_, denied) = self.keys.popitem(last=False)
        if denied:
            self.denied_keys -= 1


class KeyReconnaissance:
    """Per principal, the distinct keys whose metadata it read within the window."""

    rule_id = "key-reconnaissance"
    event_names = METADATA_OPERATIONS

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._min_keys = int(rule.param("min_keys"))
        self._min_denied = int(rule.param("min_denied"))
        self._surveys: dict[str, _Survey] = {}  # principal ARN -> its survey

    def observe(self, event: KmsEvent) -> list[Finding]:
        key, principal = event.judged_key_arn, event.principal_arn
        if key is None or principal is None or expected_caller(event, self.rule.parameters):
            return []
        survey = self._surveys.setdefault(principal, _Survey())
        survey.add(key, event.event_name, event.event_time, event.error_code in DENIED_CODES)
        survey.expire(event.event_time, self.rule.window)
        return [self._finding(event, survey)] if len(survey.keys) >= max(self._min_keys, 1) else []

    def tick(self, now: datetime) -> list[Finding]:
        for principal, survey in list(self._surveys.items()):
            survey.expire(now, self.rule.window)
            if not survey.keys:
                del self._surveys[principal]  # a principal that read a key once long ago costs nothing
        return []

    def surveyed(self) -> int:
        """Principal x key entries kept."""
        return sum(len(survey.keys) for survey in self._surveys.values())

    def _finding(self, event: KmsEvent, survey: _Survey) -> Finding:
        denied = survey.denied_keys >= self._min_denied
        who = event.principal_arn
        return Finding(
            rule=self.rule_id, time=event.event_time, key_arn=None, principal_arn=who, event_id=event.event_id,
            account_id=event.account_id, region=event.region, severity=Severity.MEDIUM if denied else None,
            summary=f"{who} read the metadata of {len(survey.keys)} keys within {_duration(self.rule.window)} "
            f"({survey.denied_keys} refused it)",
            recommendation=_RECOMMENDATION.format(principal=who),
            details={"keyCount": str(len(survey.keys)), "deniedKeyCount": str(survey.denied_keys),
                     "eventNames": ",".join(sorted(survey.names))} | caller_origin(event),
        )


def _duration(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"
