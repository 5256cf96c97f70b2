"""The record a state-changing call owes in the key store is the record the call makes: a node killed
after the write records the owed one at its next start (kms/owed_calls.py), so what a handler notes
for CloudTrail (responseElements, additionalEventData) must be noted before the write that carries it,
or the recovered record says less than the call did."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.wrapping import wrap
from tests.support.owed_calls import Spool, context, node


class _Watched:
    """A node whose spool notes, for each record it takes, the record the store owed for it then."""

    def __init__(self, path: Path) -> None:
        self.store = SqliteStore(path, RootKey(os.urandom(32)))
        self.spool = Spool()
        self.service = node(self.store, self.spool, ManualClock())
        self.owed: dict[str, tuple[CallRecord, CallRecord]] = {}
        self.spool.during = self._compare

    async def _compare(self, record: CallRecord) -> None:
        for owed in await self.store.owed_records():
            if owed.event_id == record.event_id:
                self.owed[record.event_name] = (owed, record)

    async def call(self, operation: str, params: dict[str, Any]) -> Any:
        return await self.service.execute(operation, context(f"req-{operation}"), params)


async def _key(node: _Watched, **params: Any) -> str:
    return str((await node.call("CreateKey", params))["KeyMetadata"]["Arn"])



async def _import(node: _Watched, arn: str) -> None:
    parameters = await node.call("GetParametersForImport", {
        "KeyId": arn, "WrappingAlgorithm": "RSA_AES_KEY_WRAP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await node.call("ImportKeyMaterial", {
        "KeyId": arn, "ImportToken": parameters["ImportToken"], "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(32))})


async def _key_calls(node: _Watched) -> None:
    arn = await _key(node, Tags=[{"TagKey": "team", "TagValue": "a"}])
    other = await _key(node)
    await node.call("DisableKey", {"KeyId": arn})
    await node.call("EnableKey", {"KeyId": arn})
    await node.call("UntagResource", {"KeyId": arn, "TagKeys": ["team"]})
    await node.call("EnableKeyRotation", {"KeyId": arn})
    await node.call("RotateKeyOnDemand", {"KeyId": arn})
    await node.call("CreateAlias", {"AliasName": "alias/app", "TargetKeyId": arn})
    await node.call("UpdateAlias", {"AliasName": "alias/app", "TargetKeyId": other})
    await node.call("DeleteAlias", {"AliasName": "alias/app"})
    await node.call("ScheduleKeyDeletion", {"KeyId": arn, "PendingWindowInDays": 7})
    await node.call("CancelKeyDeletion", {"KeyId": arn})


async def _import_calls(node: _Watched) -> None:
    arn = await _key(node, Origin="EXTERNAL")
    await _import(node, arn)
    await node.call("DeleteImportedKeyMaterial", {"KeyId": arn})


@pytest.mark.parametrize("calls", [_key_calls, _import_calls], ids=["keys-and-aliases", "imported-material"])
async def test_the_record_owed_with_the_change_is_the_record_the_call_makes(tmp_path: Path, calls: Any) -> None:
    watched = _Watched(tmp_path / "keys.db")
    await calls(watched)
    assert watched.owed  # each call's record was owed as the spool took it
    differing = {name: (owed.response_elements, owed.additional_event_data)
                 for name, (owed, recorded) in watched.owed.items() if owed != recorded}
    assert differing == {}
    await watched.store.close()

