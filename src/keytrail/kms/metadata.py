"""DescribeKey's KeyMetadata for a key: only the members that apply to it, as AWS emits them."""

from __future__ import annotations

from typing import Any

from keytrail.kms.identifiers import key_arn
from keytrail.kms.importing import expiration_of
from keytrail.kms.keys import Key
from keytrail.kms.keystores import CLUSTER_ID
from keytrail.kms.model import KeySpec, KeyState, KeyUsage, Origin
from keytrail.kms.specs import algorithms_for

__all__ = ["key_metadata"]


def key_metadata(key: Key) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "AWSAccountId": key.account,
        "KeyId": key.key_id,
        "Arn": key.arn,
        "CreationDate": key.creation_date,
        "Enabled": key.enabled,
        "Description": key.description,
        "KeyUsage": key.key_usage.value,
        "KeyState": key.state.value,
        "Origin": key.origin.value,
        "KeyManager": key.key_manager.value,
        "CustomerMasterKeySpec": key.key_spec.value,
        "KeySpec": key.key_spec.value,
        "MultiRegion": key.multi_region,
    }
    if key.deletion_date is not None:
        meta["DeletionDate"] = key.deletion_date
    if key.state is KeyState.PENDING_REPLICA_DELETION and key.pending_window_days:
        meta["PendingDeletionWindowInDays"] = key.pending_window_days
    if key.origin is Origin.EXTERNAL:
        model, valid_to = expiration_of(key)
        if model:
            meta["ExpirationModel"] = model
        if valid_to is not None:
            meta["ValidTo"] = valid_to
    if key.custom_key_store_id:
        meta["CustomKeyStoreId"] = key.custom_key_store_id
        if CLUSTER_ID in key.extra:
            meta["CloudHsmClusterId"] = key.extra[CLUSTER_ID]
    meta.update(algorithms_for(key.key_spec, key.key_usage))
    if key.multi_region:
        meta["MultiRegionConfiguration"] = _multi_region_configuration(key)
    symmetric = key.key_spec is KeySpec.SYMMETRIC_DEFAULT and key.key_usage is KeyUsage.ENCRYPT_DECRYPT
    # KeyMetadata: present for the origins whose keys rotate, AWS_KMS and EXTERNAL; never for a key in
    # a CloudHSM key store, whose one backing key never rotates.
    if symmetric and key.origin in (Origin.AWS_KMS, Origin.EXTERNAL) and key.current_material is not None:
        meta["CurrentKeyMaterialId"] = key.current_material.material_id
    return meta


def _multi_region_configuration(key: Key) -> dict[str, Any]:
    primary_region = key.primary_region or key.region
    def arn_in(region: str) -> str:
        return key_arn(region, key.account, key.key_id)
    return {
        "MultiRegionKeyType": "PRIMARY" if primary_region == key.region else "REPLICA",
        "PrimaryKey": {"Arn": arn_in(primary_region), "Region": primary_region},
        "ReplicaKeys": [{"Arn": arn_in(r), "Region": r} for r in key.replica_regions],
    }
