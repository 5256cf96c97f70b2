"""Rotating a key: a new material version becomes current, old versions keep decrypting."""

from __future__ import annotations

from typing import TYPE_CHECKING

from keytrail.kms.keys import Key
from keytrail.kms.material import generate_secret

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["rotate_key"]


async def rotate_key(svc: KmsService, key: Key, rotation_type: str) -> Key:
    """Add new material (compute, persist), then record the `RotateKey` service event."""
    previous = key.current_material
    material = svc.new_material(await generate_secret(key.key_spec), rotation_type)
    rotated = key.rotated(material, svc.now())
    await svc.store.put_key(rotated)
    await svc.service_event("RotateKey", rotated, {
        "rotationType": rotation_type,
        "keyOrigin": key.origin.value,
        "previousKeyMaterialId": previous.material_id if previous else None,
        "currentKeyMaterialId": material.material_id,
    })
    return rotated
