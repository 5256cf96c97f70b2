"""The one authorization point: every operation asks `Authorizer.authorize` before it acts.

This module defines the request and decision types. The evaluation of key policies, IAM identity
policies and grants lives behind `Authorizer`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from keytrail.kms.call_values import call_value
from keytrail.kms.condition_cost import MAX_COMPARISONS
from keytrail.kms.context import CallContext
from keytrail.kms.grants import retire_allowed
from keytrail.kms.keys import Key
from keytrail.kms.store import Grant

__all__ = ["AccessDecision", "AccessRequest", "Authorizer", "OwnAccountAuthorizer", "Verdict", "denial_message"]


class Verdict(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit-deny"
    IMPLICIT_DENY = "implicit-deny"


@call_value
class AccessRequest:
    """One question: may this caller perform `action` (e.g. `kms:Decrypt`) on `key`?

    `conditions` holds the request's condition-key values (`kms:EncryptionContext:dept`,
    `kms:EncryptionAlgorithm`, …); `grants` are the key's grants that may name the caller (`grantee_names`:
    no other can allow it anything; a GrantToken adds none: its grant takes effect as CreateGrant
    returns), except for `kms:RetireGrant`, where `grants` holds the one grant to retire.
    """

    call: CallContext
    action: str
    key: Key | None
    conditions: Mapping[str, Any] = field(default_factory=dict)
    grants: Sequence[Grant] = ()
    # Without a key: the resource identity policies are matched against (an alias ARN for the
    # alias half of CreateAlias/UpdateAlias/DeleteAlias, the ARN a new key will have for its Tags,
    # the retiring principal of ListRetirableGrants: `KmsService.authorize_identity`), else "*".
    resource: str | None = None
    # False for the key a CreateKey or ReplicateKey is making: AWS's denial of its Tags names no
    # resource ("… is not authorized to perform: kms:TagResource because …"), and a key ARN that
    # never comes to exist, in the answer and the audit record, sent searches after a phantom key.
    resource_named: bool = True

    @property
    def resource_arn(self) -> str:
        return self.key.arn if self.key is not None else self.resource or "*"


@dataclass(frozen=True, slots=True)
class AccessDecision:
    verdict: Verdict
    # For denials: "identity-based" or "resource-based", as AWS's message names them.
    policy_type: str = "identity-based"
    # A request refused before its policies' conditions were evaluated: what comparing its values
    # with them would have cost (condition_cost.py).
    comparisons: int = 0

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


class Authorizer(Protocol):
    def authorize(self, request: AccessRequest) -> AccessDecision: ...


def denial_message(request: AccessRequest, decision: AccessDecision) -> str:
    """AWS's AccessDeniedException text, so the audit trail says why a call was refused."""
    caller = request.call.principal.arn
    resource = request.resource_arn
    on_resource = f" on resource: {resource}" if request.resource_named else ""
    head = f"User: {caller} is not authorized to perform: {request.action}{on_resource}"
    if decision.comparisons:
        return (f"{head}: comparing this request's values with the conditions of the policies that apply would "
                f"take {decision.comparisons:,} comparisons, over keytrail's limit of {MAX_COMPARISONS:,} a request")
    if decision.verdict is Verdict.EXPLICIT_DENY:
        # AWS's article: "in an identity-based policy", "in a resource-based policy".
        article = "an" if decision.policy_type[:1] in "aeiou" else "a"
        return f"{head} with an explicit deny in {article} {decision.policy_type} policy"
    return f"{head} because no {decision.policy_type} policy allows the {request.action} action"


class OwnAccountAuthorizer:
    """The simplest sound policy: a caller may use keys of its own account only, and may do
    anything there. Stands in where key policies are not evaluated (unit tests)."""

    def authorize(self, request: AccessRequest) -> AccessDecision:
        key = request.key
        if key is None or key.account == request.call.account:
            return AccessDecision(Verdict.ALLOW)
        if request.action == "kms:RetireGrant" and any(
                retire_allowed(grant, request.call.principal, True) for grant in request.grants):
            return AccessDecision(Verdict.ALLOW)
        return AccessDecision(Verdict.IMPLICIT_DENY, "resource-based")
