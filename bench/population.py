"""Fill a data dir with many keys, in-process, before the server starts (scale benchmark).

Creating 100,000 keys over HTTP would take minutes; this calls `KmsService.execute("CreateKey")`
directly on the node's SQLite store, as the account root, with the benchmark's key policy. The
only shortcut: `synchronous=OFF` while filling (the server reopens the file with its own settings).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from bench.fixtures import ACCOUNT, KEY_POLICY

__all__ = ["add_keys"]


class _NoAudit:
    async def record(self, call: Any) -> None:
        return None


async def _add(data_dir: Path, count: int) -> list[str]:
    from keytrail.clock import SystemClock
    from keytrail.kms.authz import OwnAccountAuthorizer
    from keytrail.kms.context import CallContext, Principal
    from keytrail.kms.sealing import RootKey
    from keytrail.kms.service import KmsService, ServiceDeps
    from keytrail.kms.sqlite_store import SqliteStore

    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir))
    store._db.execute("PRAGMA synchronous=OFF")  # setup speed only; see the module docstring
    service = KmsService(ServiceDeps(store=store, clock=SystemClock(), audit=_NoAudit(),
                                     authorizer=OwnAccountAuthorizer()))
    root = CallContext(principal=Principal.account_root(ACCOUNT, "AKIAROOT"), region="us-east-1",
                       request_id=str(uuid.uuid4()))
    params = {"Policy": json.dumps(KEY_POLICY), "BypassPolicyLockoutSafetyCheck": True}
    arns = []
    try:
        for _ in range(count):
            created = await service.execute("CreateKey", root, dict(params))
            arns.append(created["KeyMetadata"]["Arn"])
    finally:
        await store.close()
    return arns


def add_keys(data_dir: Path, count: int) -> list[str]:
    """Create `count` more keys in `data_dir` (server stopped); their ARNs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_add(data_dir, count)) if count > 0 else []
