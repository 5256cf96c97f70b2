"""Key-state rules of the key lifecycle operations (AWS developer guide, "Key states of AWS KMS keys")."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord, KeyState, Origin
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

ACCOUNT = "111122223333"


class AllowAll:
    """Allows every call and drops its audit record."""

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        return None


def _service(tmp_path: Path) -> tuple[SqliteStore, KmsService]:
    """A key service over a SQLite store of its own that allows and records nothing."""
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    allow = AllowAll()
    return store, KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=allow, authorizer=allow))


def _context() -> CallContext:
    principal = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                          access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE")
    return CallContext(principal=principal, region="us-east-1", request_id="req-1")


async def test_enable_and_disable_an_unavailable_key_succeed_and_apply_once_it_is_available(tmp_path: Path) -> None:
    # Key states table, note [12]: on an Unavailable key (its custom key store disconnected)
    # EnableKey and DisableKey succeed, "but the key state ... does not change until it becomes
    # available".
    store, service = _service(tmp_path)
    key_id = (await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["KeyId"]
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None
    await store.put_key(replace(key, state=KeyState.UNAVAILABLE, extra={"state_when_connected": "Enabled"}))
    assert await service.execute("DisableKey", _context(), {"KeyId": key_id}) == {}
    after = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert after is not None and after.state is KeyState.UNAVAILABLE
    assert after.extra["state_when_connected"] == "Disabled"
    await service.execute("EnableKey", _context(), {"KeyId": key_id})
    again = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert again is not None and again.extra["state_when_connected"] == "Enabled"


async def test_rotation_status_of_a_key_in_a_custom_key_store_names_its_origin(tmp_path: Path) -> None:
    # Key states table, note [7]: GetKeyRotationStatus of a key whose material KMS did not generate
    # (a custom key store's) is UnsupportedOperationException naming the origin, in any state.
    store, service = _service(tmp_path)
    key_id = (await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["KeyId"]
    key = await store.get_key(ACCOUNT, "us-east-1", key_id)
    assert key is not None
    await store.put_key(replace(key, origin=Origin.AWS_CLOUDHSM, custom_key_store_id="cks-1234567890abcdef0"))
    with pytest.raises(errors.UnsupportedOperationException) as caught:
        await service.execute("GetKeyRotationStatus", _context(), {"KeyId": key_id})
    assert caught.value.message == f"{key.arn} origin is AWS_CLOUDHSM which is not valid for this operation."
