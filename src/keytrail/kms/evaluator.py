"""The policy evaluator behind `Authorizer`: key policy, IAM identity policies and grants.

Follows "Determining access to a KMS key" and "Policy evaluation logic": an explicit Deny in any
applicable policy wins; otherwise the key policy must allow the caller directly, or allow the
caller's account and an identity policy must allow too; otherwise a grant may allow. Key-less
operations are decided by identity policies alone. Decisions are cached by everything they read.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from keytrail.clock import Clock, utc_now
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.condition_cost import MAX_COMPARISONS, comparisons
from keytrail.kms.condition_keys import (
    ENCRYPTION_CONTEXT,
    GRANT_CONSTRAINTS,
    RESOURCE_ALIASES,
    RequestContext,
    request_conditions,
)
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.errors import KmsError, MalformedPolicyDocumentException
from keytrail.kms.grants import grant_allows, retire_allowed
from keytrail.kms.keys import Key
from keytrail.kms.policy_document import Policy, PrincipalSet, Statement, compile_policy

__all__ = [
    "CROSS_ACCOUNT_ACTIONS",
    "LOCKOUT_MESSAGE",
    "PolicyAuthorizer",
    "check_lockout",
    "evaluate_identity",
    "evaluate_key_policy",
]

_CACHE_LIMIT = 8192
# A decision is cached with the request values it read; an encryption context (or a grant's
# constraints) can fill the whole request body, and 8192 of those held tens of GB. Larger requests,
# and callers named by many of a key's grants, are decided afresh: they are not the hot path the cache is for.
_CACHED_CONDITIONS = 32
_CACHED_CHARS = 4096
_CACHED_GRANTS = 64  # a decision is cached with the ids of the grants naming the caller
# Compiled key policies are also bounded by their texts' size: a 32 KB policy compiles to ~250 KB,
# and 8192 of them (PutKeyPolicy after PutKeyPolicy) held 2 GB.
_KEY_POLICY_CHARS = 8 << 20
_SCALARS = frozenset({str, int, float, bool, type(None)})
_DENY_ALL = Policy((), frozenset())
IDENTITY, RESOURCE = "identity-based", "resource-based"
_RETIRE_GRANT = "kms:RetireGrant"
# "Cross-account permission is effective only for the following operations" (Allowing users in
# other accounts to use a KMS key): permission for any other action on another account's key, in
# a key policy or an IAM policy, has no effect. RetireGrant is decided by its grant.
CROSS_ACCOUNT_ACTIONS = frozenset(f"kms:{name}" for name in (
    "CreateGrant", "Decrypt", "DescribeKey", "DeriveSharedSecret", "Encrypt", "GenerateDataKey",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext",
    "GenerateMac", "GetKeyRotationStatus", "GetPublicKey", "ListGrants", "ReEncryptFrom", "ReEncryptTo",
    "RetireGrant", "RevokeGrant", "Sign", "Verify", "VerifyMac", "Encapsulate", "Decapsulate",
))
LOCKOUT_MESSAGE = "The new key policy will not allow you to update the key policy in the future."


@dataclass(frozen=True, slots=True)
class _KeyPolicyResult:
    deny: bool = False
    direct: bool = False  # the key policy names the caller (or everyone)
    account: bool = False  # the key policy names the caller's account: IAM must allow too


def _principal_match(principals: PrincipalSet, principal: Principal) -> str | None:
    if principals.anyone or principal.policy_arn in principals.arns or principal.arn in principals.arns:
        return "direct"
    if principal.root_arn in principals.arns or principal.account in principals.arns:
        return "account"
    return None


def _statement_principal(statement: Statement, principal: Principal) -> str | None:
    assert statement.principals is not None
    if statement.not_principal:
        if statement.allow:  # refused when set (policy_document.py); one stored earlier grants nothing
            return None
        return None if _spared(statement.principals, principal) else "direct"
    return _principal_match(statement.principals, principal)


def _spared(principals: PrincipalSet, principal: Principal) -> bool:
    """Whether a NotPrincipal Deny spares the caller. AWS "might validate the account first, then
    the role, and then the assumed-role user" ("AWS JSON policy elements: NotPrincipal"), each of
    which the Deny hits unless it is listed: a user is spared only with its account listed too, a
    role session only with its session, its role and its account, as AWS's examples list them."""
    if principals.anyone:
        return True
    account = principal.root_arn in principals.arns or principal.account in principals.arns
    if principal.type is IdentityType.ROOT:
        return account
    role = principal.role_arn is None or principal.role_arn in principals.arns
    return account and role and principal.arn in principals.arns


def _key_policy_view(ctx: Callable[[str], Any]) -> Callable[[str], Any]:
    """The request context as a key policy sees it: without kms:ResourceAliases, whose policy
    type is "IAM policies only" ("AWS KMS condition keys"; "ABAC for AWS KMS"). Conditions on it
    then match as IAM's do on any key the request context lacks (conditions.py)."""
    return lambda name: None if name == RESOURCE_ALIASES else ctx(name)


def evaluate_key_policy(policy: Policy, principal: Principal, action: str, resource: str,
                        ctx: RequestContext) -> _KeyPolicyResult:
    """What the key policy says about this caller: explicit deny, direct or account allow."""
    direct = account = False
    resolve = _key_policy_view(ctx)
    for statement in policy.statements:
        match = _statement_principal(statement, principal)
        if match is None or not statement.applies_to(action, resource, resolve):
            continue
        if not statement.allow:
            return _KeyPolicyResult(deny=True)
        direct = direct or match == "direct"
        account = account or match == "account"
    return _KeyPolicyResult(direct=direct, account=account)


def evaluate_identity(policies: tuple[Policy, ...], action: str, resource: str,
                      ctx: RequestContext) -> Verdict | None:
    """EXPLICIT_DENY, ALLOW, or None when no identity statement applies."""
    allowed = False
    for policy in policies:
        for statement in policy.statements:
            if not statement.applies_to(action, resource, ctx):
                continue
            if not statement.allow:
                return Verdict.EXPLICIT_DENY
            allowed = True
    return Verdict.ALLOW if allowed else None


def _pairs_chars(pairs: Any) -> int:
    """The characters of an encryption context's keys and values (0 if it is none)."""
    if not isinstance(pairs, dict):
        return 0
    # Joined rather than summed pair by pair: the loop then runs in C (every cached call asks).
    return len("".join(map(str, pairs))) + len("".join(map(str, pairs.values())))


def _cacheable(conditions: Mapping[str, Any]) -> bool:
    """Whether a decision on these request values is small enough to keep in the cache."""
    if len(conditions) > _CACHED_CONDITIONS:  # one per encryption context pair or tag, and a few
        return False
    chars = _pairs_chars(conditions.get(ENCRYPTION_CONTEXT))
    constraints = conditions.get(GRANT_CONSTRAINTS)
    if isinstance(constraints, dict):
        chars += sum(_pairs_chars(pairs) for pairs in constraints.values())
    return chars <= _CACHED_CHARS


def _stored(text: str) -> Any:
    """A stored key policy as its JSON was read when it was set: earlier releases took NaN and
    Infinity, which PutKeyPolicy now refuses, and a key stored with one must stay usable (and
    its policy replaceable) rather than deny everyone."""
    return json.loads(text)


def _freeze(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return frozenset((k, _freeze(v)) for k, v in value.items())
    return value


class _KeyPolicy:
    """A compiled key policy as cached by its text. Decisions are cached by its `number`, never
    reused: not by the text, which may take 32 KB, nor by this object, which each decision would
    then keep alive (~250 KB for a 32 KB text) after the policy cache let it go."""

    __slots__ = ("key_reads", "number", "policy")
    _numbers = itertools.count()

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.number = next(self._numbers)
        # The condition keys it reads as a key policy: never kms:ResourceAliases (_key_policy_view).
        self.key_reads = policy.reads - {RESOURCE_ALIASES}


@dataclass(frozen=True, slots=True)
class _Identity:
    """A principal's compiled identity policies. `documents` is the principal's own tuple: kept
    alive by the entry, so the id it is cached under is never reused."""

    documents: tuple[dict[str, Any], ...]
    policies: tuple[Policy, ...]
    reads: frozenset[str]


def _read_values(ctx: RequestContext, *reads: frozenset[str]) -> tuple[Any, ...]:
    """(name, value) of every condition key the policies read, hashable for the decision cache."""
    values = []
    for names in reads:
        for name in names:
            value = ctx(name)
            # Most values are strings (or absent): no call to freeze them (0.2 µs each).
            values.append((name, value if type(value) in _SCALARS else _freeze(value)))
    return tuple(values)


class PolicyAuthorizer:
    """Decides every KMS call as AWS KMS does; `clock` supplies aws:CurrentTime."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._key_policies: dict[str, _KeyPolicy] = {}
        self._key_policy_chars = 0  # the cached texts' length
        self._identities: dict[int, _Identity] = {}
        self._decisions: dict[tuple[Any, ...], tuple[object, AccessDecision]] = {}

    # --- compiled policies, cached ---------------------------------------------------------------

    def key_policy(self, text: str) -> Policy:
        return self._compiled_key_policy(text).policy

    def _compiled_key_policy(self, text: str) -> _KeyPolicy:
        entry = self._key_policies.get(text)
        if entry is None:
            try:
                entry = _KeyPolicy(compile_policy(_stored(text), "key"))
            except (KmsError, KeyError, TypeError, ValueError, RecursionError):
                entry = _KeyPolicy(_DENY_ALL)  # a stored policy that no longer parses allows nothing
            full = len(self._key_policies) >= _CACHE_LIMIT
            if full or self._key_policy_chars + len(text) > _KEY_POLICY_CHARS:
                self._key_policies.clear()
                self._key_policy_chars = 0
            self._key_policies[text] = entry
            self._key_policy_chars += len(text)
        return entry

    def _identity(self, principal: Principal) -> _Identity:
        entry = self._identities.get(id(principal.policies))
        if entry is not None and entry.documents is principal.policies:
            return entry
        compiled = []
        for doc in principal.policies:
            try:
                compiled.append(compile_policy(doc, "identity"))
            except (KmsError, KeyError, TypeError, ValueError):
                continue  # an invalid identity policy grants nothing
        entry = _Identity(principal.policies, tuple(compiled), frozenset().union(*(p.reads for p in compiled)))
        self._bounded(self._identities)[id(principal.policies)] = entry
        return entry

    def reads(self, key: Key | None, principal: Principal) -> frozenset[str]:
        """The (lowercase) condition keys that this key's policy and the caller's policies read."""
        identity_reads = self._identity(principal).reads
        if key is None:
            return identity_reads
        key_reads = self._compiled_key_policy(key.policy).key_reads
        return key_reads | identity_reads if identity_reads else key_reads

    @staticmethod
    def _bounded(cache: dict[Any, Any]) -> dict[Any, Any]:
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        return cache

    # --- the decision --------------------------------------------------------------------------

    def authorize(self, request: AccessRequest) -> AccessDecision:
        principal, key = request.call.principal, request.key
        ctx = RequestContext(request.call, key, request.conditions, self._clock.now)
        identity = self._identity(principal)
        compiled = self._compiled_key_policy(key.policy) if key is not None else None
        key_policy = compiled.policy if compiled is not None else None
        if len(request.grants) > _CACHED_GRANTS or not _cacheable(request.conditions):
            return self._decide(request, ctx, key_policy, identity.policies)
        # Decisions are cached by everything they read: who, what, which key policy, the
        # values of the condition keys the policies read, and the grants with the request's values.
        values = _read_values(ctx, key_policy.reads if key_policy else frozenset(), identity.reads)
        grants: tuple[Any, ...] = ()
        if request.grants:
            grants = (tuple(g.grant_id for g in request.grants), _freeze(dict(request.conditions)))
        # A key stands for its ARN by its own names: `resource_arn` builds the ARN anew at each reading.
        resource = (key.account, key.region, key.key_id) if key is not None else request.resource_arn
        cache_key = (principal.arn, principal.role_arn, principal.type, id(principal.policies), request.action,
                     resource, compiled.number if compiled else None, values, grants)
        hit = self._decisions.get(cache_key)
        if hit is not None and hit[0] is principal.policies:
            return hit[1]
        decision = self._decide(request, ctx, key_policy, identity.policies)
        self._bounded(self._decisions)[cache_key] = (principal.policies, decision)
        return decision

    def _decide(self, request: AccessRequest, ctx: RequestContext, key_policy: Policy | None,
                identity: tuple[Policy, ...]) -> AccessDecision:
        principal, action = request.call.principal, request.action
        resource = request.resource_arn
        policies = (key_policy, *identity) if key_policy is not None else identity
        cost = comparisons(itertools.chain.from_iterable(p.compared for p in policies), ctx)
        if cost > MAX_COMPARISONS:
            return AccessDecision(Verdict.IMPLICIT_DENY, RESOURCE if key_policy else IDENTITY, comparisons=cost)
        if action == _RETIRE_GRANT:
            return self._decide_retire(request, ctx, identity, resource)
        kp = _KeyPolicyResult()
        if key_policy is not None:
            kp = evaluate_key_policy(key_policy, principal, action, resource, ctx)
            if kp.deny:
                return AccessDecision(Verdict.EXPLICIT_DENY, RESOURCE)
        verdict = evaluate_identity(identity, action, resource, ctx)
        if verdict is Verdict.EXPLICIT_DENY:
            return AccessDecision(Verdict.EXPLICIT_DENY, IDENTITY)
        iam_allows = verdict is Verdict.ALLOW or principal.type is IdentityType.ROOT
        if request.key is None:
            return AccessDecision(Verdict.ALLOW if iam_allows else Verdict.IMPLICIT_DENY, IDENTITY)
        if principal.account != request.key.account and action not in CROSS_ACCOUNT_ACTIONS:
            return AccessDecision(Verdict.IMPLICIT_DENY, RESOURCE)
        if self._policies_allow(request, kp, iam_allows) or self._grants_allow(request, iam_allows):
            return AccessDecision(Verdict.ALLOW)
        return AccessDecision(Verdict.IMPLICIT_DENY, RESOURCE if iam_allows else IDENTITY)

    @staticmethod
    def _decide_retire(request: AccessRequest, ctx: RequestContext, identity: tuple[Policy, ...],
                       resource: str) -> AccessDecision:
        """RetireGrant of `request.grants` (the grant named): the grant decides who may retire it.
        An IAM Deny still refuses; kms:RetireGrant "is not effective in a key policy", so the key
        policy neither allows nor denies it ("Retiring and revoking grants")."""
        principal = request.call.principal
        verdict = evaluate_identity(identity, request.action, resource, ctx)
        if verdict is Verdict.EXPLICIT_DENY:
            return AccessDecision(Verdict.EXPLICIT_DENY, IDENTITY)
        iam_allows = verdict is Verdict.ALLOW or principal.type is IdentityType.ROOT
        if any(retire_allowed(grant, principal, iam_allows) for grant in request.grants):
            return AccessDecision(Verdict.ALLOW)
        # As for every other action, the message names what did not allow: an IAM policy that
        # allows kms:RetireGrant (of another account, or with no account rule to give it effect)
        # is not what refused, the grant is.
        return AccessDecision(Verdict.IMPLICIT_DENY, RESOURCE if iam_allows else IDENTITY)

    @staticmethod
    def _policies_allow(request: AccessRequest, kp: _KeyPolicyResult, iam_allows: bool) -> bool:
        assert request.key is not None
        if request.call.principal.account == request.key.account and kp.direct:
            return True
        # Through the account (delegation to IAM), and every cross-account call: both must allow.
        return (kp.direct or kp.account) and iam_allows

    @staticmethod
    def _grants_allow(request: AccessRequest, iam_allows: bool) -> bool:
        if not request.grants:
            return False
        operation = request.action.removeprefix("kms:")
        values: Mapping[str, Any] = request.conditions
        wanted = {
            "context": values.get(ENCRYPTION_CONTEXT) or {},
            "operations": values.get("kms:GrantOperations") or (),
            "constraints": values.get(GRANT_CONSTRAINTS),
        }
        principal = request.call.principal
        return any(grant_allows(g, operation, principal, wanted, iam_allows) for g in request.grants)


def check_lockout(
    policy_doc: str | Mapping[str, Any], principal: Principal, *, bypass: bool = False,
    call: CallContext | None = None, now: datetime | None = None, resource: str = "*", key: Key | None = None,
) -> None:
    """The policy lockout safety check of CreateKey and PutKeyPolicy: the new key policy must let
    the caller call PutKeyPolicy again (directly, or through its account and IAM), unless bypassed.
    `resource` is the key's ARN: a later PutKeyPolicy is matched against it, so an IAM policy
    scoped to `…:key/*` counts. `key` (PutKeyPolicy: the key as it is) gives that later request
    its key's condition keys (aws:ResourceTag/…, kms:KeySpec …), as a request "on the KMS key" has."""
    if bypass:
        return
    policy = compile_policy(policy_doc, "key")
    call = call or CallContext(principal=principal, region="", request_id="")
    # The request context of that later PutKeyPolicy: its keys with no parameter given (kms:PolicyName
    # is "default"; kms:BypassPolicyLockoutSafetyCheck absent), not an empty context.
    later = request_conditions("PutKeyPolicy", {})
    ctx = RequestContext(call, key, later, (lambda: now) if now else utc_now)
    kp = evaluate_key_policy(policy, principal, "kms:PutKeyPolicy", resource, ctx)
    identity = tuple(compile_policy(doc, "identity") for doc in principal.policies)
    verdict = evaluate_identity(identity, "kms:PutKeyPolicy", resource, ctx)
    iam_allows = verdict is Verdict.ALLOW or principal.type is IdentityType.ROOT
    if kp.deny or verdict is Verdict.EXPLICIT_DENY or not (kp.direct or (kp.account and iam_allows)):
        raise MalformedPolicyDocumentException(LOCKOUT_MESSAGE)
