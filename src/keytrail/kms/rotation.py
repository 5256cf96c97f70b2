"""Rotating a key: a new material version becomes current, old versions keep decrypting."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from keytrail.kms import errors, multiregion
from keytrail.kms.keys import Key
from keytrail.kms.material import generate_secret

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["rotate_key"]


async def rotate_key(svc: KmsService, key: Key, rotation_type: str, at: datetime | None = None) -> Key:
    """Add new material (compute, persist), then record the `RotateKey` service event; a
    multi-Region primary's new material reaches its replicas in the same write. `at` is when
    the rotation happens: now, or the due date of a scheduled one the clock has passed."""
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region primary key.")
    when = at or svc.now()
    previous = key.current_material
    material = svc.new_material(await generate_secret(key.key_spec), rotation_type, when)
    rotated = key.rotated(material, when)
    replicas = await multiregion.save_with_replicas(svc, rotated)
    await svc.service_event("RotateKey", rotated, {
        "rotationType": rotation_type,
        "keyOrigin": key.origin.value,
        "previousKeyMaterialId": previous.material_id if previous else None,
        "currentKeyMaterialId": material.material_id,
    }, when)
    await multiregion.announce(svc, replicas)
    return rotated
