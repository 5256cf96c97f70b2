"""Grants: CreateGrant, ListGrants, ListRetirableGrants, RetireGrant, RevokeGrant.

Follows "Grants in AWS KMS" and the API reference of each operation. A grant is usable as soon as
CreateGrant returns (this node's store is consistent), so a GrantToken adds no permission; it must
still be one CreateGrant returned for a grant of this Region that is still there
(`KmsService._check_grant_tokens`, and `_grant_named` for RetireGrant's).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors
from keytrail.kms.authz import AccessRequest
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.condition_keys import request_conditions
from keytrail.kms.grants import (
    account_spellings,
    allowed_operations,
    grant_token_matches,
    grant_view,
    make_grant_token,
    parse_grant_token,
    supports_constraints,
)
from keytrail.kms.keys import Key
from keytrail.kms.model import KeyState
from keytrail.kms.paging import dated_position, page, page_limit, paged
from keytrail.kms.partitions import partition_of
from keytrail.kms.policy_document import is_aws_principal, unnameable_principal
from keytrail.kms.store import Grant, grant_position

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

_GRANT_ID = re.compile(r"[0-9a-f]{64}")  # with fullmatch: `$` also matches before a final newline
# A service principal named in GranteePrincipal, as grants AWS services make for themselves
# name one (`ec2.us-east-1.amazonaws.com`): no service calls here, so such a grant allows nothing.
_SERVICE_PRINCIPAL = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.amazonaws\.com(\.cn)?", re.ASCII)
_CONSTRAINTS = ("EncryptionContextEquals", "EncryptionContextSubset")
# CreateGrant, Constraints: "up to 8 encryption context pairs", "cannot exceed 384 characters".
_MAX_CONSTRAINT_PAIRS = 8
_MAX_CONSTRAINT_VALUE = 384
# "Grants per KMS key" (AWS KMS resource quotas): every call on a key reads all of its grants, so
# without it one caller could make each call on a key slower, and the node larger, without end.
GRANTS_PER_KEY = 50_000
# ListGrants and ListRetirableGrants: "If you do not include a value, it defaults to 50."
_DEFAULT_LIMIT = 50


def _check_request(key: Key, operations: list[str], constraints: dict[str, Any]) -> None:
    """AWS's rules on which operations and constraints a grant on this kind of key may carry."""
    if set(operations) == {"CreateGrant"}:
        raise errors.ValidationException("Grants must not contain only the CreateGrant operation.")
    refused = sorted(set(operations) - allowed_operations(key))
    if refused:
        raise errors.ValidationException(
            f"Grant operations {refused} are not valid for a KMS key with KeySpec {key.key_spec} and "
            f"KeyUsage {key.key_usage}."
        )
    given = [c for c in _CONSTRAINTS if constraints.get(c) is not None]
    if len(given) > 1:
        raise errors.ValidationException("More than one constraint supplied")  # AWS's own words
    if given and not supports_constraints(key):
        raise errors.ValidationException(
            "Encryption context grant constraints are supported only on symmetric encryption KMS keys."
        )
    for name in given:
        _check_constraint_size(name, constraints[name])


def _check_constraint_size(name: str, pairs: dict[str, str]) -> None:
    # The 384 characters are checked per key and per value: whether AWS counts one value or the
    # whole constraint, a longer key or value is over its limit, so nothing AWS accepts is refused
    # here (a key of 5,000 characters was taken, the values alone being checked).
    if len(pairs) > _MAX_CONSTRAINT_PAIRS or any(max(len(k), len(v)) > _MAX_CONSTRAINT_VALUE for k, v in pairs.items()):
        raise errors.ValidationException(
            f"{name} can include up to {_MAX_CONSTRAINT_PAIRS} encryption context pairs, and no key or "
            f"value can exceed {_MAX_CONSTRAINT_VALUE} characters."
        )


def _require_principals(params: dict[str, Any]) -> None:
    """A grantee or retiring principal must name an AWS principal. AWS resolves both and refuses
    one that names none with InvalidArnException "ARN does not refer to a valid principal: <arn>"
    (its words, as callers of CreateGrant quote them); a grant to a group, a bucket or a typo
    would otherwise be kept and listed, yet allow no caller anything. So would a grant to a name
    no IAM identity can have (`user/ops/`, a session ARN with its role's path), which the API's
    pattern lets through."""
    for name in ("GranteePrincipal", "RetiringPrincipal"):
        value = params.get(name)
        if value is not None and not (_names_principal(value) or _SERVICE_PRINCIPAL.fullmatch(value)):
            raise errors.InvalidArnException(f"ARN does not refer to a valid principal: {value}")


def _names_principal(value: str) -> bool:
    """An account id or principal ARN as a key policy may name one (policy_document.py)."""
    return is_aws_principal(value) and unnameable_principal(value) is None


def _require_one_of(params: dict[str, Any], principal: str, service_principal: str, verb: str) -> None:
    """The API reference of CreateGrant, ListGrants and ListRetirableGrants: "You [must|can]
    specify either <X>Principal or <X>ServicePrincipal, but not both." """
    if params.get(principal) is not None and params.get(service_principal) is not None:
        raise errors.ValidationException(
            f"You {verb} specify either {principal} or {service_principal}, but not both."
        )


def _refuse_service_principal(params: dict[str, Any], member: str) -> None:
    if params.get(member) is not None:
        raise errors.UnsupportedOperationException(
            f"{member} is not supported: no AWS service principal calls keytrail.")


def _same_request(grant: Grant, params: dict[str, Any]) -> bool:
    return (
        grant.grantee_principal == params["GranteePrincipal"]
        and grant.retiring_principal == params.get("RetiringPrincipal")
        and set(grant.operations) == set(params["Operations"])  # a grant made before _operations may repeat one
        and (grant.constraints or None) == (params.get("Constraints") or None)
    )


def _require_grantable(svc: KmsService, key: Key) -> None:
    """CreateGrant's column of "Key states of AWS KMS keys": a disabled key is DisabledException,
    a key pending import or deletion KMSInvalidStateException (an unavailable key takes grants)."""
    if key.state is KeyState.DISABLED:
        raise errors.DisabledException(f"{key.arn} is disabled.")
    if key.state is KeyState.PENDING_IMPORT:
        raise errors.KMSInvalidStateException(f"{key.arn} is pending import.")
    svc.require_not_pending_deletion(key)


async def create_grant(svc: KmsService, call: Call) -> Response:
    params = call.params
    if not params["Operations"]:
        # "CreateGrant doesn't permit" a grant without operations ("AWS KMS condition keys",
        # kms:GrantOperations), which the model's list shape leaves unbounded: refused before
        # access is decided, as a model constraint is, and before a ForAllValues policy allows it.
        raise errors.ValidationException(
            "1 validation error detected: Value '[]' at 'operations' failed to satisfy constraint: "
            "Member must have length greater than or equal to 1")
    _require_one_of(params, "GranteePrincipal", "GranteeServicePrincipal", "must")
    _require_one_of(params, "RetiringPrincipal", "RetiringServicePrincipal", "can")
    # Dropped, the grant would look usable or retirable by a service that can never call here.
    _refuse_service_principal(params, "GranteeServicePrincipal")
    _refuse_service_principal(params, "RetiringServicePrincipal")
    key = await svc.find_key(call, params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:CreateGrant", key, _create_grant_conditions(params, key))
    _require_grantable(svc, key)
    _require_principals(params)
    _check_request(key, params["Operations"], params.get("Constraints") or {})
    svc.check_dry_run(call)
    grant = await _existing_by_name(svc, key, params)
    if grant is None:
        if await svc.store.count_grants(key.account, key.region, key.key_id) >= GRANTS_PER_KEY:
            raise errors.LimitExceededException(
                f"{key.arn} already has {GRANTS_PER_KEY} grants, the quota of grants per KMS key.")
        grant = _new_grant(svc, call, key)
        call.response_elements = _created(grant, key)  # before the write: its owed record names the grant
        await svc.store.put_grant(grant)
        token = grant.token
    else:
        token = make_grant_token(grant, svc.deps.random_bytes(16))  # a fresh token, the same grant
    call.response_elements = _created(grant, key)
    return {"GrantToken": token, "GrantId": grant.grant_id}


def _create_grant_conditions(params: dict[str, Any], key: Key) -> dict[str, Any]:
    """CreateGrant's condition keys, its grantee and retiring principal under each name they go by
    (an account: its root's ARN and its bare id, in the key's partition)."""
    conditions = request_conditions("CreateGrant", params)
    for member in ("GranteePrincipal", "RetiringPrincipal"):
        if isinstance(name := params.get(member), str):
            conditions[f"kms:{member}"] = account_spellings(name, partition_of(key.region))
    return conditions


def _created(grant: Grant, key: Key) -> dict[str, str]:
    """CreateGrant's responseElements: the grant, and the key ARN CloudTrail entries carry since
    December 2022 though the response does not (ct-creategrant)."""
    return {"grantId": grant.grant_id, "keyId": key.arn}


async def _existing_by_name(svc: KmsService, key: Key, params: dict[str, Any]) -> Grant | None:
    """Name idempotency: a retry with the same Name and parameters returns the same grant (one to
    the same grantee, so only those are read: a key may hold 50,000 grants)."""
    if not params.get("Name"):
        return None
    for grant in await svc.store.grants_to(key.account, key.region, key.key_id, {params["GranteePrincipal"]}):
        if grant.name == params["Name"] and _same_request(grant, params):
            return grant
    return None


def _operations(params: dict[str, Any]) -> tuple[str, ...]:
    """The grant's operations, each once, in the order first named. A grant allows a set of them,
    which the model bounds by the request's size only: kept as sent, Decrypt named 20,000 times
    made a grant of 220 KB (50,000 of them, AWS's quota a key, 11 GB of the node's memory)."""
    return tuple(dict.fromkeys(params["Operations"]))


def _new_grant(svc: KmsService, call: Call, key: Key) -> Grant:
    params = call.params
    grant = Grant(
        account=key.account, region=key.region, key_id=key.key_id,
        grant_id=svc.deps.random_bytes(32).hex(), grantee_principal=params["GranteePrincipal"],
        operations=_operations(params), issuing_account=call.context.account,
        creation_date=svc.now(), token="", name=params.get("Name"),
        retiring_principal=params.get("RetiringPrincipal"), constraints=params.get("Constraints") or None,
    )
    return replace(grant, token=make_grant_token(grant, svc.deps.random_bytes(16)))


async def list_grants(svc: KmsService, call: Call) -> Response:
    """ListGrants, one page read from the store: a key may hold 50,000 grants."""
    params = call.params
    _require_one_of(params, "GranteePrincipal", "GranteeServicePrincipal", "can")
    key = await svc.find_key(call, params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:ListGrants", key, request_conditions("ListGrants", params))
    listing = f"ListGrants {key.arn}"
    if params.get("GrantId") is None and params.get("GranteeServicePrincipal") is None:
        limit = page_limit(params, _DEFAULT_LIMIT)
        after = dated_position(params, listing)
        grants = await svc.store.list_grants_page(key.account, key.region, key.key_id, after, limit + 1,
                                                  params.get("GranteePrincipal"))
        chunk, paging = paged(grants, limit, grant_position, listing)
    else:
        chunk, paging = _page(await _grant_listed(svc, key, params), params, listing)
    return {"Grants": [grant_view(key, g) for g in chunk], **paging}


async def _grant_listed(svc: KmsService, key: Key, params: dict[str, Any]) -> list[Grant]:
    """The grant a ListGrants call names by GrantId, if it meets the call's other filters."""
    if params.get("GrantId") is not None:
        _require_grant_id(params["GrantId"])
    if params.get("GranteeServicePrincipal") is not None:
        return []  # a filter no grant here meets: no grant is for an AWS service principal
    grant = await svc.store.get_grant(key.account, key.region, key.key_id, params["GrantId"])
    if grant is None or params.get("GranteePrincipal") not in (None, grant.grantee_principal):
        return []
    return [grant]


def _page(grants: list[Grant], params: dict[str, Any], listing: str) -> tuple[Sequence[Grant], dict[str, Any]]:
    return page(grants, params, grant_position, listing, default_limit=_DEFAULT_LIMIT)


async def list_retirable_grants(svc: KmsService, call: Call) -> Response:
    params = call.params
    _require_one_of(params, "RetiringPrincipal", "RetiringServicePrincipal", "must")
    _refuse_service_principal(params, "RetiringServicePrincipal")
    context, retiring = call.context, params["RetiringPrincipal"]
    # "The authorized resource in ListRetirableGrants calls is the retiring principal specified in
    # the request" (API reference): an IAM policy scoped to (or denying) that principal decides.
    await svc.authorize_identity(call, "kms:ListRetirableGrants", retiring)
    # AWS lists grants on other accounts' keys too, for a retiring principal of the caller's account.
    own_principal = _account_of(retiring) == context.account
    grants = [g for name in _names_of(retiring, context.region) for g in await svc.store.grants_retirable_by(
        context.region, name) if own_principal or g.account == context.account]
    chunk, paging = _page(grants, params, f"ListRetirableGrants {context.account} {context.region} {retiring}")
    views = []
    for grant in chunk:
        key = await svc.find_key_by_id(grant.account, grant.region, grant.key_id)
        if key is not None:
            views.append(grant_view(key, grant))
    return {"Grants": views, **paging}


def _names_of(principal: str, region: str) -> list[str]:
    """The names a grant may give `principal` as its retiring principal: an account's two (its root's
    ARN and its bare id, which RetireGrant takes alike), so that the account's grants are all listed
    whichever it is asked by; another principal's one."""
    names = account_spellings(principal, partition_of(region))
    return names if isinstance(names, list) else [names]


def _account_of(principal: str) -> str:
    """The account of a principal ARN (`arn:aws:iam::<account>:…`) or of a bare account id."""
    parts = principal.split(":")
    return parts[4] if len(parts) > 4 else principal


async def _grant_named(svc: KmsService, call: Call) -> tuple[Key, Grant]:
    """The grant a RetireGrant call names: by GrantToken, or by KeyId and GrantId."""
    params = call.params
    if params.get("GrantToken"):
        named = parse_grant_token(params["GrantToken"])
        if named is None or named[1] != call.context.region:  # grants are Regional, as their keys
            raise errors.InvalidGrantTokenException("The grant token is invalid.")
        account, region, key_id, grant_id = named
        if params.get("GrantId") and params["GrantId"] != grant_id:
            raise errors.InvalidGrantIdException("The grant ID does not match the grant token.")
        # The grant a token names, which the token itself (never logged) no longer tells: CloudTrail
        # logs it as additionalEventData.grantId (ct-retire-grant).
        call.additional_event_data["grantId"] = grant_id
        key = await svc.find_key_by_id(account, region, key_id)
        if key is None:
            raise errors.NotFoundException("The grant token refers to a key that does not exist.")
        call.resource(key.arn)
        grant = await _find_grant(svc, key, grant_id)
        if not grant_token_matches(params["GrantToken"], grant):  # made up, cut or changed
            raise errors.InvalidGrantTokenException("The grant token is invalid.")
        return key, grant
    if params.get("KeyId") and params.get("GrantId"):
        key = await svc.find_key(call, params["KeyId"], allow_alias=False)
        return key, await _find_grant(svc, key, params["GrantId"])
    raise errors.ValidationException("Grant token OR (grant ID, key ID) must be specified")


def _require_grant_id(grant_id: str) -> None:
    """A grant id is 64 hex digits; anything else is AWS's InvalidGrantIdException."""
    if not _GRANT_ID.fullmatch(grant_id):
        raise errors.InvalidGrantIdException(f"Invalid grant ID: {grant_id}")


async def _find_grant(svc: KmsService, key: Key, grant_id: str) -> Grant:
    _require_grant_id(grant_id)
    if grant := await svc.store.get_grant(key.account, key.region, key.key_id, grant_id):
        return grant
    raise errors.NotFoundException(f"Grant ID {grant_id} not found")


def _check_may_retire(svc: KmsService, call: Call, key: Key, grant: Grant) -> None:
    """The authorizer decides from the grant (retiring principal, grantee, the grant's account)
    and the caller's IAM policies; only the grant being retired is passed, so another grant's
    RetireGrant operation cannot retire this one."""
    conditions = request_conditions("RetireGrant", call.params)
    svc.require_allowed(AccessRequest(call.context, "kms:RetireGrant", key, conditions, (grant,)))


async def retire_grant(svc: KmsService, call: Call) -> Response:
    key, grant = await _grant_named(svc, call)
    _check_may_retire(svc, call, key, grant)
    svc.check_dry_run(call)
    await _delete(svc, grant)
    return {}


async def revoke_grant(svc: KmsService, call: Call) -> Response:
    params = call.params
    key = await svc.find_key(call, params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:RevokeGrant", key, request_conditions("RevokeGrant", params))
    grant = await _find_grant(svc, key, params["GrantId"])
    svc.check_dry_run(call)
    await _delete(svc, grant)
    return {}


async def _delete(svc: KmsService, grant: Grant) -> None:
    """Delete `grant`; NotFoundException if another call retired or revoked it since it was found.
    RetireGrant holds no key's lock (its token names the key), and the PostgreSQL store is awaited
    between the finding and the deleting: calls that found one grant at once (on nodes sharing the
    store) each deleted it, and were each answered and logged as the one that did."""
    if not await svc.store.delete_grant(grant):
        raise errors.NotFoundException(f"Grant ID {grant.grant_id} not found")


OPERATIONS: dict[str, Operation] = {
    "CreateGrant": Operation(create_grant),
    "ListGrants": Operation(list_grants, read_only=True),
    "ListRetirableGrants": Operation(list_retirable_grants, read_only=True),
    "RetireGrant": Operation(retire_grant),
    "RevokeGrant": Operation(revoke_grant),
}
