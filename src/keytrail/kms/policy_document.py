"""Policy documents: validation with AWS's errors, and the compiled statements the evaluator walks.

Follows "IAM JSON policy element reference" and "Key policies in AWS KMS". A document is
validated once (`parse_policy`) and compiled once (`compile_policy`, cached by the evaluator);
evaluation then only walks small frozen objects.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from keytrail.kms.condition_cost import ComparedValues, compared_values
from keytrail.kms.conditions import Condition, Pattern, parse_condition_operator, unreadable_value
from keytrail.kms.errors import KmsError, MalformedPolicyDocumentException
from keytrail.kms.partitions import ARN_PARTITION

__all__ = [
    "INVALID_PRINCIPALS",
    "MAX_POLICY_BYTES",
    "Policy",
    "PolicyKind",
    "PrincipalSet",
    "Statement",
    "check_characters",
    "check_condition_values",
    "check_key_policy_elements",
    "check_principals",
    "check_set_operators",
    "compile_policy",
    "is_aws_principal",
    "parse_policy",
    "unnameable_principal",
    "validate_policy",
]

MAX_POLICY_BYTES = 32 * 1024
PolicyKind = Literal["key", "identity"]

_VERSIONS = {"2012-10-17", "2008-10-17"}
_TOP = {"Version", "Id", "Statement"}
_STATEMENT = {"Sid", "Effect", "Principal", "NotPrincipal", "Action", "NotAction",
              "Resource", "NotResource", "Condition"}
_PRINCIPAL_TYPES = {"AWS", "Service", "Federated", "CanonicalUser"}
# Used with fullmatch (`$` also matches before a final newline), ASCII (\d takes any script's digits).
_ACCOUNT = re.compile(r"\d{12}", re.ASCII)
_IAM_ARN = re.compile(
    rf"arn:{ARN_PARTITION}:(iam::\d{{12}}:(root|user/.+|role/.+|federated-user/.+)"
    rf"|sts::\d{{12}}:(assumed-role/.+/.+|federated-user/.+))",
    re.ASCII,
)
_ACTION = re.compile(r"\*|[A-Za-z0-9-]+:[A-Za-z0-9*?]+")


def is_aws_principal(name: str) -> bool:
    """An AWS principal as a key policy names one: an account id, or the ARN of an account root,
    IAM user or role, federated user or assumed-role session (never a group, nor a wildcard)."""
    return bool(_ACCOUNT.fullmatch(name) or _IAM_ARN.fullmatch(name))


def _malformed(message: str) -> KmsError:
    return MalformedPolicyDocumentException(message)


# AWS's words for a Principal it cannot use, as CreateKey and PutKeyPolicy callers quote them
# (Terraform, CDK and CloudFormation error reports); keytrail's message starts with them and then
# names the statement and the principal.
INVALID_PRINCIPALS = "Policy contains a statement with one or more invalid principals."
# And for a statement with neither Principal nor NotPrincipal (quoted in terraform-aws-eks PR #2163).
_NO_PRINCIPAL = "Policy contains a statement with no principal."


def _invalid_principal(where: str, detail: str) -> KmsError:
    return _malformed(f"{INVALID_PRINCIPALS} {where[:1].upper()}{where[1:]} {detail}.")


def parse_policy(text: str, kind: PolicyKind = "key") -> dict[str, Any]:
    """Parse and validate a policy document, or raise MalformedPolicyDocumentException naming
    what is wrong. `kind="key"` needs a Principal in every statement; identity policies have none."""
    if len(text.encode()) > MAX_POLICY_BYTES:
        raise _malformed("The policy document exceeds the 32 KB size limit.")
    try:
        doc = json.loads(text, parse_constant=_no_constant, parse_int=_finite_int, parse_float=_finite_float)
    except ValueError as exc:
        raise _malformed(f"The policy is not valid JSON: {exc}") from None
    except RecursionError:  # 32 KB of `[` nest deeper than json's reader recurses
        raise _malformed("The policy is not valid JSON: it nests too deeply.") from None
    validate_policy(doc, kind)
    return doc  # type: ignore[no-any-return]


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity, which Python's json reader takes, are no JSON (RFC 8259)."""
    raise ValueError(f"{name} is not a JSON value.")


def _finite_int(text: str) -> int:
    """An integer of the document, refused past a double's range: conditions compare numbers as
    doubles, and a 401-digit one made every call on the key a 500 (float() overflows), PutKeyPolicy
    and ScheduleKeyDeletion too, so the key could be neither mended nor deleted."""
    _require_finite(text)
    return int(text)


def _finite_float(text: str) -> float:
    """A number with a fraction or exponent, refused where it rounds to infinity (1e999)."""
    return _require_finite(text)


def _require_finite(text: str) -> float:
    value = float(text)  # a string past the range gives inf rather than raising
    if math.isinf(value):
        shown = text if len(text) <= 24 else f"{text[:20]}… ({len(text)} characters)"
        raise ValueError(f"the number {shown} is beyond the range of a policy number.")
    return value


def validate_policy(doc: Any, kind: PolicyKind) -> None:
    """Check a decoded document against the policy grammar; raise naming the faulty element."""
    if not isinstance(doc, dict):
        raise _malformed("The policy document must be a JSON object.")
    unknown = set(doc) - _TOP
    if unknown:
        raise _malformed(f"The policy document has unsupported element(s): {', '.join(sorted(unknown))}.")
    if "Version" in doc and not (isinstance(doc["Version"], str) and doc["Version"] in _VERSIONS):
        raise _malformed(f"The policy Version {doc['Version']!r} is not supported; use \"2012-10-17\".")
    if "Statement" not in doc:
        raise _malformed("The policy document has no Statement.")
    statements = doc["Statement"]
    if isinstance(statements, dict):
        statements = [statements]
    if not isinstance(statements, list) or not statements:
        raise _malformed("The policy Statement must be an object or a non-empty list of objects.")
    for index, statement in enumerate(statements):
        _validate_statement(statement, index, kind)


def _where(statement: Mapping[str, Any], index: int) -> str:
    sid = statement.get("Sid")
    return f"statement {index + 1}" + (f" (Sid {sid!r})" if isinstance(sid, str) and sid else "")


def _validate_statement(statement: Any, index: int, kind: PolicyKind) -> None:
    if not isinstance(statement, dict):
        raise _malformed(f"Policy statement {index + 1} must be a JSON object.")
    where = _where(statement, index)
    unknown = set(statement) - _STATEMENT
    if unknown:
        raise _malformed(f"Policy {where} has unsupported element(s): {', '.join(sorted(unknown))}.")
    if "Sid" in statement and not isinstance(statement["Sid"], str):
        raise _malformed(f"Policy {where}: Sid must be a string.")
    if statement.get("Effect") not in ("Allow", "Deny"):
        raise _malformed(f"Policy {where}: Effect must be \"Allow\" or \"Deny\".")
    # A key policy statement without Action or Resource "has no effect" (API reference). AWS KMS
    # refuses one since 18 August 2025 when a policy is set (`check_key_policy_elements`); one stored
    # before still loads. IAM refuses such an identity policy.
    optional = kind == "key"
    _exactly_one(statement, where, "Action", "NotAction", optional=optional)
    _exactly_one(statement, where, "Resource", "NotResource", optional=optional)
    for name in ("Action", "NotAction"):
        if name in statement:
            _validate_actions(statement[name], where, name)
    for name in ("Resource", "NotResource"):
        if name in statement:
            resources = _strings(statement[name], where, name)
            if kind == "identity":
                _require_arns(resources, where, name)
    _validate_principal(statement, where, kind)
    if "Condition" in statement:
        _validate_condition(statement["Condition"], where)


def _exactly_one(
    statement: Mapping[str, Any], where: str, first: str, second: str, *, optional: bool = False,
) -> None:
    present = (first in statement) + (second in statement)
    if present > 1 or (present == 0 and not optional):
        raise _malformed(f"Policy {where} must contain exactly one of {first} or {second}.")


def _strings(value: Any, where: str, name: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v for v in items):
        raise _malformed(f"Policy {where}: {name} must be a non-empty string or list of strings.")
    return items


def _validate_actions(value: Any, where: str, name: str) -> None:
    for action in _strings(value, where, name):
        if not _ACTION.fullmatch(action):
            raise _malformed(f"Policy {where}: {name} {action!r} is not a valid action (service:Action).")


def _require_arns(resources: list[str], where: str, name: str) -> None:
    """IAM refuses an identity policy whose Resource is neither "*" nor an ARN (`Resource alias/prod
    must be in ARN format or "*"`): a key id or alias name there is matched against key ARNs and
    never matches, so a Deny written with one would protect nothing. (A key policy's Resource is
    "*" alone, checked when it is set: `check_key_policy_elements`.)"""
    for resource in resources:
        if resource != "*" and not resource.startswith("arn:"):
            raise _malformed(f'Policy {where}: {name} {resource} must be in ARN format or "*".')


def _validate_principal(statement: Mapping[str, Any], where: str, kind: PolicyKind) -> None:
    present = [name for name in ("Principal", "NotPrincipal") if name in statement]
    if kind == "identity":
        if present:
            raise _malformed(f"Policy {where}: identity-based policies cannot contain {present[0]}.")
        return
    if len(present) != 1:
        lead = "" if present else f"{_NO_PRINCIPAL} "
        raise _malformed(f"{lead}Policy {where} must contain exactly one of Principal or NotPrincipal.")
    value = statement[present[0]]
    if value == "*":
        return
    if not isinstance(value, dict) or not value or set(value) - _PRINCIPAL_TYPES:
        raise _invalid_principal(where, f'has a {present[0]} that is not "*" nor an object of AWS, Service, '
                                        f"Federated or CanonicalUser principals")
    for kind_name, names in value.items():
        for name in _strings(names, where, f"{present[0]}.{kind_name}"):
            if kind_name == "AWS" and not (name == "*" or is_aws_principal(name)):
                raise _invalid_principal(where, f"names {name!r}")


def check_principals(doc: Mapping[str, Any]) -> None:
    """Refuse a principal ARN that can name no principal: with `*` or `?` inside ("You cannot use
    a wildcard to match part of a principal name or ARN"), or with a name IAM would never give a
    user, role or session (`user/bob smith`, `user/${aws:username}`). AWS refuses such a principal
    as it does any that does not exist; stored, it would match no caller, so a Deny naming it would
    silently protect nothing. And refuse NotPrincipal in an Allow: IAM supports it only with Deny
    (an Allow to everyone not named is how a key goes public by accident). Checked when a policy
    is set, not when a stored one is read (the evaluator lets such a stored statement grant nothing)."""
    for index, statement in enumerate(_list(doc["Statement"])):
        if "NotPrincipal" in statement and statement.get("Effect") == "Allow":
            raise _malformed(f"Policy {_where(statement, index)}: NotPrincipal can only be used with "
                             f'"Effect": "Deny".')
        value = statement.get("Principal", statement.get("NotPrincipal"))
        if not isinstance(value, dict):
            continue
        for name in _list(value.get("AWS", [])):
            problem = None if name == "*" else unnameable_principal(name)
            if problem is not None:
                raise _invalid_principal(_where(statement, index), f"names {name!r} ({problem})")


# IAM's names: a user's or role's (CreateUser, CreateRole), a role session's (AssumeRole's
# RoleSessionName), a federated user's (GetFederationToken's Name): letters, digits and +=,.@_-,
# at most 64 characters. A path between (`user/staff/bob`) is printable ASCII without blanks.
_IAM_NAME = re.compile(r"[\w+=,.@-]{1,64}", re.ASCII)
_IAM_PATH = re.compile(r"[!-~]*")
_NAME_RULE = "an IAM name has only letters, digits and +=,.@_-, at most 64 of them"


def unnameable_principal(name: str) -> str | None:
    """Why the AWS principal `name` (an account id or an ARN `is_aws_principal` takes) can name no
    principal, or None."""
    if "*" in name or "?" in name:
        return "a wildcard cannot match part of a principal ARN"
    if "${" in name:
        return "a policy variable is no principal: variables work in Resource and Condition only"
    if _ACCOUNT.fullmatch(name):
        return None
    kind, _, rest = name.split(":", 5)[-1].partition("/")
    if kind == "assumed-role":
        names = rest.split("/")
        if len(names) != 2:
            return "a role session is assumed-role/<role name>/<session name>, without the role's path"
    else:  # root has no rest; user/, role/, federated-user/ end in a name, maybe after a path
        path, _, last = rest.rpartition("/")
        if not _IAM_PATH.fullmatch(path):
            return "an IAM path is printable ASCII without blanks"
        names = [last] if rest else []
    return None if all(_IAM_NAME.fullmatch(part) for part in names) else _NAME_RULE


# The only Resource a key policy accepts: the key it is attached to (AWS Health notice of May 2025,
# quoted in ministryofjustice/analytical-platform#7691).
_KEY_POLICY_RESOURCE = "*"
# Condition keys AWS refuses in a key policy ("These condition keys are not permitted in a key policy:
# …", a PutKeyPolicy failure quoted in awsdocs/aws-kms-developer-guide PR #47; "AWS KMS condition
# keys" lists it for "IAM policies only"), lowercase name to AWS's spelling.
_IAM_ONLY_CONDITION_KEYS = {"kms:resourcealiases": "kms:ResourceAliases"}


def check_key_policy_elements(doc: Mapping[str, Any]) -> None:
    """Refuse, as AWS KMS does since 18 August 2025 for CreateKey, ReplicateKey and PutKeyPolicy, a
    statement without Action or NotAction, or whose Resource is other than "*"; and a condition on
    an IAM-only key. Such a statement applies to no request (a key ARN pattern: at most to the key
    it matches; `…:alias/*`: to none), so a Deny written with it may protect nothing. Checked when a
    policy is set; a stored one still loads and is evaluated as written."""
    for index, statement in enumerate(_list(doc["Statement"])):
        where = _where(statement, index)
        _exactly_one(statement, where, "Action", "NotAction")
        if "NotResource" in statement or not _is_key_policy_resource(statement.get("Resource")):
            raise _malformed(f"Policy {where}: the only Resource a key policy accepts is "
                             f'"{_KEY_POLICY_RESOURCE}" (the KMS key the policy is attached to).')
        refused = sorted({_IAM_ONLY_CONDITION_KEYS[key.lower()]
                          for entries in statement.get("Condition", {}).values()
                          for key in entries if key.lower() in _IAM_ONLY_CONDITION_KEYS})
        if refused:
            raise _malformed(f"These condition keys are not permitted in a key policy: {', '.join(refused)}")


def _is_key_policy_resource(value: Any) -> bool:
    """`"*"`, or a list of only `"*"`; None (no Resource) is not."""
    return value == _KEY_POLICY_RESOURCE or (
        isinstance(value, list) and bool(value) and all(item == _KEY_POLICY_RESOURCE for item in value))


# "Key policy format": "printable ASCII characters, printable characters in the Basic Latin and
# Latin-1 Supplement character set, the tab, line feed, and carriage return". Anything else (a
# Cyrillic U+0456 for the i of "Restricted", a right-to-left override, a zero-width space) lets
# a policy read otherwise than it is evaluated: a Deny whose value never matches what one reads.
_NOT_ALLOWED = re.compile(r"[^\t\n\r\x20-\x7e\xa1-\xac\xae-\xff]")


def check_characters(text: str, doc: Any) -> None:
    """Refuse a key policy with a character AWS does not allow in one, written as itself or as a
    JSON escape (checked when a policy is set; a stored one still loads)."""
    for value in (text, *_strings_in(doc)):
        found = _NOT_ALLOWED.search(value)
        if found is not None:
            raise _malformed(f"The policy document contains a character key policies do not allow: "
                             f"U+{ord(found.group()):04X}.")


def _strings_in(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings_in(k), *_strings_in(v))]
    if isinstance(value, list):
        return [s for item in value for s in _strings_in(item)]
    return []


# "AWS KMS condition keys": a policy with ForAllValues on these single-valued keys is refused, as
# the condition "matches requests without the specified [encryption context or tag] or with an
# unspecified [encryption context or tag]" (an Allow with it allows a request with none).
_OVERLY_PERMISSIVE = {
    "kms:encryptioncontext:": (
        "OverlyPermissiveCondition:EncryptionContext: Using the ForAllValues set operator with a single-valued "
        "condition key matches requests without the specified encryption context or with an unspecified "
        "encryption context. To fix, remove ForAllValues."),
    "aws:requesttag/": (
        "OverlyPermissiveCondition: Using the ForAllValues set operator with a single-valued condition key "
        "matches requests without the specified tag or with an unspecified tag. To fix, remove ForAllValues."),
}


def check_set_operators(doc: Mapping[str, Any]) -> None:
    """Refuse ForAllValues with kms:EncryptionContext:<key> or aws:RequestTag/<key>, as AWS KMS
    does when a key policy is set (a stored one still loads and is evaluated as written)."""
    for statement in _list(doc["Statement"]):
        for operator, entries in statement.get("Condition", {}).items():
            if not operator.lower().startswith("forallvalues:"):
                continue
            for key in entries:
                refusal = next((m for prefix, m in _OVERLY_PERMISSIVE.items() if key.lower().startswith(prefix)), None)
                if refusal is not None:
                    raise _malformed(refusal)


def check_condition_values(doc: Mapping[str, Any]) -> None:
    """Refuse a condition value its operator cannot read: a date, number, IP range, true/false or
    base-64 text that is none ("IAM JSON policy elements: Condition operators"). It matched nothing,
    so a Deny written with it silently never applied (a negated one always did). Checked when a key
    policy is set and when the principals file is loaded; a key policy stored before still loads
    and is evaluated as written (failing it closed could deny the PutKeyPolicy that mends it)."""
    for index, statement in enumerate(_list(doc["Statement"])):
        for operator, entries in statement.get("Condition", {}).items():
            name = parse_condition_operator(operator)[1]
            for key, values in entries.items():
                for value in _list(values):
                    if (wanted := unreadable_value(name, value)) is not None:
                        raise _malformed(f"Policy {_where(statement, index)}: Condition {operator} {key} has a value "
                                         f"that is not {wanted}: {_shown(value)}.")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 64 else f"{text[:60]}… ({len(text)} characters)"


def _validate_condition(block: Any, where: str) -> None:
    if not isinstance(block, dict):
        raise _malformed(f"Policy {where}: Condition must be an object of operators.")
    for operator, entries in block.items():
        try:
            parse_condition_operator(operator)
        except ValueError as exc:
            raise _malformed(f"Policy {where}: Condition has {exc}.") from None
        if not isinstance(entries, dict) or not entries:
            raise _malformed(f"Policy {where}: Condition operator {operator} must map keys to values.")
        for key, values in entries.items():
            items = values if isinstance(values, list) else [values]
            if not items or not all(isinstance(v, str | int | float | bool) for v in items):
                raise _malformed(f"Policy {where}: Condition {operator} {key} has an invalid value.")


# --- compiled form -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PrincipalSet:
    """The principals a statement names. `arns` holds IAM ARNs and bare account ids (the account's
    root in the caller's partition). Service principals are not kept: no AWS service calls keytrail,
    so a statement naming only services matches no caller."""

    anyone: bool = False
    arns: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Statement:
    sid: str | None
    allow: bool
    actions: tuple[Pattern, ...]
    not_action: bool
    resources: tuple[Pattern, ...]
    not_resource: bool
    conditions: tuple[Condition, ...]
    principals: PrincipalSet | None = None  # None in identity policies
    not_principal: bool = False

    def applies_to(self, action: str, resource: str, resolve: Any) -> bool:
        """Action, Resource and Condition match (Principal is the evaluator's business)."""
        hit = any(p.matches(action, resolve) for p in self.actions)
        if hit == self.not_action:
            return False
        hit = any(p.matches(resource, resolve) for p in self.resources)
        if hit == self.not_resource:
            return False
        return all(c.holds(resolve) for c in self.conditions)


@dataclass(frozen=True, slots=True)
class Policy:
    statements: tuple[Statement, ...]
    reads: frozenset[str]  # lowercase condition keys any statement reads
    compared: tuple[ComparedValues, ...] = ()  # its conditions' values by key, weighed before evaluating


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _principals(value: Any) -> PrincipalSet:
    if value == "*":
        return PrincipalSet(anyone=True)
    aws = [str(v) for v in _list(value.get("AWS", []))]
    # A bare account id stays bare: it names the account's root in the partition of the key's Region.
    arns = frozenset(a for a in aws if a != "*")
    return PrincipalSet(anyone="*" in aws, arns=arns)


def _literal(value: Any) -> Any:
    """A condition value of a policy without variables: `${` stands for itself (`${$}` is the
    pattern syntax for a literal `$`)."""
    return value.replace("${", "${$}{") if isinstance(value, str) else value


def _conditions(block: Mapping[str, Any], variables: bool) -> tuple[Condition, ...]:
    out = []
    for operator, entries in block.items():
        qualifier, name, if_exists = parse_condition_operator(operator)
        for key, values in entries.items():
            items = tuple(v if variables else _literal(v) for v in _list(values))
            out.append(Condition(name, key.lower(), items, qualifier, if_exists))
    return tuple(out)


def _statement(raw: Mapping[str, Any], variables: bool) -> Statement:
    # A key policy stored before AWS refused it may lack both: it is then an Action (Resource) matching nothing.
    action_key = "NotAction" if "NotAction" in raw else "Action"
    resource_key = "NotResource" if "NotResource" in raw else "Resource"
    principal_key = "Principal" if "Principal" in raw else "NotPrincipal"
    principal = raw.get(principal_key)
    return Statement(
        sid=raw.get("Sid"),
        allow=raw["Effect"] == "Allow",
        # Action names are case-insensitive; resource ARNs are not and may hold policy variables.
        actions=tuple(Pattern.parse(a, wildcards=True, variables=False, ignore_case=True)
                      for a in _list(raw.get(action_key, []))),
        not_action=action_key == "NotAction",
        resources=tuple(Pattern.parse(r, wildcards=True, variables=variables)
                        for r in _list(raw.get(resource_key, []))),
        not_resource=resource_key == "NotResource",
        conditions=_conditions(raw.get("Condition", {}), variables),
        principals=_principals(principal) if principal is not None else None,
        not_principal=principal_key == "NotPrincipal",
    )


def compile_policy(doc: str | Mapping[str, Any], kind: PolicyKind = "key") -> Policy:
    """Validate (when given text) and compile a policy document for evaluation."""
    parsed = parse_policy(doc, kind) if isinstance(doc, str) else doc
    if not isinstance(doc, str):
        validate_policy(parsed, kind)
    raw = parsed["Statement"]
    # "If you don't include the Version element and set it to [2012-10-17], variables like
    # ${aws:username} are treated as literal strings in the policy" (IAM policy variables).
    variables = parsed.get("Version") == "2012-10-17"
    statements = tuple(_statement(s, variables) for s in _list(raw))
    reads: set[str] = set()
    for statement in statements:
        for pattern in statement.resources:
            reads.update(pattern.variables)
        for condition in statement.conditions:
            reads.update(condition.reads)
    compared = compared_values(c for statement in statements for c in statement.conditions)
    return Policy(statements, frozenset(reads), compared)
