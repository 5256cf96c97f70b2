"""Multi-Region keys: ReplicateKey and UpdatePrimaryRegion."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors, multiregion
from keytrail.kms.call_records import cloudtrail_values
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.identifiers import key_arn
from keytrail.kms.keys import Key
from keytrail.kms.metadata import key_metadata
from keytrail.kms.model import CallRecord, KeyState
from keytrail.kms.operations.keys import require_key_room
from keytrail.kms.partitions import partition_of
from keytrail.kms.policy import default_policy, validate_key_policy
from keytrail.kms.tags import validate_tags

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

# userIdentity.invokedBy of the entries KMS writes in another Region for the caller: ReplicateKey's
# CreateKey in the replica's, UpdatePrimaryRegion's in the new primary's (ct-update-primary-region).
KMS_SERVICE = "kms.amazonaws.com"


def _conditions(key: Key, **extra: str) -> dict[str, Any]:
    return {"kms:MultiRegion": key.multi_region, "kms:MultiRegionKeyType": multiregion.key_type(key), **extra}


def _replica_conditions(primary: Key) -> dict[str, Any]:
    """The CreateKey condition keys of the replica ReplicateKey creates (not of its parameters)."""
    spec, usage = str(primary.key_spec), str(primary.key_usage)
    return {"kms:KeySpec": spec, "kms:KeyUsage": usage, "kms:CustomerMasterKeySpec": spec,
            "kms:CustomerMasterKeyUsage": usage, "kms:KeyOrigin": str(primary.origin), "kms:MultiRegion": True,
            "kms:MultiRegionKeyType": "REPLICA"}


def _require_primary(key: Key) -> None:
    if not key.multi_region:
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region key.")
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region primary key.")


def _require_replicable_state(svc: KmsService, key: Key) -> None:
    if key.state is KeyState.DISABLED:
        raise errors.DisabledException(f"{key.arn} is disabled.")
    if key.state not in (KeyState.ENABLED, KeyState.PENDING_IMPORT):
        raise svc.invalid_state(key)


def _require_same_partition(primary: Key, region: str) -> None:
    """ReplicateKey: a replica lives "in a different Region of the same AWS partition"."""
    if partition_of(region) != partition_of(primary.region):
        raise errors.UnsupportedOperationException(
            f"Replica region {region} is not in the partition ({partition_of(primary.region)}) of the primary "
            f"key's region {primary.region}; multi-Region keys cannot be replicated across partitions."
        )


def _new_replica(
    svc: KmsService, call: Call, primary: Key, region: str, description: str, tags: tuple[tuple[str, str], ...]
) -> Key:
    """The replica ReplicateKey makes, its Policy checked as CreateKey's is: the lockout safety check
    asks whether the caller may make "a subsequent PutKeyPolicy request on the KMS key" (API
    reference, ReplicateKey), a request on the replica, in its Region, so the policy is tried with
    the replica's condition keys (kms:MultiRegionKeyType REPLICA, its spec, its Tags…) and Region."""
    params = call.params
    given = "Policy" in params
    policy = str(params["Policy"]) if given else default_policy(call.context.account, partition_of(region))
    replica = multiregion.replica_of(primary, region, svc.now(), policy, description, tags)
    if given:
        validate_key_policy(
            policy, call.context.principal, bypass=bool(params.get("BypassPolicyLockoutSafetyCheck")),
            key_arn=replica.arn, call=replace(call.context, region=region), now=svc.now(), key=replica,
        )
    return replica


async def _authorize_in_replica_region(svc: KmsService, call: Call, primary: Key, region: str) -> None:
    """What AWS also asks of ReplicateKey in the replica's Region, where IAM policies decide:
    kms:CreateKey, for the key it creates (a multi-Region replica of the primary's spec, usage and
    origin), and kms:TagResource for the Tags parameter."""
    in_replica_region = Call(replace(call.context, region=region), call.params)
    await svc.authorize(in_replica_region, "kms:CreateKey", None, _replica_conditions(primary))
    if call.params.get("Tags"):
        await svc.authorize_identity(in_replica_region, "kms:TagResource",
                                     key_arn(region, primary.account, primary.key_id), exists=False)


async def replicate_key(svc: KmsService, call: Call) -> Response:
    params = call.params
    primary = await svc.find_key(call, params["KeyId"], allow_alias=False)
    region = params["ReplicaRegion"]
    await svc.authorize(call, "kms:ReplicateKey", primary, _conditions(primary, **{"kms:ReplicaRegion": region}))
    _require_same_partition(primary, region)
    await _authorize_in_replica_region(svc, call, primary, region)
    _require_primary(primary)
    _require_replicable_state(svc, primary)
    if region == primary.region or region in primary.replica_regions:
        raise errors.AlreadyExistsException(f"Key '{key_arn(region, primary.account, primary.key_id)}' already exists")
    tags = tuple(validate_tags(params.get("Tags") or []).items())
    await require_key_room(svc, primary.account, region)  # the replica is a key of its Region
    description = params.get("Description", "")  # not a shared property: AWS defaults it to empty
    replica = _new_replica(svc, call, primary, region, description, tags)
    siblings = [primary, *await multiregion.copies(svc, primary)]
    siblings = [k for k in _with_region(siblings, region) if k.region != region]
    metadata = key_metadata(replica)
    # ct-replicate-key: the entry (in the primary's Region) lists only the primary key among its
    # resources; the replica is named by responseElements, with the policy it was given. Set before
    # the write: the record it owes (kms/owed_calls.py) names the replica.
    call.response_elements = {"replicaKeyMetadata": cloudtrail_values(metadata), "replicaPolicy": replica.policy}
    # One write: a replica its primary does not list would never get the primary's rotations. It owes
    # the CreateKey entry KMS writes in the replica's Region too (ct-replicate-key: "a ReplicateKey
    # operation and a CreateKey operation").
    created = _entry_in_replica_region(svc, call, replica, metadata)
    await multiregion.put_announced(svc, [replica, *siblings], siblings, first=[created], by_call=True)
    return {"ReplicaKeyMetadata": metadata, "ReplicaPolicy": replica.policy,
            "ReplicaTags": [{"TagKey": k, "TagValue": v} for k, v in replica.tags]}


def _entry_in_replica_region(svc: KmsService, call: Call, replica: Key, metadata: dict[str, Any]) -> CallRecord:
    """ReplicateKey's CreateKey, in the replica's Region: the caller's identity invoked by KMS (as
    UpdatePrimaryRegion's entry in the new primary's Region), the same requestID, the replica's
    properties as a CreateKey entry logs them (ct-createkey) and its metadata as the response."""
    spec = str(replica.key_spec)
    parameters = {
        "description": replica.description, "origin": str(replica.origin),
        "bypassPolicyLockoutSafetyCheck": bool(call.params.get("BypassPolicyLockoutSafetyCheck")),
        "customerMasterKeySpec": spec, "keySpec": spec, "keyUsage": str(replica.key_usage), "multiRegion": True,
    }
    return CallRecord(
        event_id=svc.deps.new_id(), event_name="CreateKey", event_time=svc.now(), region=replica.region,
        account=replica.account, context=call.context, request_parameters=parameters,
        response_elements={"keyMetadata": cloudtrail_values(metadata)}, resources=(replica.arn,),
        invoked_by=KMS_SERVICE,
    )


def _with_region(keys: list[Key], region: str) -> list[Key]:
    return [replace(k, replica_regions=(*k.replica_regions, region)) for k in keys]


async def update_primary_region(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    region = call.params["PrimaryRegion"]
    await svc.authorize(
        call, "kms:UpdatePrimaryRegion", key, _conditions(key, **{"kms:PrimaryRegion": region})
    )
    _require_primary(key)
    svc.require_not_pending_deletion(key)
    if region == key.region:
        # Nothing to move, but a key that could not hand over the primary is refused as it would
        # be for any other Region ("Both keys must be enabled").
        _require_enabled(svc, key)
        return {}
    replica = (
        await svc.store.get_key(key.account, region, key.key_id) if region in key.replica_regions else None
    )
    if replica is None:
        raise errors.NotFoundException(f"Key '{key_arn(region, key.account, key.key_id)}' does not exist")
    # AWS also asks for kms:UpdatePrimaryRegion on the replica, in its own Region and key policy.
    await svc.authorize(
        Call(replace(call.context, region=region), call.params), "kms:UpdatePrimaryRegion", replica,
        _conditions(replica, **{"kms:PrimaryRegion": region}),
    )
    for copy in (key, replica):
        _require_enabled(svc, copy)
    # ct-update-primary-region: two entries. This call's, in its own Region, names the old primary
    # (resources, and responseElements.keyId as entries since December 2022 do); KMS writes the
    # other in the new primary's Region. Both are owed by the write that moves the primary.
    call.log_key_id(key.arn)
    await multiregion.move_primary(svc, key, region, first=[_entry_in_new_primary_region(svc, call, replica)])
    return {}


def _require_enabled(svc: KmsService, copy: Key) -> None:
    # "Both the primary key and the replica key must be in the Enabled key state when the
    # operation starts" (multi-region-update): a copy still PendingImport (its imported material
    # not yet there, deleted or expired) cannot become, or hand over, the primary either.
    if copy.state is KeyState.DISABLED:
        raise errors.DisabledException(f"{copy.arn} is disabled.")
    if copy.state is not KeyState.ENABLED:
        raise svc.invalid_state(copy)


def _entry_in_new_primary_region(svc: KmsService, call: Call, replica: Key) -> CallRecord:
    """UpdatePrimaryRegion's entry in the Region of the replica that becomes the primary: the
    caller's identity, invoked by KMS, the same requestID, the key named by its ARN in that Region,
    and no resources (AWS's example lists none and "doesn't identify the previous primary Region")."""
    return CallRecord(
        event_id=svc.deps.new_id(), event_name="UpdatePrimaryRegion", event_time=svc.now(), region=replica.region,
        account=replica.account, context=call.context,
        request_parameters={"keyId": replica.arn, "primaryRegion": replica.region},
        response_elements={"keyId": replica.arn}, invoked_by=KMS_SERVICE,
    )


OPERATIONS: dict[str, Operation] = {
    "ReplicateKey": Operation(replicate_key),
    "UpdatePrimaryRegion": Operation(update_primary_region),
}
