"""Rotating a key: a new material version becomes current, old versions keep decrypting."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from keytrail.kms import errors, multiregion
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.material import generate_secret

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["rotate_key", "rotate_to_imported"]


async def rotate_key(svc: KmsService, key: Key, rotation_type: str, at: datetime | None = None) -> Key:
    """Add new material (compute, persist), then record the `RotateKey` service event; a
    multi-Region primary's new material reaches its replicas in the same write. `at` is when
    the rotation happens: now, or the due date of a scheduled one the clock has passed."""
    _require_primary(key)
    when = at or svc.now()
    material = svc.new_material(await generate_secret(key.key_spec), rotation_type, when)
    rotated = key.rotated(material, when)
    replicas = await multiregion.save_with_replicas(svc, rotated)
    await _record_rotation(svc, key, rotated, material, when)
    await multiregion.announce(svc, replicas)
    return rotated


async def rotate_to_imported(svc: KmsService, key: Key) -> Key:
    """RotateKeyOnDemand of a key of imported material: the material imported with ImportType
    NEW_KEY_MATERIAL (PENDING_ROTATION) becomes current; the one before it keeps decrypting."""
    _require_primary(key)
    pending = key.pending_material
    if pending is None:
        raise errors.UnsupportedOperationException(
            f"{key.arn} has no key material in PENDING_ROTATION state: import new key material "
            "(ImportKeyMaterial with ImportType NEW_KEY_MATERIAL) before rotating it on demand."
        )
    when = svc.now()
    current = replace(pending, pending=False, rotation_type="ON_DEMAND", created=when)
    others = replace(key, materials=tuple(m for m in key.materials if m is not pending))
    rotated = others.rotated(current, when)
    await svc.store.put_key(rotated)  # single-Region: ImportKeyMaterial refuses new material for the others
    await _record_rotation(svc, key, rotated, current, when)
    return rotated


def _require_primary(key: Key) -> None:
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region primary key.")


async def _record_rotation(svc: KmsService, before: Key, after: Key, current: KeyMaterial, when: datetime) -> None:
    """The `RotateKey` service event (ct-rotatekey): which material was current, which is now."""
    previous = before.current_material
    await svc.service_event("RotateKey", after, {
        "rotationType": current.rotation_type,
        "keyOrigin": before.origin.value,
        "previousKeyMaterialId": previous.material_id if previous else None,
        "currentKeyMaterialId": current.material_id,
    }, when)
