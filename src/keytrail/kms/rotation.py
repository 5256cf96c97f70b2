"""Rotating a key: a new material version becomes current, old versions keep decrypting."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from keytrail.kms import errors, multiregion, service_events
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.material import generate_secret

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["holds_imported", "require_primary_or_single_region", "rotate_key", "rotate_to_imported"]


async def rotate_key(svc: KmsService, key: Key, rotation_type: str, at: datetime | None = None) -> Key:
    """Add new material and its `RotateKey` service event (compute, persist), then record it; a
    multi-Region primary's new material reaches its replicas in the same write. `at` is when
    the rotation happens: now, or the due date of a scheduled one the clock has passed. An
    ON_DEMAND rotation is a call's own change (`_write_and_announce`)."""
    require_primary_or_single_region(key)
    when = at or svc.now()
    material = svc.new_material(await generate_secret(key.key_spec), rotation_type, when)
    rotated = _owing_rotation(svc, key, key.rotated(material, when), material, when)
    replicas = await multiregion.rotation_copies(svc, rotated)
    return await _write_and_announce(svc, rotated, replicas, by_call=rotation_type == "ON_DEMAND")


async def rotate_to_imported(svc: KmsService, key: Key) -> Key:
    """RotateKeyOnDemand of a key of imported material: the material imported with ImportType
    NEW_KEY_MATERIAL (PENDING_ROTATION) becomes current; the one before it keeps decrypting. A
    multi-Region primary rotates once every replica holds that material too, and they with it."""
    require_primary_or_single_region(key)
    pending = key.pending_material
    if pending is None:
        raise errors.UnsupportedOperationException(
            f"{key.arn} has no key material in PENDING_ROTATION state: import new key material "
            "(ImportKeyMaterial with ImportType NEW_KEY_MATERIAL) before rotating it on demand."
        )
    replicas = await multiregion.copies(svc, key) if multiregion.is_primary(key) else []
    missing = [r.arn for r in replicas if not holds_imported(r, pending.material_id)]
    if missing:
        raise errors.UnsupportedOperationException(
            f"Key material {pending.material_id} of {key.arn} is in PENDING_MULTI_REGION_IMPORT_AND_ROTATION "
            f"state: import it into {', '.join(missing)} (ImportType EXISTING_KEY_MATERIAL) before rotating."
        )
    when = svc.now()
    promoted = _promoted(key, pending.material_id, when)
    rotated = _owing_rotation(svc, key, promoted, promoted.materials[-1], when)  # `rotated` appends it
    copies = [_promoted(r, pending.material_id, when) for r in replicas]
    return await _write_and_announce(svc, rotated, copies, by_call=True)


async def _write_and_announce(svc: KmsService, rotated: Key, copies: list[Key], *, by_call: bool) -> Key:
    """Write the rotation with its copies, then record its `RotateKey` event (and after it the
    copies' SynchronizeMultiRegionKey records); the key as stored. A call's own rotation
    (`by_call`: RotateKeyOnDemand) stands once written, whichever of them the spool refuses: the
    key still owes its event, for the next tick or call finding the key (kms/owed_calls.py)."""
    async with multiregion.announced(svc, copies, by_call=by_call) as written:  # after the RotateKey, as before
        await svc.store.put_keys([rotated, *copies])
        written.done = True
        rotated = await service_events.record_owed(svc, rotated)
    return rotated


def holds_imported(key: Key, material_id: str) -> bool:
    """True when `key` holds the imported bytes of material `material_id`."""
    return any(m.material_id == material_id and m.imported for m in key.materials)


def _promoted(key: Key, material_id: str, when: datetime) -> Key:
    """`key` with material `material_id` (pending rotation) current, rotated on demand at `when`."""
    pending = next(m for m in key.materials if m.material_id == material_id)
    current = replace(pending, pending=False, rotation_type="ON_DEMAND", created=when)
    return replace(key, materials=tuple(m for m in key.materials if m is not pending)).rotated(current, when)


def require_primary_or_single_region(key: Key) -> None:
    """Multi-Region keys share their rotation: "To enable or disable automatic rotation of a set of
    related multi-Region keys, set the property on the primary key" (EnableKeyRotation), and
    on-demand rotation is invoked "on the primary Region key" (RotateKeyOnDemand). A replica's own
    setting would never reach the primary and be overwritten by the primary's next change."""
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(f"{key.arn} is not a multi-region primary key.")


def _owing_rotation(svc: KmsService, before: Key, after: Key, current: KeyMaterial, when: datetime) -> Key:
    """`after` owing its `RotateKey` service event (ct-rotatekey): which material was current,
    which is now, and the key (its id, last, as AWS's entries name it). Written with the rotation,
    so a refused record or a crash cannot lose it."""
    previous = before.current_material
    return service_events.with_event(after, svc.deps.new_id(), "RotateKey", {
        "rotationType": current.rotation_type,
        "keyOrigin": before.origin.value,
        "previousKeyMaterialId": previous.material_id if previous else None,
        "currentKeyMaterialId": current.material_id,
        "keyId": before.key_id,
    }, when)
