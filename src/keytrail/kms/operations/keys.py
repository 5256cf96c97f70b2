"""Key lifecycle: CreateKey, DescribeKey, ListKeys, Enable/DisableKey, UpdateKeyDescription,
ScheduleKeyDeletion, CancelKeyDeletion."""

from __future__ import annotations

import contextlib
import logging
import uuid
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors, multiregion
from keytrail.kms.asymmetric import check_offered_in_region
from keytrail.kms.call_records import cloudtrail_values
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.identifiers import key_arn
from keytrail.kms.importing import check_importable
from keytrail.kms.keys import Key
from keytrail.kms.keystores import key_store_event_data
from keytrail.kms.material import generate_secret
from keytrail.kms.metadata import key_metadata
from keytrail.kms.model import KeySpec, KeyState, KeyUsage, Origin
from keytrail.kms.operations.hsm_keys import as_its_store_leaves_it
from keytrail.kms.operations.managed_keys import ensure_managed_key
from keytrail.kms.paging import dated_position, page_limit, paged
from keytrail.kms.partitions import partition_of
from keytrail.kms.policy import default_policy, validate_key_policy
from keytrail.kms.specs import ALLOWED_USAGES
from keytrail.kms.store import key_position
from keytrail.kms.tags import validate_tags

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService, OriginDiscarder

__all__ = ["KEYS_PER_REGION", "OPERATIONS", "require_key_room"]

log = logging.getLogger(__name__)

KEY_USAGE_REQUIRED = "You must specify a KeyUsage value for all KMS keys except for symmetric encryption keys."
BOTH_SPECS = ("You cannot specify KeySpec and CustomerMasterKeySpec in the same request. "
              "CustomerMasterKeySpec is deprecated.")


def _spec_and_usage(params: dict[str, Any], region: str) -> tuple[KeySpec, KeyUsage]:
    if params.get("KeySpec") and params.get("CustomerMasterKeySpec"):
        # The deprecated member is the same setting under its old name: AWS takes one or the other.
        raise errors.ValidationException(BOTH_SPECS)
    spec = KeySpec(params.get("KeySpec") or params.get("CustomerMasterKeySpec") or "SYMMETRIC_DEFAULT")
    check_offered_in_region("KeySpec", spec, region)
    usage_name = params.get("KeyUsage")
    if usage_name is None and spec is not KeySpec.SYMMETRIC_DEFAULT:
        raise errors.ValidationException(KEY_USAGE_REQUIRED)
    usage = KeyUsage(usage_name or "ENCRYPT_DECRYPT")
    if usage not in ALLOWED_USAGES[spec]:
        raise errors.ValidationException(_usage_refusal(spec, usage))
    return spec, usage


def _usage_refusal(spec: KeySpec, usage: KeyUsage) -> str:
    # AWS words the symmetric default (the spec a caller gets without naming one) apart.
    if spec is KeySpec.SYMMETRIC_DEFAULT:
        return (f"The operation failed because the KeyUsage value of the CMK is {usage}. "
                "To perform this operation, the KeyUsage value must be ENCRYPT_DECRYPT.")
    return f"KeyUsage {usage} is not compatible with KeySpec {spec}"


def _check_store_members(params: dict[str, Any], origin: Origin) -> None:
    """CustomKeyStoreId and XksKeyId say which custom key store a key is made in; with an Origin
    that is no custom key store they were dropped, and a caller who left Origin out got a key in
    keytrail's own store without a word. CreateKey's reference: XksKeyId "is not valid for KMS keys
    with any other Origin value" than EXTERNAL_KEY_STORE; CustomKeyStoreId goes with AWS_CLOUDHSM or
    EXTERNAL_KEY_STORE. AWS's error code for it is not documented: a ValidationException here."""
    if params.get("XksKeyId") is not None and origin is not Origin.EXTERNAL_KEY_STORE:
        raise errors.ValidationException(f"XksKeyId is valid only when Origin is EXTERNAL_KEY_STORE, not {origin}.")
    if params.get("CustomKeyStoreId") is not None and origin not in _CUSTOM_STORE_ORIGINS:
        raise errors.ValidationException(
            f"CustomKeyStoreId is valid only when Origin is AWS_CLOUDHSM or EXTERNAL_KEY_STORE, not {origin}.")


_CUSTOM_STORE_ORIGINS = frozenset({Origin.AWS_CLOUDHSM, Origin.EXTERNAL_KEY_STORE})
# "AWS KMS keys: 100,000" customer managed keys in each Region of an account, whatever their
# spec or state (AWS KMS resource quotas): without it one caller could make keys without end,
# each held in memory by every node and listed by every ListKeys.
KEYS_PER_REGION = 100_000


async def require_key_room(svc: KmsService, account: str, region: str) -> None:
    """LimitExceededException when the account has as many keys in `region` as it may. Calls made
    at once may each see room for one more, as AWS's own count can lag (its quotas are eventually
    consistent): the quota bounds what a node holds, give or take the calls in flight."""
    usage = await svc.store.count_keys(account, region)
    if usage >= KEYS_PER_REGION:
        # AWS's words, as a CreateKey refused on AWS logged them (convox/rack#347)
        raise errors.LimitExceededException(
            f"Key quota for this account in this region is {KEYS_PER_REGION} but the current usage is {usage}.")


def _new_key_id(svc: KmsService, multi_region: bool) -> str:
    if multi_region:
        return "mrk-" + svc.deps.random_bytes(16).hex()
    return str(uuid.UUID(bytes=svc.deps.random_bytes(16), version=4))


async def create_key(svc: KmsService, call: Call) -> Response:
    params, context = call.params, call.context
    spec, usage = _spec_and_usage(params, context.region)
    origin = Origin(params.get("Origin") or "AWS_KMS")
    _check_store_members(params, origin)
    if origin is Origin.EXTERNAL:
        check_importable(spec)  # else a key that stays PendingImport for ever
    tags = validate_tags(params.get("Tags") or [])
    await svc.authorize(call, "kms:CreateKey", None, {
        "kms:KeySpec": spec.value, "kms:KeyUsage": usage.value,
        "kms:CustomerMasterKeySpec": spec.value, "kms:CustomerMasterKeyUsage": usage.value})
    policy = params.get("Policy") or default_policy(context.account, partition_of(context.region))
    multi_region = bool(params.get("MultiRegion"))
    key_id = _new_key_id(svc, multi_region)  # before the checks that need the key's ARN
    arn = key_arn(context.region, context.account, key_id)
    if tags:  # "To use the Tags parameter", kms:TagResource in an IAM policy (CreateKey)
        await svc.authorize_identity(call, "kms:TagResource", arn, exists=False)
    key = Key(
        account=context.account, region=context.region, key_id=key_id,
        creation_date=svc.now(), key_spec=spec, key_usage=usage, origin=origin,
        description=params.get("Description") or "", policy=policy, tags=tuple(tags.items()),
        multi_region=multi_region, primary_region=context.region if multi_region else None,
    )
    if "Policy" in params:  # checked for the key as it will be (its tags, spec …), as a later PutKeyPolicy sees it
        validate_key_policy(policy, context.principal, bypass=bool(params.get("BypassPolicyLockoutSafetyCheck")),
                            key_arn=arn, call=context, now=svc.now(), key=key)
    await require_key_room(svc, context.account, context.region)
    svc.check_dry_run(call)  # before the first material: a dry run must make no key in an HSM either
    async with _origin_lock(svc, key):
        key = await _with_first_material(svc, call, key)
        # Before the write: the record it owes (kms/owed_calls.py) names the key it made.
        call.resource(key.arn)
        metadata = key_metadata(key)
        call.response_elements = {"keyMetadata": cloudtrail_values(metadata)}  # camelCase at every level
        await _save_new_key(svc, key)
    return {"KeyMetadata": metadata}


def _origin_lock(svc: KmsService, key: Key) -> AbstractAsyncContextManager[None]:
    """What the key's origin holds from its first material to its save (OriginLock); nothing for most."""
    lock = svc.origin_locks.get(key.origin)
    return lock(svc, key) if lock is not None else contextlib.nullcontext()


async def _save_new_key(svc: KmsService, key: Key) -> None:
    """Store the new key. If that fails, what its origin made outside the store (an HSM's backing
    key) is removed: it would stay in the HSM with nothing pointing to it."""
    try:
        await svc.store.put_key(key)
    except BaseException:
        discard = svc.origin_discarders.get(key.origin)
        if discard is not None:
            await _discard_unsaved(svc, key, discard)
        raise


async def _discard_unsaved(svc: KmsService, key: Key, discard: OriginDiscarder) -> None:
    """`discard` what the key's origin made, unless the store holds the key after all: a write whose
    answer was lost (a connection cut during COMMIT) may have been committed, and removing the
    backing key of a saved key would lose all it protects. Never raises: the store's error stands."""
    try:
        saved = await svc.store.get_key(key.account, key.region, key.key_id) is not None
    except Exception as exc:
        log.error("CreateKey %s: the key store failed (%s) and cannot tell whether it saved the key; what its "
                  "origin %s made outside the store is kept (docs/custom-key-stores.md)", key.arn,
                  type(exc).__name__, key.origin.value)
        return
    if not saved:
        try:
            await discard(svc, key)
        except Exception:
            log.exception("CreateKey %s: removing what origin %s made for it failed", key.arn, key.origin.value)


async def _with_first_material(svc: KmsService, call: Call, key: Key) -> Key:
    if key.origin is Origin.EXTERNAL:
        return replace(key, state=KeyState.PENDING_IMPORT)
    if key.origin is not Origin.AWS_KMS:
        creator = svc.origin_creators.get(key.origin)
        if creator is None:
            raise errors.UnsupportedOperationException(f"Origin {key.origin} is not supported.")
        return await creator(svc, call, key)
    secret = await generate_secret(key.key_spec)
    return replace(key, materials=(svc.new_material(secret),))


async def describe_key(svc: KmsService, call: Call) -> Response:
    await ensure_managed_key(svc, call, call.params["KeyId"])  # alias/aws/s3 with no key yet: made now
    key = await svc.find_key(call, call.params["KeyId"])
    await svc.authorize(call, "kms:DescribeKey", key)
    return {"KeyMetadata": key_metadata(key)}


async def list_keys(svc: KmsService, call: Call) -> Response:
    """ListKeys, one page read from the store: an account may hold 100,000 keys in a Region."""
    await svc.authorize(call, "kms:ListKeys", None)
    account, region = call.context.account, call.context.region
    listing = f"ListKeys {account} {region}"
    limit = page_limit(call.params, 100)  # ListKeys: Limit may be up to 1000, but without one a page holds 100 keys.
    after = dated_position(call.params, listing)
    keys = await svc.store.list_keys_page(account, region, after, limit + 1)
    chunk, paging = paged(keys, limit, key_position, listing)
    return {"Keys": [{"KeyId": k.key_id, "KeyArn": k.arn} for k in chunk], **paging}


async def _set_enabled(svc: KmsService, call: Call, action: str, state: KeyState) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, action, key)
    call.log_key_id(key.arn)  # recorded only if the call succeeds
    if key.state is KeyState.UNAVAILABLE:
        # Key states table: the call succeeds on a key whose custom key store is disconnected,
        # and the state it asks for is the one the key gets back when the store reconnects.
        await svc.store.put_key(replace(key, extra={**key.extra, "state_when_connected": state.value}))
        return {}
    if key.state not in (KeyState.ENABLED, KeyState.DISABLED):
        raise svc.invalid_state(key)
    if key.state is not state:
        changed = replace(key, state=state)
        await svc.store.put_key(changed.rotation_resumed(svc.now()) if changed.enabled else changed)
    return {}


async def enable_key(svc: KmsService, call: Call) -> Response:
    return await _set_enabled(svc, call, "kms:EnableKey", KeyState.ENABLED)


async def disable_key(svc: KmsService, call: Call) -> Response:
    return await _set_enabled(svc, call, "kms:DisableKey", KeyState.DISABLED)


async def update_key_description(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:UpdateKeyDescription", key)
    svc.require_not_pending_deletion(key)
    await svc.store.put_key(replace(key, description=call.params["Description"]))
    return {}


async def schedule_key_deletion(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    window = int(call.params.get("PendingWindowInDays", 30))
    await svc.authorize(call, "kms:ScheduleKeyDeletion", key,
                        {"kms:ScheduleKeyDeletionPendingWindowInDays": window})
    if not 7 <= window <= 30:
        raise errors.ValidationException(
            f"1 validation error detected: Value '{window}' at 'pendingWindowInDays' failed to satisfy "
            "constraint: Member must have value between 7 and 30"
        )
    svc.require_not_pending_deletion(key)  # PendingReplicaDeletion too: scheduled already
    call.additional_event_data.update(key_store_event_data(key))  # a key in a CloudHSM key store
    key = multiregion.scheduled_deletion(key, svc.now(), window)
    response: Response = {"KeyId": key.arn, "KeyState": key.state.value, "PendingWindowInDays": window}
    if key.deletion_date is not None:  # absent while a primary waits for its replicas' deletion
        response["DeletionDate"] = key.deletion_date
    # The response as CloudTrail logs it, so deletionDate is left out with it (ct-schedule-key-deletion);
    # set before the write: the record it owes (kms/owed_calls.py) says the same.
    call.response_elements = cloudtrail_values(response)
    await svc.store.put_key(key)
    return response


async def cancel_key_deletion(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:CancelKeyDeletion", key)
    if key.state not in (KeyState.PENDING_DELETION, KeyState.PENDING_REPLICA_DELETION):
        raise errors.KMSInvalidStateException(f"{key.arn} is not pending deletion.")
    call.response_elements = {"keyId": key.arn}  # before the write, for the record it owes
    cancelled = key.with_state(_state_after_cancelled_deletion(key))
    await svc.store.put_key(await as_its_store_leaves_it(svc, cancelled))  # Unavailable in a disconnected store
    return {"KeyId": key.arn}


def _state_after_cancelled_deletion(key: Key) -> KeyState:
    # CancelKeyDeletion leaves a key Disabled; one of EXTERNAL origin whose material is gone
    # (never imported, deleted or expired) stays unusable until an import: PendingImport.
    if key.origin is Origin.EXTERNAL and (not key.materials or key.missing_material):
        return KeyState.PENDING_IMPORT
    return KeyState.DISABLED


OPERATIONS: dict[str, Operation] = {
    "CreateKey": Operation(create_key),
    # readOnly, as CloudTrail marks it, but it writes the AWS managed key it makes (its record is owed)
    "DescribeKey": Operation(describe_key, read_only=True, writes=True),
    "ListKeys": Operation(list_keys, read_only=True),
    "EnableKey": Operation(enable_key),
    "DisableKey": Operation(disable_key),
    "UpdateKeyDescription": Operation(update_key_description),
    "ScheduleKeyDeletion": Operation(schedule_key_deletion),
    "CancelKeyDeletion": Operation(cancel_key_deletion),
}
