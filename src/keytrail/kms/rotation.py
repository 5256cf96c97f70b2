"""Rotating a key: a new material version becomes current, old versions keep decrypting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms import errors, multiregion
from keytrail.kms.keys import Key
from keytrail.kms.material import generate_secret

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["rotate_key"]


async def rotate_key(svc: KmsService, key: Key, rotation_type: str) -> Key:
    """Add new material (compute, persist), then record the `RotateKey` service event; a
    multi-Region primary's new material reaches its replicas in the same write."""
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region primary key.")
    previous = key.current_material
    material = svc.new_material(await generate_secret(key.key_spec), rotation_type)
    rotated = key.rotated(material, svc.now())
    replicas = await multiregion.save_with_replicas(svc, rotated)
    await svc.service_event("RotateKey", rotated, {
        "rotationType": rotation_type,
        "keyOrigin": key.origin.value,
        "previousKeyMaterialId": previous.material_id if previous else None,
        "currentKeyMaterialId": material.material_id,
    })
    await multiregion.announce(svc, replicas)
    return rotated
