"""Key policies: GetKeyPolicy, PutKeyPolicy, ListKeyPolicies (one policy, named `default`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from keytrail.kms import errors
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.policy import validate_key_policy

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

# The key policy Resource Access Manager keeps for a key shared through RAM (never here).
_RAM_POLICY = "AWS_RAM"


def _policy_name(call: Call) -> str:
    name = call.params.get("PolicyName") or "default"
    if name != "default":
        raise errors.NotFoundException(f"Policy {name} is not found.")
    return name


async def get_key_policy(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    name = _policy_name(call)
    await svc.authorize(call, "kms:GetKeyPolicy", key)
    return {"Policy": key.policy, "PolicyName": name}


async def put_key_policy(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    bypass = bool(call.params.get("BypassPolicyLockoutSafetyCheck"))
    # Key states table: PutKeyPolicy succeeds in every key state, PendingDeletion included.
    # kms:PolicyName and kms:BypassPolicyLockoutSafetyCheck come from the request.
    await svc.authorize(call, "kms:PutKeyPolicy", key)
    if call.params.get("PolicyName") == _RAM_POLICY:
        # "If you specify AWS_RAM, the request fails with a ValidationException, or with an
        # AccessDeniedException if you don't have permission to call PutKeyPolicy with that policy
        # name" (API reference, PutKeyPolicy): authorization comes first.
        raise errors.ValidationException("The AWS_RAM policy can only be managed by the RAM service.")
    _policy_name(call)
    validate_key_policy(call.params["Policy"], call.context.principal, bypass=bypass, key_arn=key.arn,
                        call=call.context, now=svc.now(), key=key)
    await svc.store.put_key(replace(key, policy=call.params["Policy"]))
    return {}


async def list_key_policies(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:ListKeyPolicies", key)
    return {"PolicyNames": ["default"], "Truncated": False}


OPERATIONS: dict[str, Operation] = {
    "GetKeyPolicy": Operation(get_key_policy, read_only=True),
    "PutKeyPolicy": Operation(put_key_policy),
    "ListKeyPolicies": Operation(list_key_policies, read_only=True),
}
