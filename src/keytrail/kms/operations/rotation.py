"""Rotation: Enable/DisableKeyRotation, GetKeyRotationStatus, RotateKeyOnDemand, ListKeyRotations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from keytrail.kms import errors, multiregion
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.model import SCHEDULED_FOR_DELETION, KeySpec, Origin
from keytrail.kms.paging import page
from keytrail.kms.rotation import holds_imported, require_primary_or_single_region, rotate_key, rotate_to_imported

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["MAX_ON_DEMAND_ROTATIONS", "OPERATIONS"]

# "You can perform on-demand key rotation a maximum of 25 times per KMS key" (AWS's developer guide
# and botocore's RotateKeyOnDemand documentation since on-demand rotation of imported material came
# in; it was 10 before).
MAX_ON_DEMAND_ROTATIONS = 25


async def _rotatable_key(
    svc: KmsService, call: Call, action: str, conditions: dict[str, Any] | None = None, *, imported: bool = False,
) -> Key:
    """The key to rotate, or to set automatic rotation of; `imported`: keys of imported material
    may be rotated too (on demand, to material the caller imported)."""
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, action, key, conditions)
    if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
        raise errors.UnsupportedOperationException("")  # AWS's answer has no message (kms-anchors §24)
    if key.custom_key_store_id:  # never rotated, on demand either: answered as GetKeyRotationStatus does
        _require_generated_material(key)
    require_primary_or_single_region(key)
    if not imported:
        _require_generated_material(key)
    svc.require_usable(key)
    return key


def _require_generated_material(key: Key) -> None:
    # AWS key states table (notes [6] and [7] of Enable/DisableKeyRotation and GetKeyRotationStatus):
    # a key of imported material (even one PendingImport) or of a custom key store answers with
    # its origin, before any key-state error; KMS cannot rotate automatically material it did not
    # generate.
    if key.origin is not Origin.AWS_KMS:
        raise errors.UnsupportedOperationException(
            f"{key.arn} origin is {key.origin} which is not valid for this operation."
        )


async def enable_key_rotation(svc: KmsService, call: Call) -> Response:
    period = call.params.get("RotationPeriodInDays")
    key = await _rotatable_key(svc, call, "kms:EnableKeyRotation",
                               {"kms:RotationPeriodInDays": period} if period else None)
    call.log_key_id(key.arn)  # ct-enablekeyrotation; DisableKeyRotation's entries still log null. Before the write
    await _set_rotation(svc, key.with_rotation(True, svc.now(), period))
    return {}


async def disable_key_rotation(svc: KmsService, call: Call) -> Response:
    key = await _rotatable_key(svc, call, "kms:DisableKeyRotation")
    await _set_rotation(svc, key.with_rotation(False, svc.now()))
    return {}


async def _set_rotation(svc: KmsService, key: Key) -> None:
    """Persist the rotation settings; a multi-Region primary's replicas share them."""
    await multiregion.save_with_replicas(svc, key)


async def get_key_rotation_status(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:GetKeyRotationStatus", key)
    _require_generated_material(key)
    primary = await _primary_of(svc, key)
    # GetKeyRotationStatus: a key pending deletion reports false (a primary waiting for its
    # replicas' deletion is one too: it will not rotate); cancelling the deletion brings back the
    # status it had (kept on the key, so nothing is lost meanwhile). The automatic rotation status
    # is shared by a multi-Region key's copies (ReplicateKey, UpdatePrimaryRegion): a replica
    # reports its primary's, else it would show rotation on, soon overdue, while its primary,
    # the one copy that rotates, waits for deletion and never does.
    enabled = primary.rotation_enabled and not any(k.state in SCHEDULED_FOR_DELETION for k in (key, primary))
    response: Response = {"KeyRotationEnabled": enabled, "KeyId": key.arn}
    if enabled:
        response["RotationPeriodInDays"] = primary.rotation_period_days
        response["NextRotationDate"] = primary.next_rotation_date
    return response


async def _primary_of(svc: KmsService, key: Key) -> Key:
    """The copy whose rotation `key` shares: a replica's primary, any other key itself (and a
    replica whose primary is not stored, which keeps the settings last copied to it)."""
    if not multiregion.is_replica(key) or key.primary_region is None:
        return key
    primary = await svc.store.get_key(key.account, key.primary_region, key.key_id)
    return primary or key


async def rotate_key_on_demand(svc: KmsService, call: Call) -> Response:
    key = await _rotatable_key(svc, call, "kms:RotateKeyOnDemand", imported=True)
    if key.on_demand_rotations >= MAX_ON_DEMAND_ROTATIONS:
        raise errors.LimitExceededException(
            "The on-demand rotations limit has been reached for the given keyId. "
            f"No more on-demand rotations can be performed for this key: {key.arn}"
        )
    call.response_elements = {"keyId": key.arn}  # CloudTrail logs this call's response; before the write (its record)
    if key.origin is Origin.EXTERNAL:
        await rotate_to_imported(svc, key)
    else:
        await rotate_key(svc, key, "ON_DEMAND")
    return {"KeyId": key.arn}


async def list_key_rotations(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:ListKeyRotations", key)
    if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:  # AWS's words unknown: these in the style of its origin's
        raise errors.UnsupportedOperationException(
            f"{key.arn} key spec is {key.key_spec} which is not valid for this operation.")
    if key.custom_key_store_id:
        # Nor a key of a custom key store, which never rotates: ListKeyRotations lists the materials of
        # keys "that support automatic or on-demand key rotation" (IncludeKeyMaterial; the developer
        # guide's "List rotations and key materials": AWS_KMS and EXTERNAL origin), answered as the
        # other rotation calls answer for such a key.
        _require_generated_material(key)
    # ROTATIONS_ONLY: material that became current by a rotation; ALL_KEY_MATERIAL adds "the
    # first key material and any imported key material pending rotation".
    every = call.params.get("IncludeKeyMaterial") == "ALL_KEY_MATERIAL"
    materials = [m for m in key.materials if every or m.rotation_type is not None]
    chunk, paging = page(materials, call.params, lambda m: (m.created.timestamp(), m.material_id),
                         f"ListKeyRotations {key.arn}")
    partial = await _not_imported_everywhere(svc, key)
    entries = []
    for material in chunk:
        entry: dict[str, Any] = {"KeyId": key.arn, "KeyMaterialId": material.material_id}
        if material.rotation_type is not None:
            entry.update(RotationDate=material.created, RotationType=material.rotation_type)
        entry["KeyMaterialState"] = _material_state(key, material, partial)
        if key.origin is Origin.EXTERNAL:
            entry.update(_import_fields(material))
        entries.append(entry)
    return {"Rotations": entries, **paging}


async def _not_imported_everywhere(svc: KmsService, key: Key) -> frozenset[str]:
    """Ids of material pending rotation that some copy of a multi-Region key lacks."""
    pending = key.pending_material
    if pending is None or not key.multi_region:
        return frozenset()
    copies = [key, *await multiregion.copies(svc, key)]
    everywhere = all(holds_imported(copy, pending.material_id) for copy in copies)
    return frozenset() if everywhere else frozenset({pending.material_id})


def _material_state(key: Key, material: KeyMaterial, partial: frozenset[str]) -> str:
    if material.pending and material.material_id in partial:
        return "PENDING_MULTI_REGION_IMPORT_AND_ROTATION"
    if material.pending:
        return "PENDING_ROTATION"
    return "CURRENT" if material is key.current_material else "NON_CURRENT"


def _import_fields(material: KeyMaterial) -> dict[str, Any]:
    # RotationsListEntry: imported material (EXTERNAL origin) also shows its ImportState, its
    # KeyMaterialDescription, and while imported its ExpirationModel (ValidTo when it expires).
    # Deleted or expired material is PENDING_IMPORT, with no expiration: none is set until an
    # import sets one again.
    fields: dict[str, Any] = {"ImportState": "IMPORTED" if material.imported else "PENDING_IMPORT"}
    if material.description is not None:
        fields["KeyMaterialDescription"] = material.description
    if not material.imported:
        return fields
    if material.valid_to is None:
        return {**fields, "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
    return {**fields, "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": material.valid_to}


OPERATIONS: dict[str, Operation] = {
    "EnableKeyRotation": Operation(enable_key_rotation),
    "DisableKeyRotation": Operation(disable_key_rotation),
    "GetKeyRotationStatus": Operation(get_key_rotation_status, read_only=True),
    "RotateKeyOnDemand": Operation(rotate_key_on_demand),
    "ListKeyRotations": Operation(list_key_rotations, read_only=True),
}
