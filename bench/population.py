"""Fill a data dir with many keys, in-process, before the server starts (scale benchmark).

Creating 100,000 keys over HTTP, or one `CreateKey` at a time (a transaction each, with the record
it owes: ≈ 3 ms a key on a slow VM), would take longer than the whole suite may. So the first key
of a fill is made by `KmsService.execute("CreateKey")` on the node's SQLite store, as the account
root, with the benchmark's key policy (checked as a caller's would be), and the others are copies
of it, each with its own key id, creation date and freshly generated material (sealed by the store
as any key's), written `BATCH` keys to a transaction through the store's own `put_keys`. What the
benchmark measures (loading, finding and using keys among many) cannot tell the difference. The
only other shortcut: `synchronous=OFF` while filling (the server reopens the file with its own
settings).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.fixtures import ACCOUNT, KEY_POLICY

if TYPE_CHECKING:
    from keytrail.kms.keys import Key
    from keytrail.kms.service import KmsService

__all__ = ["add_keys"]

BATCH = 2000  # keys per transaction


class _NoAudit:
    async def record(self, call: Any) -> None:
        return None


async def _first_key(service: KmsService) -> Key:
    from keytrail.kms.context import CallContext, Principal

    root = CallContext(principal=Principal.account_root(ACCOUNT, "AKIAROOT"), region="us-east-1",
                       request_id=str(uuid.uuid4()))
    params = {"Policy": json.dumps(KEY_POLICY), "BypassPolicyLockoutSafetyCheck": True}
    created = await service.execute("CreateKey", root, params)
    key = await service.store.get_key(ACCOUNT, "us-east-1", created["KeyMetadata"]["KeyId"])
    assert key is not None
    return key


def _copy(service: KmsService, template: Key) -> Key:
    """Another key like `template`: its own id, date and 256-bit material."""
    return replace(template, key_id=str(uuid.uuid4()), creation_date=service.now(),
                   materials=(service.new_material(os.urandom(32)),))


async def _add(data_dir: Path, count: int) -> list[str]:
    from keytrail.clock import SystemClock
    from keytrail.kms.authz import OwnAccountAuthorizer
    from keytrail.kms.sealing import RootKey
    from keytrail.kms.service import KmsService, ServiceDeps
    from keytrail.kms.sqlite_store import SqliteStore

    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir))
    store._db.execute("PRAGMA synchronous=OFF")  # setup speed only; see the module docstring
    service = KmsService(ServiceDeps(store=store, clock=SystemClock(), audit=_NoAudit(),
                                     authorizer=OwnAccountAuthorizer()))
    try:
        template = await _first_key(service)
        arns = [template.arn]
        while len(arns) < count:
            batch = [_copy(service, template) for _ in range(min(BATCH, count - len(arns)))]
            await store.put_keys(batch)
            arns += [key.arn for key in batch]
    finally:
        await store.close()
    return arns


def add_keys(data_dir: Path, count: int) -> list[str]:
    """Create `count` more keys in `data_dir` (server stopped); their ARNs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_add(data_dir, count)) if count > 0 else []
