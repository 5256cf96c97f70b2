"""A key service over a SQLite store of its own that allows every call and records nothing, for
unit tests of the key service's own rules (key states, quotas)."""

from __future__ import annotations

import os
from pathlib import Path

from keytrail.clock import ManualClock
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

__all__ = ["ACCOUNT", "AllowAll", "alice", "allow_all_service"]

ACCOUNT = "111122223333"


class AllowAll:
    """Allows every call and drops its audit record."""

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        return None


def allow_all_service(tmp_path: Path) -> tuple[SqliteStore, KmsService]:
    """A key service over a SQLite store of its own that allows and records nothing."""
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    allow = AllowAll()
    return store, KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=allow, authorizer=allow))


def alice() -> CallContext:
    """A call by an IAM user of ACCOUNT in us-east-1."""
    principal = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                          access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE")
    return CallContext(principal=principal, region="us-east-1", request_id="req-1")
