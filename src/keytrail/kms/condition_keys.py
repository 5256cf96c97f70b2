"""Condition keys: those a request's parameters carry, and those derived from caller, key and time.

Follows "AWS KMS condition keys" and "AWS global condition context keys". `request_conditions`
turns an operation's parameters into the keys AWS puts in the request context; `RequestContext`
answers every key (lowercase) for the evaluator, deriving principal, key and time keys itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from keytrail.clock import as_utc
from keytrail.kms.context import CallContext, IdentityType
from keytrail.kms.errors import InvalidGrantTokenException
from keytrail.kms.grants import parse_grant_token
from keytrail.kms.keys import DEFAULT_ROTATION_PERIOD_DAYS, Key
from keytrail.kms.model import KeyLastUsage

__all__ = [
    "ENCRYPTION_CONTEXT", "GRANT_CONSTRAINTS", "LAST_USAGE_ACTIONS", "RESOURCE_ALIASES", "TRAILING_DAYS",
    "RequestContext", "request_conditions", "trailing_days_without_use",
]

# Private keys (never AWS condition keys) carrying whole values that grants need verbatim.
ENCRYPTION_CONTEXT = "keytrail:EncryptionContext"
GRANT_CONSTRAINTS = "keytrail:GrantConstraints"
# Lowercase, as policies' `reads` name keys; the caller of `authorize` supplies its value.
RESOURCE_ALIASES = "kms:resourcealiases"
# kms:TrailingDaysWithoutKeyUsage, the "key last usage condition" of DisableKey and
# ScheduleKeyDeletion (AWS KMS permissions reference): `authorize` supplies it when a policy reads it.
TRAILING_DAYS = "kms:trailingdayswithoutkeyusage"
LAST_USAGE_ACTIONS = frozenset(f"kms:{name}" for name in ("DisableKey", "ScheduleKeyDeletion"))
_DAY_SECONDS = 86400

# kms:EncryptionAlgorithm: for the data-key operations, the algorithm that encrypts the data key
# (or the private key of a data key pair) under the symmetric KMS key.
_ALGORITHM_DEFAULTED = {"Encrypt", "Decrypt", "ReEncryptFrom", "ReEncryptTo", "GenerateDataKey",
                        "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
                        "GenerateDataKeyPairWithoutPlaintext"}
_CONTEXT_PARAMETER = {"ReEncryptFrom": "SourceEncryptionContext",
                      "ReEncryptTo": "DestinationEncryptionContext"}
_ALGORITHM_PARAMETER = {"ReEncryptFrom": "SourceEncryptionAlgorithm",
                        "ReEncryptTo": "DestinationEncryptionAlgorithm"}
_KEY_PARAMETER = {"ReEncryptFrom": "SourceKeyId", "ReEncryptTo": "DestinationKeyId"}
_SIMPLE = {  # operation → {parameter: condition key}
    "GenerateDataKeyPair": {"KeyPairSpec": "kms:DataKeyPairSpec"},
    "GenerateDataKeyPairWithoutPlaintext": {"KeyPairSpec": "kms:DataKeyPairSpec"},
    "Sign": {"SigningAlgorithm": "kms:SigningAlgorithm", "MessageType": "kms:MessageType"},
    "Verify": {"SigningAlgorithm": "kms:SigningAlgorithm", "MessageType": "kms:MessageType"},
    "GenerateMac": {"MacAlgorithm": "kms:MacAlgorithm"},
    "VerifyMac": {"MacAlgorithm": "kms:MacAlgorithm"},
    "ReplicateKey": {"ReplicaRegion": "kms:ReplicaRegion"},
    "CreateGrant": {"GranteePrincipal": "kms:GranteePrincipal", "RetiringPrincipal": "kms:RetiringPrincipal"},
    "DeriveSharedSecret": {"KeyAgreementAlgorithm": "kms:KeyAgreementAlgorithm"},
}


def request_conditions(operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The condition keys AWS puts in the request context for `operation` (`Encrypt` or
    `kms:Encrypt`; `ReEncryptFrom`/`ReEncryptTo` for the two halves of ReEncrypt).

    Also rejects GrantTokens that are not grant tokens (InvalidGrantTokenException), as AWS does
    before access.
    """
    name = operation.removeprefix("kms:")
    _check_grant_tokens(params.get("GrantTokens"))
    out: dict[str, Any] = {}
    _encryption_context(name, params, out)
    for parameter, key in _SIMPLE.get(name, {}).items():
        if params.get(parameter) is not None:
            out[key] = params[parameter]
    alias = _alias(params.get(_KEY_PARAMETER.get(name, "KeyId")))
    if alias:
        out["kms:RequestAlias"] = alias
    # The keys of a few operations only, looked up by name: every call asks (Encrypt among them).
    for add in _OPERATION_KEYS.get(name, ()):
        add(params, out)
    return out


def _grant_for_aws_resource(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["kms:GrantIsForAWSResource"] = False  # only AWS services acting for a user set it


def _reencrypt_on_same_key(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    # A first guess from the text; the ReEncrypt handler passes the answer from the keys.
    out["kms:ReEncryptOnSameKey"] = params.get("SourceKeyId") == params.get("DestinationKeyId")


def _bypass_lockout_check(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    # Absent when the request leaves it out: AWS's own example allows PutKeyPolicy "only when
    # the request does not include the BypassPolicyLockoutSafetyCheck parameter" with Null.
    if params.get("BypassPolicyLockoutSafetyCheck") is not None:
        out["kms:BypassPolicyLockoutSafetyCheck"] = bool(params["BypassPolicyLockoutSafetyCheck"])


def _policy_name(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    # "If the request doesn't include PolicyName, the value of kms:PolicyName is default" (API
    # reference, GetKeyPolicy and PutKeyPolicy): a condition on it must see the default too.
    out["kms:PolicyName"] = params.get("PolicyName") or "default"


# "This type of condition works even when the parameter doesn't appear in the request, such as
# when you use the parameter's default value" (AWS KMS condition keys).
def _pending_window(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["kms:ScheduleKeyDeletionPendingWindowInDays"] = params.get("PendingWindowInDays", 30)


def _rotation_period(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["kms:RotationPeriodInDays"] = params.get("RotationPeriodInDays") or DEFAULT_ROTATION_PERIOD_DAYS


def _check_grant_tokens(tokens: Any) -> None:
    """InvalidGrantTokenException for a token CreateGrant could not have returned: "the specified
    grant token is not valid" (the exception in the API reference of every operation that takes
    GrantTokens). The wire layer answers a list or token outside the model's bounds (10 tokens,
    1..8192 characters) with ValidationException first; they are checked here too for callers
    that reach the service without it."""
    if tokens is None:
        return
    if not isinstance(tokens, list) or len(tokens) > 10 or not all(
            isinstance(t, str) and 1 <= len(t) <= 8192 and parse_grant_token(t) is not None for t in tokens):
        raise InvalidGrantTokenException("The grant token is invalid.")


def _encryption_context(name: str, params: Mapping[str, Any], out: dict[str, Any]) -> None:
    context = params.get(_CONTEXT_PARAMETER.get(name, "EncryptionContext"))
    if isinstance(context, dict):
        out[ENCRYPTION_CONTEXT] = dict(context)
        out["kms:EncryptionContextKeys"] = list(context)
        for key, value in context.items():
            out[f"kms:EncryptionContext:{key}"] = value
    algorithm = params.get(_ALGORITHM_PARAMETER.get(name, "EncryptionAlgorithm"))
    if algorithm is not None or name in _ALGORITHM_DEFAULTED:
        out["kms:EncryptionAlgorithm"] = algorithm or "SYMMETRIC_DEFAULT"


def _alias(key_id: Any) -> str | None:
    if not isinstance(key_id, str):
        return None
    if key_id.startswith("alias/"):
        return key_id
    if key_id.startswith("arn:") and ":alias/" in key_id:
        return "alias/" + key_id.split(":alias/", 1)[1]
    return None


def _create_grant(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["kms:GrantOperations"] = list(params.get("Operations") or [])
    constraints = params.get("Constraints") or {}
    out[GRANT_CONSTRAINTS] = constraints
    # A constraint of no pairs is none ("An empty map is treated as not specified", Access Analyzer's
    # KmsGrantConstraints): an EncryptionContextSubset of {} allows every context, and a policy that
    # lets grants be made only with kms:GrantConstraintType EncryptionContextSubset let it through.
    kinds = [k for k in ("EncryptionContextEquals", "EncryptionContextSubset") if constraints.get(k)]
    if kinds:
        out["kms:GrantConstraintType"] = kinds[0] if len(kinds) == 1 else kinds
    # kms:EncryptionContext:<key> and kms:EncryptionContextKeys apply to CreateGrant too (AWS KMS
    # condition keys), whose only encryption context is its constraint's: a Deny on a pair must
    # refuse a grant that would let its grantee use that pair. (Both constraints together are
    # refused after authorization; their pairs are merged here.)
    pairs: dict[str, Any] = {}
    for kind in kinds:
        if isinstance(constraints[kind], dict):
            pairs.update(constraints[kind])
    if pairs:
        out["kms:EncryptionContextKeys"] = list(pairs)
        for key, value in pairs.items():
            out[f"kms:EncryptionContext:{key}"] = value


def _create_key(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    out["kms:KeySpec"] = params.get("KeySpec") or params.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT"
    out["kms:KeyUsage"] = params.get("KeyUsage") or "ENCRYPT_DECRYPT"
    # The deprecated names still apply to CreateKey, so policies written with them keep working.
    out["kms:CustomerMasterKeySpec"] = out["kms:KeySpec"]
    out["kms:CustomerMasterKeyUsage"] = out["kms:KeyUsage"]
    out["kms:KeyOrigin"] = params.get("Origin") or "AWS_KMS"
    out["kms:MultiRegion"] = bool(params.get("MultiRegion"))
    if out["kms:MultiRegion"]:  # listed for CreateKey too: a new multi-Region key is a primary
        out["kms:MultiRegionKeyType"] = "PRIMARY"


def _request_tags(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    if params.get("Tags"):
        tags = params["Tags"]
        for tag in tags:
            out[f"aws:RequestTag/{tag.get('TagKey')}"] = tag.get("TagValue")
        out["aws:TagKeys"] = [tag.get("TagKey") for tag in tags]


def _untagged_keys(params: Mapping[str, Any], out: dict[str, Any]) -> None:
    if params.get("TagKeys"):
        out["aws:TagKeys"] = list(params["TagKeys"])


_AddKeys = Callable[[Mapping[str, Any], dict[str, Any]], None]
# Operation → what adds its own condition keys, in this order.
_OPERATION_KEYS: dict[str, tuple[_AddKeys, ...]] = {
    "CreateGrant": (_grant_for_aws_resource, _create_grant),
    "ListGrants": (_grant_for_aws_resource,),
    "RevokeGrant": (_grant_for_aws_resource,),
    "ReEncryptFrom": (_reencrypt_on_same_key,),
    "ReEncryptTo": (_reencrypt_on_same_key,),
    "CreateKey": (_bypass_lockout_check, _create_key, _request_tags),
    "PutKeyPolicy": (_bypass_lockout_check, _policy_name),
    "GetKeyPolicy": (_policy_name,),
    "ScheduleKeyDeletion": (_pending_window,),
    "EnableKeyRotation": (_rotation_period,),
    "TagResource": (_request_tags,),
    "UntagResource": (_untagged_keys,),
}


def trailing_days_without_use(key: Key, now: datetime, tracking_start: datetime | None,
                              last: KeyLastUsage | None) -> int:
    """kms:TrailingDaysWithoutKeyUsage: whole days (rounded down) since the key's last successful
    cryptographic use as GetKeyLastUsage reports it (`LastUsageSource.last_usage`'s answer); for a
    key unused since tracking began, since its creation or the tracking start, whichever is later
    ("AWS KMS condition keys")."""
    if last is not None:
        since = last.timestamp
    elif tracking_start is not None:
        since = max(as_utc(key.creation_date), as_utc(tracking_start))
    else:
        since = key.creation_date
    return max(0, int((as_utc(now) - as_utc(since)).total_seconds() // _DAY_SECONDS))



# --- the request context -----------------------------------------------------------------------

Derive = Callable[["RequestContext"], Any]
_PRINCIPAL_TYPE = {IdentityType.ROOT: "Account", IdentityType.IAM_USER: "User",
                   IdentityType.ASSUMED_ROLE: "AssumedRole"}


def _key_value(read: Callable[[Key], Any]) -> Derive:
    return lambda ctx: read(ctx.key) if ctx.key is not None else None


_DERIVED: dict[str, Derive] = {
    "aws:principalarn": lambda ctx: ctx.call.principal.policy_arn,
    "aws:principalaccount": lambda ctx: ctx.call.principal.account,
    "aws:principaltype": lambda ctx: _PRINCIPAL_TYPE.get(ctx.call.principal.type),
    "aws:username": lambda ctx: ctx.call.principal.user_name,
    "aws:userid": lambda ctx: ctx.call.principal.principal_id,
    "aws:sourceip": lambda ctx: ctx.call.source_ip,
    "aws:securetransport": lambda ctx: ctx.call.secure_transport,
    "aws:requestedregion": lambda ctx: ctx.call.region,
    "aws:currenttime": lambda ctx: ctx.now,
    "aws:epochtime": lambda ctx: int(ctx.now.timestamp()),
    "kms:calleraccount": lambda ctx: ctx.call.principal.account,
    # In the context of every signed request (false here: no AWS service calls keytrail), so a
    # `Bool: false` on them, as data-perimeter Deny statements write it, holds for direct callers.
    "aws:principalisawsservice": lambda ctx: False,
    "aws:viaawsservice": lambda ctx: False,
    # "Key is present only in requests that are signed using temporary security credentials": an
    # assumed-role session's, false (no MFA here, as its audit record's mfaAuthenticated says), so
    # a Deny on `Bool: false` refuses sessions, while an IAM user's long-term keys leave it absent.
    "aws:multifactorauthpresent": lambda ctx: _session_mfa(ctx.call.principal.type),
    "aws:resourceaccount": _key_value(lambda key: key.account),
    # Absent for an account in no organization, as for AWS callers outside one: a data-perimeter
    # `StringNotEqualsIfExists` lets them through, a `StringNotEquals` denies them.
    "aws:principalorgid": lambda ctx: ctx.call.organizations.get(ctx.call.principal.account),
    "aws:resourceorgid": lambda ctx: ctx.call.organizations.get(ctx.key.account) if ctx.key is not None else None,
    "kms:keyspec": _key_value(lambda key: str(key.key_spec)),
    "kms:customermasterkeyspec": _key_value(lambda key: str(key.key_spec)),
    "kms:keyusage": _key_value(lambda key: str(key.key_usage)),
    "kms:customermasterkeyusage": _key_value(lambda key: str(key.key_usage)),
    "kms:keyorigin": _key_value(lambda key: str(key.origin)),
    "kms:multiregion": _key_value(lambda key: key.multi_region),
    # A key condition of every KMS key resource operation, like kms:MultiRegion; absent for a
    # single-Region key (a Deny on REPLICA must not be dodged by calling Decrypt, not ReplicateKey).
    "kms:multiregionkeytype": _key_value(lambda key: _multi_region_key_type(key)),
}


def _session_mfa(identity: IdentityType) -> bool | None:
    return False if identity is IdentityType.ASSUMED_ROLE else None


def _multi_region_key_type(key: Key) -> str | None:
    if not key.multi_region:
        return None
    return "REPLICA" if key.primary_region not in (None, key.region) else "PRIMARY"


class RequestContext:
    """Resolves a lowercase condition key: request values first, then derived ones. The time is
    read from `clock` only when a statement asks for it, and the request's condition keys are
    lowercased only when one is asked for (most policies read none)."""

    __slots__ = ("_clock", "_conditions", "_now", "_values", "call", "key")
    call: CallContext
    key: Key | None

    def __init__(
        self, call: CallContext, key: Key | None, conditions: Mapping[str, Any],
        clock: Callable[[], datetime],
    ) -> None:
        self.call = call
        self.key = key
        self._clock = clock
        self._now: datetime | None = None
        self._conditions = conditions
        self._values: dict[str, Any] | None = None

    @property
    def values(self) -> dict[str, Any]:
        """The request's condition-key values by lowercase name. Names differ only by case when an
        encryption context (or tag set) has keys that do: the condition key then holds all their
        values, so a Deny on one of them cannot be dodged by adding its twin in another case."""
        if self._values is None:
            values = {name.lower(): value for name, value in self._conditions.items()}
            if len(values) < len(self._conditions):  # twins (rare): the one-pass copy kept the last's value only
                values = _twins_merged(self._conditions)
            self._values = values
        return self._values

    @property
    def now(self) -> datetime:
        if self._now is None:
            self._now = self._clock()
        return self._now

    def __call__(self, name: str) -> Any:
        values = self.values
        if name in values:
            return values[name]
        derive = _DERIVED.get(name)
        if derive is not None:
            return derive(self)
        if name.startswith("aws:resourcetag/") and self.key is not None:
            return _tag_value(self.key.tags, name[len("aws:resourcetag/"):])
        if name.startswith("aws:principaltag/"):
            return _tag_value(self.call.principal.tags, name[len("aws:principaltag/"):])
        return None


def _twins_merged(conditions: Mapping[str, Any]) -> dict[str, Any]:
    """`conditions` by lowercase name, the values of names that differ only by case listed together."""
    values: dict[str, Any] = {}
    for name, value in conditions.items():
        lowered = name.lower()
        values[lowered] = value if lowered not in values else [*_listed(values[lowered]), *_listed(value)]
    return values


def _tag_value(tags: Iterable[tuple[str, str]], wanted: str) -> Any:
    """aws:ResourceTag/<wanted> or aws:PrincipalTag/<wanted> (lowercase). A KMS key's tag keys are
    case sensitive, so a key may carry `Team` and `team`, while the condition key's name is not: it
    then holds both values, as a request's twin context keys do, so a Deny on `Team=secret` is not
    dodged by tagging `team=public` too. (IAM refuses a user's or role's twin tags.)"""
    values = [value for tag, value in tags if tag.lower() == wanted]
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _listed(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]
