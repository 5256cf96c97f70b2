"""Which policy conditions really pin a statement to an account, organization, source or network.

A condition restricts only when an outsider cannot satisfy it: an equality (or wildcard-free
`Like`) operator, not `…IfExists` (absent keys pass), with concrete values (no `*`, `?` or policy
variables), or wildcards only past the account of an ARN or the organization of an org path.
Access Analyzer and Security Hub KMS.5 read conditions the same way (audit-anchors §2.2, §2.3);
prowler#970 is the false positive this avoids.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Pinning", "arn_account", "as_list", "read_perimeter", "read_pinning"]

_EQUALITY_OPERATORS = frozenset({"stringequals", "stringequalsignorecase", "stringlike", "arnequals", "arnlike"})
# Not aws:ResourceAccount: in a key policy the resource is the key, so it is always the key's own
# account, whoever calls; equal to it, the condition lets everyone through.
_ACCOUNT_KEYS = frozenset({"kms:calleraccount", "aws:sourceaccount", "aws:sourceowner", "aws:principalaccount"})
_ORG_KEYS = frozenset({"aws:principalorgid", "aws:sourceorgid", "aws:principalorgpaths", "aws:sourceorgpaths"})
_ARN_KEYS = frozenset({"aws:sourcearn", "aws:principalarn"})
# A named VPC or VPC endpoint: only calls through the key owner's network match, which S3's "public"
# test, Prowler and Access Analyzer (a VPC finding, not a public one) all take as not public. The
# condition names no account, so it is not judged against the trusted ones either.
_NETWORK_KEYS = frozenset({"aws:sourcevpc", "aws:sourcevpce"})
# Keys every KMS request carries. `ForAllValues:` and `…IfExists` are true when the request lacks
# its key (IAM "Condition operators"; kms/conditions.py evaluates them so), so they pin only these:
# a direct caller has no aws:SourceAccount, an account outside any organization no aws:PrincipalOrgID.
_ALWAYS_PRESENT = frozenset({"kms:calleraccount", "aws:principalaccount", "aws:principalarn"})


@dataclass(frozen=True, slots=True)
class Pinning:
    """What a statement's conditions pin it to; `pinned` is False when nothing does."""

    accounts: frozenset[str] = field(default_factory=frozenset)
    org_ids: frozenset[str] = field(default_factory=frozenset)
    arns: frozenset[str] = field(default_factory=frozenset)
    networks: frozenset[str] = field(default_factory=frozenset)
    grant_for_aws_resource: bool = False
    # kms:ViaService to named services: only those services call, on a caller's behalf (the AWS
    # managed key pattern), so a CreateGrant it allows is made by the service for its resource.
    via_service: bool = False

    @property
    def pinned(self) -> bool:
        return bool(self.accounts or self.org_ids or self.arns or self.networks)


def read_pinning(condition: Any) -> Pinning:
    """Collect the restricting account, org and ARN conditions of one statement; ValueError when
    the Condition element is not an object (KMS refuses such a policy)."""
    if not isinstance(condition, Mapping | None):
        raise ValueError(f"a Condition element is an object of condition operators, not {condition!r}")
    accounts: set[str] = set()
    orgs: set[str] = set()
    arns: set[str] = set()
    networks: set[str] = set()
    grant_for_resource = via_service = False
    for operator, keys in (condition or {}).items():
        if not isinstance(keys, Mapping) or not _restricting(operator):
            if isinstance(keys, Mapping) and operator.lower() == "bool":
                grant_for_resource |= _true(keys, "kms:grantisforawsresource")
            continue
        for key, raw in keys.items():
            name, values = key.lower(), _policy_values(raw)
            if operator.lower().startswith("forallvalues:") and name not in _ALWAYS_PRESENT:
                continue
            if operator.lower().endswith("ifexists") and name not in _ALWAYS_PRESENT:
                continue  # a request without the key passes; on a key every request has, it is the operator
            if name in _ORG_KEYS and (org_ids := _org_ids(values)):
                orgs.update(org_ids)
                continue
            if name in _ARN_KEYS and (arn_accounts := _wildcard_arn_accounts(operator, values)):
                accounts.update(arn_accounts)
                continue
            concrete = [v for v in values if _concrete(v)]
            if not concrete or len(concrete) != len(values):
                continue  # one wildcard value lets anyone match
            if name in _ACCOUNT_KEYS:
                accounts.update(concrete)
            elif name in _ORG_KEYS:  # a value no organization has: it lets no one in
                orgs.update(v.split("/", 1)[0] for v in concrete)
            elif name in _ARN_KEYS:
                arns.update(concrete)
            elif name in _NETWORK_KEYS:
                networks.update(concrete)
            elif name == "kms:viaservice":
                via_service = True
    return Pinning(
        frozenset(accounts), frozenset(orgs), frozenset(arns), frozenset(networks), grant_for_resource, via_service
    )


# A Deny to everyone unless a condition holds (the data-perimeter pattern). A negated operator is
# true when the request lacks its key, so `StringNotEquals[IfExists] aws:PrincipalOrgID o-x` denies
# every caller outside o-x, with the key or without it: what it leaves is what the positive pins.
_NEGATED_OPERATORS = {
    "stringnotequals": "StringEquals",
    "stringnotequalsignorecase": "StringEqualsIgnoreCase",
    "stringnotlike": "StringLike",
    "arnnotequals": "ArnEquals",
    "arnnotlike": "ArnLike",
}


def read_perimeter(condition: Any) -> Pinning:
    """What a Deny statement to everyone leaves allowed, as a pinning; not pinned when anyone may
    get past it. The Deny applies only when all its conditions hold, so what is left is the union of
    what each negated condition pins; a condition an outsider can make false (any other key or
    operator) leaves anyone through, except `aws:PrincipalIsAWSService` false (AWS services only)."""
    if not isinstance(condition, Mapping) or not condition:
        return Pinning()
    left: list[Pinning] = []
    for operator, keys in condition.items():
        name = str(operator).lower().removesuffix("ifexists")
        if name == "bool" and isinstance(keys, Mapping) and _only_service_exemption(keys):
            continue
        positive = _NEGATED_OPERATORS.get(name)
        if positive is None or not isinstance(keys, Mapping) or not keys:
            return Pinning()
        for key, values in keys.items():
            pinning = read_pinning({positive: {key: values}})
            if not pinning.pinned:
                return Pinning()
            left.append(pinning)
    return Pinning(
        frozenset().union(*(p.accounts for p in left)),
        frozenset().union(*(p.org_ids for p in left)),
        frozenset().union(*(p.arns for p in left)),
        frozenset().union(*(p.networks for p in left)),
    )


def _only_service_exemption(keys: Mapping[str, Any]) -> bool:
    return len(keys) == 1 and all(
        k.lower() == "aws:principalisawsservice" and [str(v).lower() for v in as_list(v)] == ["false"]
        for k, v in keys.items()
    )


def _restricting(operator: str) -> bool:
    name = operator.lower()
    for prefix in ("foranyvalue:", "forallvalues:"):
        name = name.removeprefix(prefix)
    # Not… operators never pin; …IfExists only on keys every request carries (read_pinning)
    return name.removesuffix("ifexists") in _EQUALITY_OPERATORS


# An organization path (`o-a1b2c3d4e5/r-ab12/ou-ab12-11111111/*`, AWS's own example takes a whole
# OU with a trailing `*`): the organization is the part before the first `/`, which a wildcard
# after it cannot reach.
_ORG_PATH = re.compile(r"(o-[a-z0-9]+)(?:/.*)?", re.ASCII)
# An ARN up to its account field: `arn:PARTITION:SERVICE:REGION:ACCOUNT:`.
_ARN_HEAD = re.compile(r"arn:([^:]*):([^:]*):([^:]*):([^:]*):", re.ASCII)


def _org_ids(values: list[Any]) -> frozenset[str]:
    """The organizations that organization ids or paths name, one a value; empty when a value
    names none (a wildcard in the id itself, `o-*`, lets any organization match)."""
    orgs = set()
    for value in values:
        match = _ORG_PATH.fullmatch(value) if isinstance(value, str) else None
        if match is None or not _concrete(match.group(1)):
            return frozenset()
        orgs.add(match.group(1))
    return frozenset(orgs)


def _wildcard_arn_accounts(operator: str, values: list[Any]) -> frozenset[str]:
    """The accounts of ARN values when some have wildcards only after a concrete account
    (`arn:aws:iam::111122223333:role/app-*`): any principal or resource of that account may match,
    so the condition pins the account, not named ARNs (Access Analyzer reads it as that account's
    access). Empty when every value is concrete (named ARNs, read as such) or one names no account.
    `ArnLike` matches each ARN field apart, so a wildcard region stays in its field; `StringLike`
    matches the whole text, where a `*` before the account could take in another account's ARN."""
    if all(_concrete(v) for v in values):
        return frozenset()
    per_field = operator.lower().removeprefix("foranyvalue:").startswith("arn")
    accounts = set()
    for value in values:
        match = _ARN_HEAD.match(value) if isinstance(value, str) else None
        if match is None:
            return frozenset()
        account = match.group(4)
        head_concrete = _concrete(account) if per_field else _concrete(match.group(0))
        if not (head_concrete and account.isdigit() and len(account) == 12):
            return frozenset()
        accounts.add(account)
    return frozenset(accounts)


def _policy_values(raw: Any) -> list[Any]:
    """A condition's values as the string operators compare them: IAM's grammar takes JSON numbers
    too (`"kms:CallerAccount": 111122223333`, as some generators write an account), compared as their
    text (kms/conditions.py does so), so a number pins as its string does."""
    return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in as_list(raw)]


def _concrete(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not any(c in value for c in "*?") and "${" not in value


def _true(keys: Mapping[str, Any], wanted: str) -> bool:
    return any(k.lower() == wanted and [str(v).lower() for v in as_list(v)] == ["true"] for k, v in keys.items())


def as_list(value: Any) -> list[Any]:
    """Policy fields take a value or a list of values."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def arn_account(principal: str) -> str | None:
    """The account of an AWS principal: a bare 12-digit id or the 5th field of an ARN."""
    if principal.isdigit() and len(principal) == 12:
        return principal
    parts = principal.split(":")
    if len(parts) >= 6 and parts[0] == "arn" and parts[4].isdigit():
        return parts[4]
    return None
