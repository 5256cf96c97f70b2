"""`keytrail analyze`: the permissive-key rule over a whole key inventory and the principals' IAM
identity policies, and the rotation-disabled rule over the keys' rotation status."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from keytrail.clock import SystemClock
from keytrail.detect.alarms import Alarm, AlarmBook
from keytrail.detect.analyzer import (
    PolicyFinding,
    analyze_grant,
    analyze_identity_policy,
    analyze_policy,
    denied_everywhere,
)
from keytrail.detect.checks import arn_region_account
from keytrail.detect.checks.permissive import (
    OrganizationOf,
    identity_finding,
    no_organization,
    policy_finding,
    trust_zone,
)
from keytrail.detect.checks.rotation import KeyExemptions, rotation_finding
from keytrail.detect.conditions import arn_account
from keytrail.detect.rules import RuleSet

__all__ = ["IdentityItem", "KeyInventoryItem", "analyze_inventory", "read_inventory"]


@dataclass(frozen=True, slots=True)
class KeyInventoryItem:
    """One key: its ARN, key policy (JSON text; None = default policy), ListGrants entries, the
    DescribeKey fields that say whether it can rotate, its GetKeyRotationStatus (None: not known)
    and its alias names."""

    key_arn: str
    policy: str | None = None
    grants: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    key_manager: str = "CUSTOMER"
    key_state: str = "Enabled"
    key_spec: str = "SYMMETRIC_DEFAULT"
    origin: str = "AWS_KMS"
    custom_key_store_id: str | None = None
    replica: bool = False
    rotation_enabled: bool | None = None
    aliases: tuple[str, ...] = ()

    def rotation_off(self) -> bool:
        """Security Hub KMS.4 failing: an enabled customer managed symmetric encryption key of
        KMS-generated material whose automatic rotation is off. AWS cannot rotate the others (asymmetric,
        HMAC, imported material, custom key stores); a multi-Region replica rotates with its primary,
        which is judged; disabled and pending-deletion keys are never rotated and their rotation
        cannot be changed until they are enabled again."""
        return (
            self.rotation_enabled is False
            and self.key_manager == "CUSTOMER"
            and self.key_state == "Enabled"
            and self.key_spec == "SYMMETRIC_DEFAULT"
            and self.origin == "AWS_KMS"
            and not self.custom_key_store_id
            and not self.replica
        )


@dataclass(frozen=True, slots=True)
class IdentityItem:
    """One IAM principal: the ARN its identity policies name (a role's, not its sessions') and
    those policies, parsed."""

    principal_arn: str
    policies: Sequence[Mapping[str, Any]] = ()


def analyze_inventory(
    keys: Iterable[KeyInventoryItem],
    *,
    as_of: datetime | None = None,
    rules: RuleSet | None = None,
    identities: Iterable[IdentityItem] = (),
    organization_of: OrganizationOf = no_organization,
) -> list[Alarm]:
    """One permissive-key alarm per key with findings, then one per principal whose identity
    policies may decrypt with every key, then one rotation-disabled alarm per key whose automatic
    rotation is off; stamped `as_of` (default: now; no rule here depends on time, the stamp
    only dates the alarm). `organization_of`: the accounts' organizations (a key's own is trusted)."""
    rules = rules or RuleSet()
    rule, book = rules["permissive-key"], AlarmBook(rules)
    stamp = as_of or SystemClock().now()
    keys = list(keys)
    for item in keys:
        found = findings_for(item, rules, organization_of)
        if found and rule.enabled:
            book.record(policy_finding(rule.id, item.key_arn, stamp, found))
    for identity in identities:
        found = identity_findings(identity, rules, organization_of)
        if found and rule.enabled:
            book.record(identity_finding(rule.id, identity.principal_arn, stamp, found))
    _record_rotation(keys, rules, book, stamp)
    return book.alarms()


def _record_rotation(keys: Iterable[KeyInventoryItem], rules: RuleSet, book: AlarmBook, stamp: datetime) -> None:
    """rotation-disabled: each key failing Security Hub KMS.4 that the rule does not exempt."""
    rule = rules["rotation-disabled"]
    if not rule.enabled:
        return
    exemptions = KeyExemptions(rule)
    for item in keys:
        if item.rotation_off() and not exemptions.exempt(item.key_arn, item.aliases):
            book.record(rotation_finding(rule.id, item.key_arn, stamp, item.aliases))


def identity_findings(
    identity: IdentityItem, rules: RuleSet, organization_of: OrganizationOf = no_organization
) -> list[PolicyFinding]:
    """decrypt-all-keys findings of one principal's identity policies, each naming its policy
    (1-based, in the principals file's order) and statement."""
    zone = trust_zone(rules["permissive-key"], arn_account(identity.principal_arn) or "", organization_of)
    found, denied = [], denied_everywhere(identity.policies)
    for number, policy in enumerate(identity.policies, 1):
        for finding in analyze_identity_policy(policy, identity.principal_arn, zone, denied=denied):
            where = f"policy {number} {finding.source}"
            found.append(replace(finding, source=where, message=finding.message.replace(finding.source, where, 1)))
    return found


def findings_for(
    item: KeyInventoryItem, rules: RuleSet, organization_of: OrganizationOf = no_organization
) -> list[PolicyFinding]:
    """Every finding of one key's policy and grants."""
    zone = trust_zone(rules["permissive-key"], arn_region_account(item.key_arn)[1] or "", organization_of)
    try:
        found = analyze_policy(item.policy, zone) if item.policy else []
    except ValueError as exc:  # json.JSONDecodeError is one
        raise ValueError(f"key {item.key_arn}: its Policy is not a JSON policy document ({exc})") from None
    for grant in item.grants:
        found += analyze_grant(grant, zone)
    return found


def read_inventory(doc: Any) -> list[KeyInventoryItem]:
    """Inventory JSON: a list of `{KeyArn, Policy, Grants, KeyManager, KeyState, KeySpec, Origin,
    CustomKeyStoreId, MultiRegionConfiguration, KeyRotationEnabled, Aliases}` objects (all but
    KeyArn optional), or `{"Keys": [...]}`; ValueError naming the key and the field that is not of
    its kind."""
    items = doc.get("Keys") if isinstance(doc, Mapping) else doc
    if not isinstance(items, list):
        raise ValueError('an inventory is a JSON list of keys (or {"Keys": [...]})')
    return [_item(item, number) for number, item in enumerate(items, 1)]


def _item(item: Any, number: int) -> KeyInventoryItem:
    if not isinstance(item, Mapping) or not isinstance(item.get("KeyArn"), str):
        raise ValueError(f"key {number} of the inventory: an object with a KeyArn string is needed")
    where = f"key {item['KeyArn']}"
    policy, grants = item.get("Policy"), item.get("Grants") or []
    if not isinstance(policy, str | None):
        raise ValueError(f"{where}: Policy is the key policy as a JSON string (GetKeyPolicy's answer)")
    if not isinstance(grants, list) or not all(isinstance(grant, Mapping) for grant in grants):
        raise ValueError(f"{where}: Grants is a list of grant objects (ListGrants' answer)")
    texts = {name: item.get(name, default) for name, default in _TEXTS}
    if not all(isinstance(text, str) for text in texts.values()):
        raise ValueError(f"{where}: {', '.join(name for name, _ in _TEXTS)} are strings")
    return KeyInventoryItem(
        item["KeyArn"], policy, tuple(grants), texts["KeyManager"], texts["KeyState"],
        key_spec=texts["KeySpec"],
        origin=texts["Origin"],
        custom_key_store_id=_optional_text(item, "CustomKeyStoreId", where),
        replica=_replica(item, where),
        rotation_enabled=_rotation_enabled(item, where),
        aliases=_aliases(item, where),
    )


# DescribeKey's KeyMetadata names; a key without them is taken for the common case.
_TEXTS = (("KeyManager", "CUSTOMER"), ("KeyState", "Enabled"), ("KeySpec", "SYMMETRIC_DEFAULT"),
          ("Origin", "AWS_KMS"))


def _optional_text(item: Mapping[str, Any], name: str, where: str) -> str | None:
    value = item.get(name)
    if not isinstance(value, str | None):
        raise ValueError(f"{where}: {name} is a string")
    return value or None


def _replica(item: Mapping[str, Any], where: str) -> bool:
    """Whether DescribeKey's MultiRegionConfiguration names the key a REPLICA."""
    config = item.get("MultiRegionConfiguration") or {}
    if not isinstance(config, Mapping) or not isinstance(config.get("MultiRegionKeyType", ""), str):
        raise ValueError(f"{where}: MultiRegionConfiguration is DescribeKey's object, "
                         'with MultiRegionKeyType "PRIMARY" or "REPLICA"')
    return config.get("MultiRegionKeyType") == "REPLICA"


def _rotation_enabled(item: Mapping[str, Any], where: str) -> bool | None:
    """GetKeyRotationStatus's KeyRotationEnabled; None when the inventory does not say (not judged)."""
    value = item.get("KeyRotationEnabled")
    if not isinstance(value, bool | None):
        raise ValueError(f"{where}: KeyRotationEnabled is true or false (GetKeyRotationStatus' answer)")
    return value


def _aliases(item: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """Alias names, as strings or ListAliases entries (`{"AliasName": "alias/…"}`)."""
    entries = item.get("Aliases") or []
    names = [entry.get("AliasName") if isinstance(entry, Mapping) else entry
             for entry in (entries if isinstance(entries, list) else [None])]
    if not all(isinstance(name, str) for name in names):
        raise ValueError(f'{where}: Aliases is a list of alias names ("alias/…") or ListAliases entries')
    return tuple(map(str, names))
