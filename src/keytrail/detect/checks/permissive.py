"""`permissive-key`: CreateKey, PutKeyPolicy, ReplicateKey and CreateGrant that open a key too wide."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

from keytrail.audit.schema import is_key_arn
from keytrail.detect.alarms import Finding
from keytrail.detect.analyzer import PolicyFinding, TrustZone, analyze_grant, analyze_policy
from keytrail.detect.checks import arn_region_account
from keytrail.detect.conditions import arn_account
from keytrail.detect.events import KmsEvent
from keytrail.detect.rules import Rule
from keytrail.detect.severity import Severity

__all__ = ["OrganizationOf", "PermissiveKey", "identity_finding", "no_organization", "policy_finding", "trust_zone"]

# An account's AWS Organizations organization id, None for an account in none (the principals
# file's [[organization]] tables, which the detector is given by the command that runs it).
OrganizationOf = Callable[[str], str | None]

_WRITES = frozenset({"CreateKey", "PutKeyPolicy", "ReplicateKey", "CreateGrant"})

RECOMMENDATION = (
    "Narrow the statement or grant named in details.findings: name the principals, pin '*' with "
    "kms:CallerAccount or aws:PrincipalOrgID, keep kms:* for key administrators, revoke external grants."
)
IDENTITY_RECOMMENDATION = (
    "Scope the identity policy statement named in details.findings to the key ARNs the principal needs "
    "(Security Hub KMS.1/KMS.2); list real key administrators in the rule's admin_principals."
)


def no_organization(account: str) -> str | None:
    """Where no principals file is known: every account is in no organization."""
    return None


def trust_zone(rule: Rule, key_account: str, organization_of: OrganizationOf = no_organization) -> TrustZone:
    """The trust zone of a key from the rule's parameters and its account's organization."""
    return TrustZone(
        key_account,
        frozenset(map(str, rule.param("trusted_accounts"))),
        frozenset(map(str, rule.param("trusted_org_ids"))),
        tuple(map(str, rule.param("admin_principals"))),
        organization_of(key_account) if key_account else None,
        organization_of,
    )


def policy_finding(
    rule_id: str,
    key_arn: str,
    time: datetime,
    found: Sequence[PolicyFinding],
    *,
    principal_arn: str | None = None,
    event_id: str | None = None,
    trigger: str = "analyze",
) -> Finding:
    """One alarm finding summing up a key's policy findings (most severe first)."""
    ordered = sorted(found, key=lambda f: -f.severity.rank)
    region, account = arn_region_account(key_arn)
    return Finding(
        rule=rule_id,
        time=time,
        key_arn=key_arn,
        principal_arn=principal_arn,
        event_id=event_id,
        account_id=account,
        region=region,
        severity=Severity.highest(*(f.severity for f in ordered)),
        summary=f"{key_arn} is too permissive ({_codes(ordered)}): {ordered[0].message}",
        recommendation=RECOMMENDATION,
        details=_details(trigger, ordered),
    )


def identity_finding(rule_id: str, principal_arn: str, time: datetime, found: Sequence[PolicyFinding]) -> Finding:
    """One alarm finding summing up a principal's identity-policy findings. They concern every key
    of the principal's account, not one key: keyArn is null and accountId names the account (as an
    audit record of a key-less call is keyed by its account)."""
    ordered = sorted(found, key=lambda f: -f.severity.rank)
    account = arn_account(principal_arn)
    return Finding(
        rule=rule_id,
        time=time,
        key_arn=None,
        principal_arn=principal_arn,
        account_id=account,
        severity=Severity.highest(*(f.severity for f in ordered)),
        summary=f"{principal_arn} may decrypt with every key of account {account} ({_codes(ordered)}): "
        f"{ordered[0].source}",
        recommendation=IDENTITY_RECOMMENDATION,
        details=_details("analyze", ordered),
    )


def _codes(ordered: Sequence[PolicyFinding]) -> str:
    return ", ".join(dict.fromkeys(f.code for f in ordered))


def _details(trigger: str, ordered: Sequence[PolicyFinding]) -> dict[str, str]:
    return {
        "trigger": trigger,
        "source": ordered[0].source,
        "findings": json.dumps([f.to_json() for f in ordered], separators=(",", ":")),
    }


class PermissiveKey:
    """Analyzes each new key policy and grant as it is written."""

    rule_id = "permissive-key"
    event_names = _WRITES

    def __init__(self, rule: Rule, organization_of: OrganizationOf = no_organization) -> None:
        self.rule = rule
        self.organization_of = organization_of

    def observe(self, event: KmsEvent) -> list[Finding]:
        key_arn = _written_key(event)
        if not event.succeeded or key_arn is None or event.event_name not in _WRITES:
            return []
        zone = trust_zone(self.rule, arn_region_account(key_arn)[1] or "", self.organization_of)
        found = self._analyze(event, zone)
        if not found:
            return []
        return [
            policy_finding(
                self.rule_id,
                key_arn,
                event.event_time,
                found,
                principal_arn=event.principal_arn,
                event_id=event.event_id,
                trigger=event.event_name,
            )
        ]

    def tick(self, now: datetime) -> list[Finding]:
        return []

    @staticmethod
    def _analyze(event: KmsEvent, zone: TrustZone) -> list[PolicyFinding]:
        params = event.request_parameters
        if event.event_name == "CreateGrant":
            grant = {**params, "grantId": event.response_elements.get("grantId") or params.get("name")}
            return analyze_grant(grant, zone)
        policy = params.get("policy")
        if not policy:
            return []  # CreateKey without Policy: the default policy trusts the key account only
        try:
            return analyze_policy(policy, zone)
        except (ValueError, AttributeError):
            return []  # KMS refuses malformed policies; a record with one was not applied


def _written_key(event: KmsEvent) -> str | None:
    """The key whose policy or grants the call wrote: for ReplicateKey the new replica, whose key
    policy its Policy is (API_ReplicateKey), not the primary its resources name."""
    if event.event_name != "ReplicateKey":
        return event.key_arn
    metadata = event.response_elements.get("replicaKeyMetadata")
    arn = metadata.get("arn") if isinstance(metadata, Mapping) else None
    return arn if isinstance(arn, str) and is_key_arn(arn) else None
