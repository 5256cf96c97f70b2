"""Key-state rules of the key lifecycle operations (AWS developer guide, "Key states of AWS KMS keys")."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.model import KeyState, Origin
from keytrail.kms.operations.rotation import MAX_ON_DEMAND_ROTATIONS
from tests.support.allow_all import ACCOUNT, alice, allow_all_service


async def test_enable_and_disable_an_unavailable_key_succeed_and_apply_once_it_is_available(tmp_path: Path) -> None:
    # Key states table, note [12]: on an Unavailable key (its custom key store disconnected)
    # EnableKey and DisableKey succeed, "but the key state ... does not change until it becomes
    # available".
    store, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None
    await store.put_key(replace(key, state=KeyState.UNAVAILABLE, extra={"state_when_connected": "Enabled"}))
    assert await service.execute("DisableKey", alice(), {"KeyId": key_id}) == {}
    after = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert after is not None and after.state is KeyState.UNAVAILABLE
    assert after.extra["state_when_connected"] == "Disabled"
    await service.execute("EnableKey", alice(), {"KeyId": key_id})
    again = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert again is not None and again.extra["state_when_connected"] == "Enabled"


async def test_rotation_status_of_a_key_in_a_custom_key_store_names_its_origin(tmp_path: Path) -> None:
    # Key states table, note [7]: GetKeyRotationStatus of a key whose material KMS did not generate
    # (a custom key store's) is UnsupportedOperationException naming the origin, in any state.
    store, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None
    await store.put_key(replace(key, origin=Origin.AWS_CLOUDHSM, custom_key_store_id="cks-1234567890abcdef0"))
    with pytest.raises(errors.UnsupportedOperationException) as caught:
        await service.execute("GetKeyRotationStatus", alice(), {"KeyId": key_id})
    assert caught.value.message == f"{key.arn} origin is AWS_CLOUDHSM which is not valid for this operation."


# A multi-Region primary scheduled for deletion while it still has replicas waits in
# PendingReplicaDeletion: it is scheduled for deletion (KeyMetadata.PendingDeletionWindowInDays),
# so the management calls a key pending deletion refuses are refused to it too, in its own words.
_REFUSED_WHILE_DELETING = {
    "TagResource": {"Tags": [{"TagKey": "team", "TagValue": "a"}]},
    "UntagResource": {"TagKeys": ["team"]},
    "UpdateKeyDescription": {"Description": "doomed"},
    "CreateGrant": {"GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:user/bob", "Operations": ["Decrypt"]},
}


@pytest.mark.parametrize("operation", sorted(_REFUSED_WHILE_DELETING))
async def test_a_primary_pending_replica_deletion_refuses_what_a_key_pending_deletion_refuses(
    tmp_path: Path, operation: str,
) -> None:
    store, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["KeyId"]
    await service.execute("ReplicateKey", alice(), {"KeyId": key_id, "ReplicaRegion": "eu-west-1"})
    scheduled = await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": key_id, "PendingWindowInDays": 7})
    assert scheduled["KeyState"] == "PendingReplicaDeletion"
    before = await store.get_key(ACCOUNT, "us-east-1", key_id)
    with pytest.raises(errors.KMSInvalidStateException) as caught:
        await service.execute(operation, alice(), {"KeyId": key_id, **_REFUSED_WHILE_DELETING[operation]})
    assert before is not None and caught.value.message == f"{before.arn} is pending replica deletion."
    assert await store.get_key(ACCOUNT, "us-east-1", key_id) == before


async def test_a_primary_pending_replica_deletion_reports_its_rotation_off_until_cancelled(tmp_path: Path) -> None:
    """It never rotates while it waits (only Enabled keys do): its status said true, with a date."""
    _, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["KeyId"]
    await service.execute("EnableKeyRotation", alice(), {"KeyId": key_id})
    await service.execute("ReplicateKey", alice(), {"KeyId": key_id, "ReplicaRegion": "eu-west-1"})
    await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": key_id, "PendingWindowInDays": 7})
    status = await service.execute("GetKeyRotationStatus", alice(), {"KeyId": key_id})
    assert status["KeyRotationEnabled"] is False and "NextRotationDate" not in status
    await service.execute("CancelKeyDeletion", alice(), {"KeyId": key_id})
    status = await service.execute("GetKeyRotationStatus", alice(), {"KeyId": key_id})
    assert status["KeyRotationEnabled"] is True


@pytest.mark.parametrize("operation", ["CreateAlias", "UpdateAlias"])
async def test_an_alias_cannot_name_a_primary_pending_replica_deletion(tmp_path: Path, operation: str) -> None:
    _, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["KeyId"]
    other = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": other})
    await service.execute("ReplicateKey", alice(), {"KeyId": key_id, "ReplicaRegion": "eu-west-1"})
    await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": key_id, "PendingWindowInDays": 7})
    name = "alias/new" if operation == "CreateAlias" else "alias/app"
    with pytest.raises(errors.KMSInvalidStateException) as caught:
        await service.execute(operation, alice(), {"AliasName": name, "TargetKeyId": key_id})
    assert caught.value.message.endswith(f"key/{key_id} is pending replica deletion.")


async def test_on_demand_rotations_of_a_multi_region_key_count_in_every_copy(tmp_path: Path) -> None:
    # On-demand rotation is performed on the primary and its material reaches every replica, whose
    # ListKeyRotations then lists it as theirs: the limit counts them wherever the primary moves
    # (UpdatePrimaryRegion), for replicas made before and after those rotations alike.
    _, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["KeyId"]
    await service.execute("ReplicateKey", alice(), {"KeyId": key_id, "ReplicaRegion": "eu-west-1"})
    for _ in range(MAX_ON_DEMAND_ROTATIONS):
        await service.execute("RotateKeyOnDemand", alice(), {"KeyId": key_id})
    await service.execute("ReplicateKey", alice(), {"KeyId": key_id, "ReplicaRegion": "ap-southeast-2"})
    primary = "us-east-1"
    for region in ("eu-west-1", "ap-southeast-2"):
        in_region = replace(alice(), region=region)
        await service.execute("DescribeKey", in_region, {"KeyId": key_id})  # the replica leaves Creating
        await service.execute("UpdatePrimaryRegion", replace(alice(), region=primary),
                              {"KeyId": key_id, "PrimaryRegion": region})
        primary = region
        with pytest.raises(errors.LimitExceededException):
            await service.execute("RotateKeyOnDemand", in_region, {"KeyId": key_id})
