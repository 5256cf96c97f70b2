"""Key policy and grant analysis: who can use a key, and which statement or grant says so.

Condition-aware and grant-aware (audit-anchors §2.2, §4 item 3): Deny statements grant nothing,
conditions that pin a `"*"` principal to an account, org or source are not public, AWS service
principals and service grants are not findings, unique ids (`AROA…`) are not cross-account.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase
from typing import Any

from keytrail.detect.conditions import Pinning, arn_account, as_list, read_perimeter, read_pinning
from keytrail.detect.severity import Severity

__all__ = [
    "PolicyFinding",
    "TrustZone",
    "analyze_grant",
    "analyze_identity_policy",
    "analyze_policy",
    "denied_everywhere",
]

_DECRYPT_ACTIONS = ("kms:decrypt", "kms:reencryptfrom")
# An account root in any partition (`arn:aws-cn:iam::…:root` in the China Regions, …).
_ROOT_ARN = re.compile(r"arn:aws(?:-[a-z]+)*:iam::(\d{12}):root", re.ASCII)


@dataclass(frozen=True, slots=True)
class TrustZone:
    """The key's account plus the accounts, orgs and administrators trusted with it. The key
    account's own organization (`key_org_id`, where the principals file puts the account in one)
    is trusted as Access Analyzer's organization zone of trust is: `"*"` pinned to it by
    aws:PrincipalOrgID is the documented way to share a key within an organization."""

    key_account: str
    trusted_accounts: frozenset[str] = frozenset()
    trusted_org_ids: frozenset[str] = frozenset()
    admin_principals: tuple[str, ...] = ()
    key_org_id: str | None = None
    # Each account's organization (the principals file's [[organization]] tables), None for one in none.
    organization_of: Callable[[str], str | None] | None = None

    def trusts_account(self, account: str) -> bool:
        return account == self.key_account or account in self.trusted_accounts or self._in_key_org(account)

    def _in_key_org(self, account: str) -> bool:
        """A fellow member of the key account's organization is inside the zone of trust, as in
        Access Analyzer's organization zone of trust: naming it (a principal of it, `"*"` pinned to it
        by kms:CallerAccount) gives no more than `"*"` pinned to the organization, which is trusted."""
        return (
            self.key_org_id is not None
            and self.organization_of is not None
            and self.organization_of(account) == self.key_org_id
        )

    def trusts_org(self, org_id: str) -> bool:
        return org_id == self.key_org_id or org_id in self.trusted_org_ids

    def is_admin(self, principal: str) -> bool:
        # The key account's root delegates to IAM (the default key policy): an administrator.
        if principal == self.key_account or _is_root_of(principal, self.key_account):
            return True
        return any(fnmatchcase(principal, pattern) for pattern in self.admin_principals)


@dataclass(frozen=True, slots=True)
class PolicyFinding:
    """One problem, naming the statement (Sid and index) or grant responsible."""

    code: str
    severity: Severity
    source: str
    principal: str | None
    message: str
    statement_sid: str | None = None
    statement_index: int | None = None
    grant_id: str | None = None
    extra: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        doc = {
            "code": self.code,
            "severity": self.severity.value,
            "source": self.source,
            "principal": self.principal,
            "message": self.message,
        }
        optional = {
            "statementSid": self.statement_sid,
            "statementIndex": self.statement_index,
            "grantId": self.grant_id,
        }
        return doc | {k: v for k, v in optional.items() if v is not None}


def _is_root_of(principal: str, account: str) -> bool:
    match = _ROOT_ARN.fullmatch(principal)
    return match is not None and match.group(1) == account


def analyze_policy(policy: str | Mapping[str, Any], zone: TrustZone) -> list[PolicyFinding]:
    """Findings for every Allow statement of a key policy (JSON text or parsed); ValueError when it
    is not a JSON object."""
    doc = _document(policy)
    if not isinstance(doc, Mapping):
        raise ValueError("a key policy is a JSON object")
    statements = as_list(doc.get("Statement"))
    perimeter = _deny_perimeter(s for s in statements if _takes_effect(s))
    findings: list[PolicyFinding] = []
    for index, statement in enumerate(statements):
        if _takes_effect(statement) and statement.get("Effect") == "Allow":
            findings += _StatementCheck(statement, index, zone, perimeter).run()
    return findings


def _document(policy: str | Mapping[str, Any]) -> Any:
    """A policy's JSON (the text parsed); ValueError for text that is none, nested deeper than json's
    reader recurses too: a record's policy may come from anywhere (`detect --cloudtrail`, an
    inventory), and its RecursionError ended the command in a traceback."""
    if not isinstance(policy, str):
        return policy
    try:
        return json.loads(policy)
    except RecursionError:
        raise ValueError("the policy nests too deeply") from None


def _takes_effect(statement: Any) -> bool:
    """A key policy statement without Action/NotAction or Resource/NotResource "has no effect",
    though AWS stores it (API reference, PutKeyPolicy): it allows, and denies, nothing."""
    return (
        isinstance(statement, Mapping)
        and ("Action" in statement or "NotAction" in statement)
        and ("Resource" in statement or "NotResource" in statement)
    )


def _deny_perimeter(statements: Iterable[Any]) -> Pinning:
    """What a Deny of every action to everyone, unless a condition holds, leaves of any `"*"` Allow
    (`StringNotEquals aws:PrincipalOrgID`: Access Analyzer weighs Deny statements too); not pinned
    when the policy has no such Deny."""
    for statement in statements:
        if (
            isinstance(statement, Mapping)
            and statement.get("Effect") == "Deny"
            and "NotPrincipal" not in statement
            and "NotAction" not in statement
            and _aws_principals(statement.get("Principal")) == ["*"]
            and {"*", "kms:*"} & {str(a).lower() for a in as_list(statement.get("Action"))}
            and (perimeter := read_perimeter(statement.get("Condition"))).pinned
        ):
            return perimeter
    return Pinning()


class _StatementCheck:
    """The checks of one Allow statement."""

    def __init__(
        self, statement: Mapping[str, Any], index: int, zone: TrustZone, perimeter: Pinning = Pinning()
    ) -> None:
        self.statement, self.index, self.zone = statement, index, zone
        self.sid = statement.get("Sid") or None
        self.pinning = read_pinning(statement.get("Condition"))
        if not self.pinning.pinned and perimeter.pinned:  # pinned by the policy's Deny instead
            self.pinning = replace(
                perimeter,
                grant_for_aws_resource=self.pinning.grant_for_aws_resource,
                via_service=self.pinning.via_service,
            )

    def run(self) -> list[PolicyFinding]:
        if "NotPrincipal" in self.statement:
            return [
                self._finding("public", Severity.CRITICAL, "*", "Allow with NotPrincipal grants everyone not listed")
            ]
        findings: list[PolicyFinding] = []
        for principal in _aws_principals(self.statement.get("Principal")):
            findings += self._principal(principal)
        return findings

    def _principal(self, principal: str) -> list[PolicyFinding]:
        found = self._public(principal) if principal == "*" else self._named(principal)
        if any(f.code == "public" for f in found):
            return found  # anyone may already do everything this statement allows
        if (
            self._allows("kms:creategrant")
            and self._broad(principal)
            and not (self.pinning.grant_for_aws_resource or self.pinning.via_service)
        ):
            found.append(
                self._finding(
                    "broad-create-grant",
                    Severity.HIGH,
                    principal,
                    f"kms:CreateGrant to the broad grantee {principal}",
                )
            )
        return found

    def _public(self, principal: str) -> list[PolicyFinding]:
        if not self.pinning.pinned:
            return [
                self._finding(
                    "public",
                    Severity.CRITICAL,
                    principal,
                    "principal * without a condition pinning it to an account, org or source",
                )
            ]
        found = [
            self._finding("external-account", Severity.HIGH, principal, f"principal * pinned to an untrusted {what}")
            for what in self._untrusted_pins(self.pinning)
        ]
        if self._allows_everything() and not self._pinned_to_admins():
            found.append(
                self._finding(
                    "non-admin-full-access",
                    Severity.HIGH,
                    principal,
                    "kms:* for principal * (every principal its conditions let in), not only administrators",
                )
            )
        return found

    def _pinned_to_admins(self) -> bool:
        """Whether a pinned `"*"` reaches administrators only: named by aws:PrincipalArn (or
        aws:SourceArn) each of them one, or let in only through a named AWS service (kms:ViaService,
        which calls no administrative operation)."""
        arns = self.pinning.arns
        return self.pinning.via_service or (bool(arns) and all(self.zone.is_admin(a) for a in arns))

    def _named(self, principal: str) -> list[PolicyFinding]:
        account = arn_account(principal)
        if account is None:
            return []  # unique ids (AROA…) of deleted principals are not cross-account (ScoutSuite#1665)
        if not self.zone.trusts_account(account):
            return [
                self._finding(
                    "external-account",
                    Severity.HIGH,
                    principal,
                    f"access for account {account}, outside the trusted accounts",
                )
            ]
        if self._allows_everything() and not self.zone.is_admin(principal):
            return [
                self._finding(
                    "non-admin-full-access",
                    Severity.HIGH,
                    principal,
                    f"kms:* for {principal}, who is not an administrator",
                )
            ]
        return []

    def _untrusted_pins(self, pinning: Pinning) -> list[str]:
        accounts = [f"account {a}" for a in sorted(pinning.accounts) if not self.zone.trusts_account(a)]
        orgs = [f"org {o}" for o in sorted(pinning.org_ids) if not self.zone.trusts_org(o)]
        arns = [
            f"source {a}"
            for a in sorted(pinning.arns)
            if (acct := arn_account(a)) is not None and not self.zone.trusts_account(acct)
        ]
        return accounts + orgs + arns

    def _broad(self, principal: str) -> bool:
        if principal == "*":  # unless pinned to named principals or resources (ARNs, no wildcard)
            return not self.pinning.arns
        account = arn_account(principal)
        whole_account = principal == account or principal.endswith(":root")
        return whole_account and account != self.zone.key_account

    def _allows(self, action: str) -> bool:
        if "NotAction" in self.statement:
            return not any(fnmatchcase(action, str(p).lower()) for p in as_list(self.statement["NotAction"]))
        return any(fnmatchcase(action, str(p).lower()) for p in as_list(self.statement.get("Action")))

    def _allows_everything(self) -> bool:
        patterns = [str(p).lower() for p in as_list(self.statement.get("Action"))]
        return "NotAction" in self.statement or "*" in patterns or "kms:*" in patterns

    def _finding(self, code: str, severity: Severity, principal: str, message: str) -> PolicyFinding:
        # Counted from 1 in text, as "policy 1" and AWS's "Policy statement 1" are; statementIndex stays 0-based.
        source = f'statement "{self.sid}"' if self.sid else f"statement #{self.index + 1}"
        return PolicyFinding(
            code,
            severity,
            source,
            principal,
            f"{source}: {message}",
            statement_sid=self.sid,
            statement_index=self.index,
        )


def _aws_principals(principal: Any) -> list[str]:
    """The AWS principals of a Principal element; service and federated principals are skipped."""
    if principal == "*":
        return ["*"]
    if isinstance(principal, Mapping):
        return [str(p) for p in as_list(principal.get("AWS"))]
    return []


def analyze_grant(grant: Mapping[str, Any], zone: TrustZone) -> list[PolicyFinding]:
    """Findings for one grant, shaped like a ListGrants entry or CreateGrant requestParameters."""
    grantee = str(_field(grant, "GranteePrincipal") or "")
    grant_id = _field(grant, "GrantId") or _field(grant, "Name")
    source = f"grant {grant_id}" if grant_id else "grant"
    if not grantee or grantee.endswith(".amazonaws.com"):
        return []  # service grants (EBS, RDS…): revoking them breaks the resource (cnspec#3698)
    account = arn_account(grantee)
    if account is not None and not zone.trusts_account(account):
        code, severity, what = "grant-external-principal", Severity.HIGH, f"untrusted account {account}"
    elif grantee == "*" or grantee.endswith(":root") or grantee == account:
        code, severity, what = "grant-broad-grantee", Severity.MEDIUM, "a whole account"
    else:
        return []
    message = f"{source}: granted to {grantee} in {what}"
    return [PolicyFinding(code, severity, source, grantee, message, grant_id=grant_id)]


def _field(grant: Mapping[str, Any], name: str) -> Any:
    # ListGrants uses PascalCase, CloudTrail requestParameters camelCase.
    return grant.get(name, grant.get(name[0].lower() + name[1:]))


def analyze_identity_policy(
    policy: str | Mapping[str, Any], principal: str, zone: TrustZone, *, denied: Collection[str] = ()
) -> list[PolicyFinding]:
    """Security Hub KMS.1/KMS.2: an IAM policy allowing decryption on every key to a non-admin.
    `denied`: decrypt actions the principal's policies deny everywhere (`denied_everywhere`)."""
    if zone.is_admin(principal):
        return []
    doc = _document(policy)
    findings = []
    for index, statement in enumerate(as_list(doc.get("Statement"))):
        check = _StatementCheck(statement, index, zone)
        if (
            statement.get("Effect") == "Allow"
            and _on_every_key(statement)
            and any(check._allows(action) for action in _DECRYPT_ACTIONS if action not in denied)
        ):
            findings.append(
                check._finding(
                    "decrypt-all-keys", Severity.MEDIUM, principal, f"{principal} may decrypt with every key"
                )
            )
    return findings


def denied_everywhere(policies: Iterable[str | Mapping[str, Any]]) -> frozenset[str]:
    """The decrypt actions a principal's identity policies deny on every resource, unconditionally
    (an explicit deny wins over any allow); a narrower or conditional Deny takes nothing away here."""
    denied: set[str] = set()
    for policy in policies:
        doc = _document(policy)
        for statement in as_list(doc.get("Statement")):
            if (
                statement.get("Effect") == "Deny"
                and "Condition" not in statement
                and "*" in as_list(statement.get("Resource"))
            ):
                check = _StatementCheck(statement, 0, TrustZone(""))
                denied.update(action for action in _DECRYPT_ACTIONS if check._allows(action))
    return frozenset(denied)


def _on_every_key(statement: Mapping[str, Any]) -> bool:
    """Whether a statement's resources take in every key: a Resource pattern covering any key id,
    or a NotResource (every key but those it names) that does not exclude them all."""
    if "NotResource" in statement:
        return not any(_covers_every_key(str(r)) for r in as_list(statement["NotResource"]))
    return any(_covers_every_key(str(r)) for r in as_list(statement.get("Resource")))


def _covers_every_key(pattern: str) -> bool:
    """Whether a resource pattern matches whatever the key id (IAM's `*` also spans `:` and `/`):
    `*`, `arn:aws:kms:*`, `arn:aws:kms:*:<account>:*`, `…:key/*`; not one key's ARN, nor `alias/*`.
    Region and account stay the pattern's own: they say whose keys, not whether all of them."""
    parts = pattern.split(":", 5)
    parts += ["arn", "aws", "kms", "r", "a"][len(parts) :]  # the fields a short pattern (`*`) leaves out
    prefix = f"arn:{parts[1]}:kms:{parts[3]}:{parts[4]}:key/"
    return all(fnmatchcase(prefix + key_id, pattern) for key_id in ("", "0", "mrk-x"))
