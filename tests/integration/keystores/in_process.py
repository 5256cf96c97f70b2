"""The key service run in this process over a real SQLite store and SoftHSM2, for the custom key
store tests that reach under the service: its live PKCS#11 session, the token's objects."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

from keytrail.clock import ManualClock
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.hsm import HsmCipher, TokenSession
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.conftest import PIN

__all__ = ["ACCOUNT", "REGION", "call", "hsm_key", "live_session", "recorded", "service"]

ACCOUNT, REGION = "111122223333", "us-east-1"


class _Records:
    """The audit sink: it keeps every record, for tests that check what the trail says."""

    def __init__(self) -> None:
        self.calls: list[CallRecord] = []

    async def record(self, call: CallRecord) -> None:
        self.calls.append(call)


@asynccontextmanager
async def service(directory: Path) -> AsyncIterator[KmsService]:
    store = SqliteStore(directory / "keys.db", RootKey(os.urandom(32)))
    yield KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=_Records(), authorizer=OwnAccountAuthorizer()))
    await store.close()


async def call(svc: KmsService, operation: str, **params: Any) -> dict[str, Any]:
    context = CallContext(Principal.account_root(ACCOUNT, "AKIAROOT000000000001"), REGION, os.urandom(8).hex())
    return await svc.execute(operation, context, params)


async def hsm_key(svc: KmsService, cluster: str, trust_anchor: str) -> tuple[str, str]:
    """A connected store on the token `cluster` and a key in it: (store id, key id)."""
    store_id = (await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName=f"store-{cluster}", CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"]
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    key = await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    return store_id, key["KeyMetadata"]["KeyId"]


def recorded(svc: KmsService) -> list[CallRecord]:
    """The audit records of every call the service answered, oldest first."""
    return cast(_Records, svc.deps.audit).calls


async def live_session(svc: KmsService, store_id: str) -> TokenSession:
    """The store's PKCS#11 session in the service (logged in first if it has none)."""
    connections = cast(HsmCipher, svc.ciphers["hsm"]).connections
    [store] = [s for s in await svc.store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
    return await connections.session(store)
