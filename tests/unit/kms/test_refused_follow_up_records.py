"""A call whose own change is written stands when the spool then refuses a record KMS owes for it
(kms/owed_calls.py `owed_with_writes`): the SynchronizeMultiRegionKey of each copy the call changed,
ReplicateKey's CreateKey in the replica's Region, RotateKeyOnDemand's RotateKey. The refused record
stays owed for the next tick, and the call's own record, owed by the same write, is the answer.
Due work (a replica's activation here) still fails, for the tick to log and try again."""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.wrapping import wrap
from tests.support.owed_calls import ACCOUNT, Spool, context, node

Call = tuple[str, dict[str, Any]]


async def _execute(service: KmsService, operation: str, params: dict[str, Any], request: str = "req-setup") -> Any:
    return await service.execute(operation, context(request), params)


async def _replicated(service: KmsService, **params: Any) -> str:
    """A multi-Region primary in us-east-1 with an active replica in eu-west-1; its ARN."""
    arn = str((await _execute(service, "CreateKey", {"MultiRegion": True, **params}))["KeyMetadata"]["Arn"])
    if params.get("Origin") == "EXTERNAL":
        await _import(service, arn)
    await _execute(service, "ReplicateKey", {"KeyId": arn, "ReplicaRegion": "eu-west-1"})
    await service.run_due()  # the replica leaves Creating
    return arn


async def _import(service: KmsService, arn: str) -> None:
    parameters = await _execute(service, "GetParametersForImport", {
        "KeyId": arn, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await _execute(service, "ImportKeyMaterial", {
        "KeyId": arn, "ImportToken": parameters["ImportToken"], "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(32))})


async def _enable_rotation(service: KmsService) -> Call:
    return "EnableKeyRotation", {"KeyId": await _replicated(service)}


async def _disable_rotation(service: KmsService) -> Call:
    arn = await _replicated(service)
    await _execute(service, "EnableKeyRotation", {"KeyId": arn})
    return "DisableKeyRotation", {"KeyId": arn}


async def _replicate(service: KmsService) -> Call:
    return "ReplicateKey", {"KeyId": await _replicated(service), "ReplicaRegion": "ap-southeast-2"}


async def _update_primary(service: KmsService) -> Call:
    return "UpdatePrimaryRegion", {"KeyId": await _replicated(service), "PrimaryRegion": "eu-west-1"}


async def _rotate(service: KmsService) -> Call:
    return "RotateKeyOnDemand", {"KeyId": await _replicated(service)}


async def _import_new(service: KmsService) -> Call:
    arn = await _replicated(service, Origin="EXTERNAL")
    parameters = await _execute(service, "GetParametersForImport", {
        "KeyId": arn, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    return "ImportKeyMaterial", {
        "KeyId": arn, "ImportToken": parameters["ImportToken"], "ImportType": "NEW_KEY_MATERIAL",
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(32))}


async def _delete_pending(service: KmsService) -> Call:
    operation, params = await _import_new(service)
    pending = (await _execute(service, operation, params))["KeyMaterialId"]
    return "DeleteImportedKeyMaterial", {"KeyId": params["KeyId"], "KeyMaterialId": pending}


SYNC = "SynchronizeMultiRegionKey"
# Each call that changes a multi-Region key's copies, and a record it owes besides its own.
CASES: dict[str, tuple[Callable[[KmsService], Awaitable[Call]], str]] = {
    "enable-rotation": (_enable_rotation, SYNC), "disable-rotation": (_disable_rotation, SYNC),
    "replicate": (_replicate, SYNC), "replicate-its-create-key": (_replicate, "CreateKey"),
    "update-primary": (_update_primary, SYNC), "rotate-on-demand": (_rotate, SYNC),
    "rotate-on-demand-its-rotate-key": (_rotate, "RotateKey"), "import-new-material": (_import_new, SYNC),
    "delete-pending-material": (_delete_pending, SYNC),
}


@pytest.mark.parametrize(("prepare", "refused"), CASES.values(), ids=CASES.keys())
async def test_a_refused_record_kms_owes_for_a_written_change_leaves_the_call_done(
    tmp_path: Path, prepare: Callable[[KmsService], Awaitable[Call]], refused: str,
) -> None:
    """The change was written with the records it owes: the spool refusing one of them failed the call
    ("what the call changed stands", or "the call was not performed"), and the call's record said
    KMSInternalException over a change that stood. Now the call succeeds, recorded as done, and the
    refused record, still owed, is recorded by the next tick under its own eventID."""
    store, spool = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))), Spool()
    service = node(store, spool, ManualClock())
    operation, params = await prepare(service)
    before = len(spool.named(refused))
    spool.refuse_once = {refused}
    await _execute(service, operation, params, "req-call")
    assert spool.refuse_once == set()  # it was refused
    [record] = [r for r in spool.named(operation) if r.request_id == "req-call" and r.invoked_by is None]
    assert (record.error_code, record.error_message) == (None, None)
    await service.run_due()
    assert len(spool.named(refused)) > before
    assert await store.owed_records() == []
    key = await store.get_key(ACCOUNT, "us-east-1", params["KeyId"].rsplit("/", 1)[1])
    assert key is not None and not key.extra.get("unrecorded_service_events")
    await store.close()


async def test_a_replicas_activation_whose_record_is_refused_still_fails_the_tick(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Due work is no call: its refused SynchronizeMultiRegionKey fails it, for the tick to log (and to
    record the owed record at its next pass)."""
    store, spool = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))), Spool()
    service = node(store, spool, ManualClock())
    arn = str((await _execute(service, "CreateKey", {"MultiRegion": True}))["KeyMetadata"]["Arn"])
    await _execute(service, "ReplicateKey", {"KeyId": arn, "ReplicaRegion": "eu-west-1"})
    before = len(spool.named(SYNC))  # ReplicateKey's, of the primary
    spool.refuse_once = {SYNC}
    with caplog.at_level(logging.ERROR):
        await service.run_due()
    replica = arn.replace("us-east-1", "eu-west-1")
    assert any(f"1 key(s) left for the next tick, first {replica}" in r.getMessage() for r in caplog.records)
    assert len(spool.named(SYNC)) == before + 1  # the same tick took up the record left owed
    assert await store.owed_records() == []
    await store.close()
