"""Imported key material: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn

from keytrail.kms import errors, multiregion
from keytrail.kms.call_records import cloudtrail_values
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.importing import (
    FINGERPRINT,
    IMPORT_TOKEN_LIFETIME,
    MATERIAL_SALT,
    ImportParameters,
    check_material,
    check_private_key_numbers,
    check_wrapping,
    expiration_of,
    imported_material_id,
    new_wrapping_key,
    pending_dropped,
    public_key_of,
    token_bytes,
    token_id_of,
    token_valid_to,
    unwrap_material,
    with_material_salt,
    without_material,
)
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.material import SLOW_GENERATIONS, forget_deleted
from keytrail.kms.model import KeySpec, KeyState, Origin

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

EXPIRES = "KEY_MATERIAL_EXPIRES"
DOES_NOT_EXPIRE = "KEY_MATERIAL_DOES_NOT_EXPIRE"
MAX_VALID_TO = timedelta(days=365)
NEW_KEY_MATERIAL = "NEW_KEY_MATERIAL"
EXISTING_KEY_MATERIAL = "EXISTING_KEY_MATERIAL"
_SYMMETRIC_ONLY = ("ImportType", "KeyMaterialId", "KeyMaterialDescription")  # request members


def _require_external(key: Key) -> None:
    if key.origin is not Origin.EXTERNAL:
        raise errors.UnsupportedOperationException(
            f"{key.arn} origin is {key.origin} which is not valid for this operation."
        )


async def _external_key(
    svc: KmsService, call: Call, action: str, conditions: dict[str, Any], *, while_deleting: bool = False,
) -> Key:
    """The EXTERNAL key the call names. `while_deleting`: DeleteImportedKeyMaterial also takes a key
    pending deletion ("When the specified KMS key is in the PendingDeletion state, this operation
    does not change the KMS key's state", API reference); importing into one is refused."""
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, action, key, conditions)
    _require_external(key)
    if not while_deleting:
        svc.require_not_pending_deletion(key)
    if key.state is KeyState.PENDING_REPLICA_DELETION:
        raise errors.KMSInvalidStateException(f"{key.arn} is pending replica deletion.")
    return key


async def get_parameters_for_import(svc: KmsService, call: Call) -> Response:
    algorithm, spec = call.params["WrappingAlgorithm"], call.params["WrappingKeySpec"]
    key = await _external_key(
        svc,
        call,
        "kms:GetParametersForImport",
        {"kms:WrappingAlgorithm": algorithm, "kms:WrappingKeySpec": spec},
    )
    check_wrapping(algorithm, spec, key.key_spec)
    private = await SLOW_GENERATIONS.run(partial(new_wrapping_key, spec))
    parameters = ImportParameters(
        token_id=svc.deps.random_bytes(32).hex(),
        account=key.account,
        region=key.region,
        key_id=key.key_id,
        wrapping_algorithm=algorithm,
        wrapping_key_spec=spec,
        private_key=private,
        valid_to=svc.now() + IMPORT_TOKEN_LIFETIME,
    )
    await svc.store.put_import_parameters(parameters)
    return {
        "KeyId": key.arn,
        "ImportToken": token_bytes(parameters.token_id, parameters.valid_to),
        "PublicKey": public_key_of(private),
        "ParametersValidTo": parameters.valid_to,
    }


def _model(params: dict[str, Any]) -> str:
    """The ExpirationModel asked for: AWS defaults it to KEY_MATERIAL_EXPIRES (which needs ValidTo)."""
    return str(params.get("ExpirationModel") or EXPIRES)


def _expiration(params: dict[str, Any], now: datetime) -> tuple[str, datetime | None]:
    """ExpirationModel and ValidTo as AWS checks them (ImportKeyMaterial reference)."""
    valid_to: datetime | None = params.get("ValidTo")
    model = _model(params)
    if model == EXPIRES and valid_to is None:
        raise errors.ValidationException(
            "A validTo date must be set if the ExpirationModel is KEY_MATERIAL_EXPIRES"
        )
    if model == DOES_NOT_EXPIRE and valid_to is not None:
        raise errors.ValidationException(
            "A validTo date must not be set if the ExpirationModel is KEY_MATERIAL_DOES_NOT_EXPIRE"
        )
    if valid_to is not None and not now < valid_to <= now + MAX_VALID_TO:
        raise errors.ValidationException(
            "The validTo date must be in the future and at most 365 days from now."
        )
    return model, valid_to


async def _parameters_for(svc: KmsService, key: Key, token: bytes) -> ImportParameters:
    parameters = await svc.store.get_import_parameters(token_id_of(token))
    if parameters is None:
        _refuse_unknown_token(svc, token)
    if (parameters.account, parameters.region, parameters.key_id) != (key.account, key.region, key.key_id):
        raise errors.InvalidImportTokenException("The import token is invalid for this key.")
    if parameters.valid_to <= svc.now():
        raise errors.ExpiredImportTokenException("The import token has expired.")
    return parameters


def _refuse_unknown_token(svc: KmsService, token: bytes) -> NoReturn:
    """A token naming no stored parameters: expired if its own ValidTo has passed (the scheduler's
    tick deletes parameters once they expire, AWS's token says when it expires whatever its age),
    else invalid."""
    valid_to = token_valid_to(token)
    if valid_to is not None and valid_to <= svc.now():
        raise errors.ExpiredImportTokenException("The import token has expired.")
    raise errors.InvalidImportTokenException("The import token is invalid for this key.")


def _conditions(params: dict[str, Any]) -> dict[str, Any]:
    """kms:ExpirationModel only when the request has the parameter: AWS's example allows an import
    "only when the request does not have an ExpirationModel parameter" with the Null operator."""
    conditions: dict[str, Any] = {}
    if params.get("ExpirationModel") is not None:
        conditions["kms:ExpirationModel"] = params["ExpirationModel"]
    if params.get("ValidTo") is not None:
        conditions["kms:ValidTo"] = params["ValidTo"].timestamp()
    return conditions


async def _with_import_identity(svc: KmsService, key: Key) -> Key:
    """The key with its material salt and accepted material. The copies of a multi-Region key
    share them (the first copy to import sets them, whatever the order of replication and
    import), so one material gets one KeyMaterialId in every Region and no Region takes another."""
    if MATERIAL_SALT not in key.extra and key.multi_region:
        for other in await multiregion.copies(svc, key):
            if MATERIAL_SALT in other.extra:
                shared = {name: other.extra[name] for name in (MATERIAL_SALT, FINGERPRINT) if name in other.extra}
                return replace(key, extra={**key.extra, **shared})
    return with_material_salt(key)


async def import_key_material(svc: KmsService, call: Call) -> Response:
    # The call holds the lock of all the key's copies (`KmsService.key_lock`): one Region imports
    # at a time, so the first import's salt and material are the ones the other Regions see.
    params = call.params
    key = await _external_key(svc, call, "kms:ImportKeyMaterial", _conditions(params))
    _check_symmetric_only(key, params)
    _, valid_to = _expiration(params, svc.now())
    parameters = await _parameters_for(svc, key, params["ImportToken"])
    secret = check_material(key, unwrap_material(parameters, params["EncryptedKeyMaterial"]))
    await SLOW_GENERATIONS.run(partial(check_private_key_numbers, key, secret))  # not on the event loop
    key = await _with_import_identity(svc, key)
    material = KeyMaterial(
        material_id=imported_material_id(key, secret), secret=secret, created=svc.now(), valid_to=valid_to,
        description=params.get("KeyMaterialDescription"),
    )
    imported = _placed(key, material, params)
    # Before the write: the record it owes (kms/owed_calls.py) names the material, as the call's does.
    call.additional_event_data["keyMaterialId"] = material.material_id
    call.response_elements = {"keyId": key.arn, "keyMaterialId": material.material_id}
    await _save_import(svc, replace(imported, expiration_model=expiration_of(imported)[0]))
    return {"KeyId": key.arn, "KeyMaterialId": material.material_id}


def _placed(key: Key, material: KeyMaterial, params: dict[str, Any]) -> Key:
    """The key with `material` where the ImportType puts it (ImportKeyMaterial reference)."""
    kind = _import_type(key, params)
    if not _associated(key):
        if kind == EXISTING_KEY_MATERIAL:
            raise errors.IncorrectKeyMaterialException(
                "No key material was imported into this KMS key before: import it with ImportType NEW_KEY_MATERIAL."
            )
        return _held_again(replace(key, extra={**key.extra, FINGERPRINT: material.material_id}), material)
    if kind == NEW_KEY_MATERIAL:
        return _with_new_material(key, material)
    return _with_existing_material(key, material, params.get("KeyMaterialId"))


def _check_symmetric_only(key: Key, params: dict[str, Any]) -> None:
    """ImportType, KeyMaterialId and KeyMaterialDescription are "only usable with symmetric
    encryption keys"; an asymmetric or HMAC key has one material for life, and AWS "will reject
    ImportKeyMaterial API requests with the ImportType parameter" for them."""
    named = [name for name in _SYMMETRIC_ONLY if params.get(name) is not None]
    if named and key.key_spec is not KeySpec.SYMMETRIC_DEFAULT:
        raise errors.ValidationException(
            f"{named[0]} is only valid for symmetric encryption KMS keys; {key.arn} has key spec {key.key_spec}."
        )
    if params.get("ImportType") == NEW_KEY_MATERIAL and params.get("KeyMaterialId") is not None:
        raise errors.ValidationException("You cannot specify a KeyMaterialId with ImportType NEW_KEY_MATERIAL.")


def _associated(key: Key) -> list[str]:
    """Ids of the material the key holds, held, or (a copy of a multi-Region key) must import:
    its materials, and the first material it accepts (which a key whose only material was deleted
    before materials were kept, or the copy of a multi-Region key whose other copy imported
    first, knows only by this id)."""
    ids = [m.material_id for m in key.materials]
    first = key.extra.get(FINGERPRINT)
    return [*ids, first] if first and first not in ids else ids


def _import_type(key: Key, params: dict[str, Any]) -> str:
    """ImportType: NEW_KEY_MATERIAL by default into a key that never had material, else (or
    when a KeyMaterialId names what is imported again) EXISTING_KEY_MATERIAL."""
    if params.get("ImportType"):
        return str(params["ImportType"])
    again = _associated(key) or params.get("KeyMaterialId") is not None
    return EXISTING_KEY_MATERIAL if again else NEW_KEY_MATERIAL


def _with_new_material(key: Key, material: KeyMaterial) -> Key:
    """New material for an on-demand rotation: PENDING_ROTATION until RotateKeyOnDemand. A
    multi-Region key takes it in its primary, then each replica the same material as existing."""
    if multiregion.is_replica(key):
        raise errors.UnsupportedOperationException(
            f"{key.arn} is a replica Region key: import new key material into its primary Region key "
            f"({key.primary_region}), then the same key material here with ImportType EXISTING_KEY_MATERIAL."
        )
    if material.material_id in _associated(key):
        raise errors.IncorrectKeyMaterialException(
            "The key material is already associated with this KMS key: "
            "import it with ImportType EXISTING_KEY_MATERIAL."
        )
    pending = key.pending_material
    if pending is not None:
        raise errors.KMSInvalidStateException(
            f"{key.arn} already has key material {pending.material_id} in PENDING_ROTATION state: "
            "rotate to it (RotateKeyOnDemand) or delete it (DeleteImportedKeyMaterial) first."
        )
    return replace(key, materials=(*key.materials, replace(material, pending=True)))


def _with_existing_material(key: Key, material: KeyMaterial, wanted: str | None) -> Key:
    """Material the key holds or held, imported again: after a deletion or an expiry, or to
    change its expiration. With a KeyMaterialId, KMS checks the material is that one."""
    if wanted is not None and wanted != material.material_id:
        raise errors.IncorrectKeyMaterialException(f"The key material does not match key material ID {wanted}.")
    if material.material_id not in _associated(key):
        raise errors.IncorrectKeyMaterialException(
            "The key material is not the key material that was previously imported into this KMS key."
        )
    return _held_again(key, material)


def _held_again(key: Key, material: KeyMaterial) -> Key:
    """`key` holding `material` (imported, with the new expiration): in place of the entry of
    the same id, or as its first material. The key is Enabled once it holds all its material."""
    held = next((m for m in key.materials if m.material_id == material.material_id), None)
    if held is None:  # the first material, or the one a multi-Region copy or an older store accepts
        materials: tuple[KeyMaterial, ...] = (material, *key.materials)
    else:
        again = replace(held, secret=material.secret, imported=True, valid_to=material.valid_to,
                        description=material.description or held.description)
        materials = tuple(again if m is held else m for m in key.materials)
    restored = replace(key, materials=materials)
    if key.state is KeyState.PENDING_IMPORT and not restored.missing_material:
        return replace(restored, state=KeyState.ENABLED)
    return restored


async def _save_import(svc: KmsService, key: Key) -> None:
    """Store the key. Material pending rotation in a multi-Region primary is material each
    replica must import too: the replicas name it (not imported) in the same write."""
    pending = key.pending_material
    replicas = []
    if pending is not None and multiregion.is_primary(key):
        for other in await multiregion.copies(svc, key):
            if not any(m.material_id == pending.material_id for m in other.materials):
                kept = tuple(m for m in other.materials if not m.pending)  # none left behind
                replicas.append(replace(other, materials=(*kept, pending.without_secret())))
    await multiregion.put_announced(svc, [key, *replicas], replicas, by_call=True)


async def delete_imported_key_material(svc: KmsService, call: Call) -> Response:
    key = await _external_key(svc, call, "kms:DeleteImportedKeyMaterial", {}, while_deleting=True)
    wanted = call.params.get("KeyMaterialId")
    current = key.current_material
    target = current if wanted is None else next((m for m in key.materials if m.material_id == wanted), None)
    if wanted and target is None:
        raise errors.NotFoundException(f"Key material {wanted} does not exist for {key.arn}")
    dropped = [target.material_id] if target is not None and target.pending else []
    replicas = await pending_dropped(svc, key, dropped)
    emptied = without_material(key, target.material_id if target else None)
    material_id = target.material_id if target else key.extra.get(FINGERPRINT)
    if material_id:  # noted before the write: the record it owes (kms/owed_calls.py) names the material
        call.additional_event_data["keyMaterialId"] = material_id
    response: Response = {"KeyId": key.arn, **({"KeyMaterialId": material_id} if material_id else {})}
    call.response_elements = cloudtrail_values(response)
    await multiregion.put_announced(svc, [emptied, *replicas], replicas, by_call=True)
    forget_deleted(key, [emptied])
    return response


OPERATIONS: dict[str, Operation] = {
    "GetParametersForImport": Operation(get_parameters_for_import, read_only=True, writes=True),
    "ImportKeyMaterial": Operation(import_key_material),
    "DeleteImportedKeyMaterial": Operation(delete_imported_key_material),
}
