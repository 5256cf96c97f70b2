"""`rotation-disabled`: automatic rotation turned off on a customer managed symmetric key.

CIS AWS Foundations Benchmark "Ensure rotation for customer-created symmetric CMKs is enabled"
(3.6 in v3.0; 3.8 in v1.4; 2.8 in v1.2), checked by AWS Security Hub control KMS.4 through the AWS
Config rule cmk-backing-key-rotation-enabled. Live, the change is the finding: a successful
DisableKeyRotation. AWS refuses that call on every key the control leaves out: asymmetric and HMAC
keys, keys of imported material or in a custom key store and multi-Region replicas (their rotation is
the primary's) with UnsupportedOperationException, and the rotation of AWS managed keys cannot be
changed at all (EnableKeyRotation, DisableKeyRotation). A CreateKey never followed by
EnableKeyRotation is not alarmed live (every new key starts with rotation off); `keytrail analyze`
reports such keys from the inventory, as Security Hub does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from fnmatch import fnmatchcase

from keytrail.detect.alarms import Finding
from keytrail.detect.checks import arn_region_account
from keytrail.detect.events import KmsEvent
from keytrail.detect.ledger import KeyLedger
from keytrail.detect.rules import Rule

__all__ = ["KeyExemptions", "RotationDisabled", "rotation_finding"]

_DISABLE = "DisableKeyRotation"
_ALIAS_CHANGES = frozenset({"CreateAlias", "UpdateAlias", "DeleteAlias"})
RECOMMENDATION = (
    "Turn automatic rotation back on (EnableKeyRotation; yearly unless RotationPeriodInDays says otherwise, "
    "90-2560 days): rotation limits what one exposed key material can decrypt and costs no change to "
    "callers. A key that must keep its material belongs in the rule's exempt_keys or exempt_aliases."
)


class KeyExemptions:
    """The keys whose rotation may stay off: key ARN globs (`exempt_keys`) and alias name globs
    (`exempt_aliases`, `alias/legacy-*`)."""

    def __init__(self, rule: Rule) -> None:
        self.keys = tuple(map(str, rule.param("exempt_keys")))
        self.aliases = tuple(map(str, rule.param("exempt_aliases")))

    def exempt(self, key_arn: str, aliases: Iterable[str] = ()) -> bool:
        if any(fnmatchcase(key_arn, pattern) for pattern in self.keys):
            return True
        return any(fnmatchcase(alias, pattern) for alias in aliases for pattern in self.aliases)


def rotation_finding(
    rule_id: str, key_arn: str, time: datetime, aliases: Iterable[str] = (), *, event: KmsEvent | None = None
) -> Finding:
    """A key with automatic rotation off: turned off by `event` (its caller is the principal), or
    found off in an inventory (`keytrail analyze`: no principal)."""
    named = _named(key_arn, aliases)
    details = {"trigger": event.event_name if event else "analyze", "keyRotationEnabled": "false"}
    if aliases:
        details["aliases"] = ",".join(sorted(aliases))
    if event is not None:
        details["operation"] = event.event_name
        summary = (f"{event.principal_arn or 'unknown principal'} disabled automatic rotation of {named} "
                   "(CIS AWS Foundations 3.6, Security Hub KMS.4)")
        return Finding.on_event(rule_id, event, summary=summary, recommendation=RECOMMENDATION, details=details)
    region, account = arn_region_account(key_arn)
    return Finding(
        rule=rule_id,
        time=time,
        key_arn=key_arn,
        principal_arn=None,
        account_id=account,
        region=region,
        summary=f"Automatic rotation of {named} is off (CIS AWS Foundations 3.6, Security Hub KMS.4)",
        recommendation=RECOMMENDATION,
        details=details,
    )


def _named(key_arn: str, aliases: Iterable[str]) -> str:
    names = sorted(aliases)
    return f"{key_arn} ({', '.join(names)})" if names else key_arn


class RotationDisabled:
    """A successful DisableKeyRotation, unless the key is exempt. The aliases the stream shows
    (CreateAlias, UpdateAlias, DeleteAlias) are followed so that `exempt_aliases` can name keys."""

    rule_id = "rotation-disabled"
    event_names = frozenset({_DISABLE, "DeleteKey"}) | _ALIAS_CHANGES

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger
        self.exemptions = KeyExemptions(rule)
        self._targets: dict[str, str] = {}  # alias ARN -> key ARN
        self._aliases: dict[str, set[str]] = {}  # key ARN -> alias names

    def observe(self, event: KmsEvent) -> list[Finding]:
        key_arn = event.key_arn
        if not event.succeeded or key_arn is None:
            return []
        if event.event_name != _DISABLE:
            self._follow_alias(event, _alias_target(event) or key_arn)
            return []
        record = self.ledger.get(key_arn)
        aliases = self._aliases.get(key_arn, set())
        if (record is not None and record.key_manager == "AWS") or self.exemptions.exempt(key_arn, aliases):
            return []
        return [rotation_finding(self.rule_id, key_arn, event.event_time, aliases, event=event)]

    def tick(self, now: datetime) -> list[Finding]:
        return []

    def _follow_alias(self, event: KmsEvent, key_arn: str) -> None:
        if event.event_name == "DeleteKey":  # AWS deletes a key's aliases with it
            for alias in self._aliases.pop(key_arn, set()):
                self._targets.pop(_alias_arn(key_arn, alias), None)
            return
        name = _alias_name(event.request_parameters)
        if name is None:
            return
        alias_arn = _alias_arn(key_arn, name)  # an alias lives in its key's account and Region
        previous = self._targets.pop(alias_arn, None)
        if previous is not None:
            self._forget(previous, name)
        if event.event_name != "DeleteAlias":
            self._targets[alias_arn] = key_arn
            self._aliases.setdefault(key_arn, set()).add(name)

    def _forget(self, key_arn: str, alias: str) -> None:
        names = self._aliases.get(key_arn)
        if names is not None:
            names.discard(alias)
            if not names:
                del self._aliases[key_arn]


def _alias_target(event: KmsEvent) -> str | None:
    """The key an alias change leaves the alias on. UpdateAlias names the key it leaves and the one
    it goes to in resources[], the one it leaves first (AWS's records and keytrail's): the one it
    goes to is the one requestParameters.targetKeyId names (a key id or key ARN), else the last."""
    if event.event_name != "UpdateAlias":
        return event.key_arn
    target = event.request_parameters.get("targetKeyId")
    if isinstance(target, str):
        for arn in event.key_arns:
            if arn == target or arn.endswith("/" + target):
                return arn
    return event.key_arns[-1] if event.key_arns else None


def _alias_name(params: Mapping[str, object]) -> str | None:
    name = params.get("aliasName")
    return name if isinstance(name, str) and name.startswith("alias/") else None


def _alias_arn(key_arn: str, alias: str) -> str:
    return key_arn.split(":key/", 1)[0] + ":" + alias
