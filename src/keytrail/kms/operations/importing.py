"""Imported key material: GetParametersForImport, ImportKeyMaterial, DeleteImportedKeyMaterial."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors, multiregion
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.importing import (
    FINGERPRINT,
    IMPORT_TOKEN_LIFETIME,
    MATERIAL_SALT,
    ImportParameters,
    check_material,
    check_wrapping,
    imported_material_id,
    new_wrapping_key,
    public_key_of,
    token_bytes,
    token_id_of,
    unwrap_material,
    with_material_salt,
    without_material,
)
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.model import KeyState, Origin

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]

EXPIRES = "KEY_MATERIAL_EXPIRES"
DOES_NOT_EXPIRE = "KEY_MATERIAL_DOES_NOT_EXPIRE"
MAX_VALID_TO = timedelta(days=365)


def _require_external(key: Key) -> None:
    if key.origin is not Origin.EXTERNAL:
        raise errors.UnsupportedOperationException(
            f"{key.arn} origin is {key.origin} which is not valid for this operation."
        )


async def _external_key(svc: KmsService, call: Call, action: str, conditions: dict[str, Any]) -> Key:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, action, key, conditions)
    _require_external(key)
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
    private = await asyncio.to_thread(new_wrapping_key, spec)
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
        "ImportToken": token_bytes(parameters.token_id),
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
    if parameters is None or (parameters.account, parameters.region, parameters.key_id) != (
        key.account,
        key.region,
        key.key_id,
    ):
        raise errors.InvalidImportTokenException("The import token is invalid for this key.")
    if parameters.valid_to <= svc.now():
        raise errors.ExpiredImportTokenException("The import token has expired.")
    return parameters


def _conditions(params: dict[str, Any]) -> dict[str, Any]:
    conditions: dict[str, Any] = {"kms:ExpirationModel": _model(params)}
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
    model, valid_to = _expiration(params, svc.now())
    parameters = await _parameters_for(svc, key, params["ImportToken"])
    secret = check_material(key, unwrap_material(parameters, params["EncryptedKeyMaterial"]))
    key = await _with_import_identity(svc, key)
    material_id = imported_material_id(key, secret)
    accepted = key.extra.get(FINGERPRINT)
    if params.get("ImportType") == "NEW_KEY_MATERIAL" and accepted:
        raise errors.UnsupportedOperationException(
            "Importing new key material into a key that has key material "
            "(on-demand rotation of imported keys) is not supported."
        )
    if accepted and accepted != material_id:
        raise errors.IncorrectKeyMaterialException(
            "The key material is not the key material that was previously imported into this KMS key."
        )
    material = KeyMaterial(material_id=material_id, secret=secret, created=svc.now(), valid_to=valid_to)
    state = KeyState.ENABLED if key.state is KeyState.PENDING_IMPORT else key.state
    imported = replace(
        key,
        materials=(material,),
        state=state,
        expiration_model=model,
        extra={**key.extra, FINGERPRINT: material_id},
    )
    await svc.store.put_key(imported)
    call.additional_event_data["keyMaterialId"] = material_id
    call.response_elements = {"keyId": key.arn, "keyMaterialId": material_id}
    return {"KeyId": key.arn, "KeyMaterialId": material_id}


async def delete_imported_key_material(svc: KmsService, call: Call) -> Response:
    key = await _external_key(svc, call, "kms:DeleteImportedKeyMaterial", {})
    current = key.current_material
    wanted = call.params.get("KeyMaterialId")
    if wanted and (current is None or current.material_id != wanted):
        raise errors.NotFoundException(f"Key material {wanted} does not exist for {key.arn}")
    await svc.store.put_key(without_material(key))
    material_id = current.material_id if current else key.extra.get(FINGERPRINT)
    response: Response = {"KeyId": key.arn, **({"KeyMaterialId": material_id} if material_id else {})}
    if material_id:
        call.additional_event_data["keyMaterialId"] = material_id
    call.response_elements = {name[:1].lower() + name[1:]: value for name, value in response.items()}
    return response


OPERATIONS: dict[str, Operation] = {
    "GetParametersForImport": Operation(get_parameters_for_import, read_only=True),
    "ImportKeyMaterial": Operation(import_key_material),
    "DeleteImportedKeyMaterial": Operation(delete_imported_key_material),
}
