"""Custom key stores a node left CONNECTING or DISCONNECTING when it died, settled by a live
`keytrail serve` (boto3, SoftHSM2): at its start over the data dir the dead node left, and, with a
PostgreSQL store shared with a node that died, at a tick of its scheduler (`--scheduler-interval`).
The dead node's last write is made here, through the key store's own code, as that node made it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.kms.keystores import ConnectionState
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.conftest import PIN
from tests.support.server import ACCOUNT, KeytrailServer
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration

REGION = "us-east-1"


def _store(kms: Any, cluster: str, trust_anchor: str) -> str:
    return str(kms.create_custom_key_store(
        CustomKeyStoreName=f"store-{os.urandom(4).hex()}", CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN)["CustomKeyStoreId"])


def _entry(kms: Any, store_id: str) -> dict[str, Any]:
    return kms.describe_custom_key_stores(CustomKeyStoreId=store_id)["CustomKeyStores"][0]  # type: ignore[no-any-return]


async def _leave_sqlite(data_dir: Path, store_id: str, state: ConnectionState) -> None:
    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir, create=False))
    try:
        [found] = [s for s in await store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
        await store.put_custom_key_store(found.with_state(state))
    finally:
        await store.close()


async def _leave_postgres(dsn: str, data_dir: Path, store_id: str, state: ConnectionState) -> None:
    store = await PostgresStore.connect(dsn, RootKey.load(data_dir, create=False))
    try:
        [found] = [s for s in await store.list_custom_key_stores(ACCOUNT, REGION) if s.store_id == store_id]
        await store.put_custom_key_store(found.with_state(state))
    finally:
        await store.close()


def test_a_data_dir_a_node_killed_while_disconnecting_left_is_settled_at_the_next_start(
    hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, tmp_path: Path,
) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client()
        store_id = _store(kms, next(clusters), trust_anchor)
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        key_id = kms.create_key(Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)["KeyMetadata"]["KeyId"]
        blob = kms.encrypt(KeyId=key_id, Plaintext=b"before the crash")["CiphertextBlob"]
    finally:
        server.kill()  # SIGKILL: nothing of the node's runs after
    # Killed right after the Disconnect's first write: DISCONNECTING, its key still Enabled.
    asyncio.run(_leave_sqlite(server.data_dir, store_id, ConnectionState.DISCONNECTING))
    server.start()
    try:
        kms = server.client()
        assert _entry(kms, store_id)["ConnectionState"] == "DISCONNECTED"
        assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Unavailable"
        with pytest.raises(ClientError) as refused:  # as AWS, on DISCONNECTED
            kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        assert refused.value.response["Error"]["Code"] == "CustomKeyStoreInvalidStateException"
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the crash"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    finally:
        server.stop()
    assert f"custom key store {store_id} ({ACCOUNT} {REGION}) was left DISCONNECTING" in server.log.read_text()


def test_a_store_a_dead_node_left_connecting_is_failed_at_a_tick_of_the_node_sharing_its_store(
    hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, tmp_path: Path, dsn: str,
) -> None:
    # A tick every second, where the default's 30 s would outlast the wait below.
    server = KeytrailServer(tmp_path / "data", "--store", dsn, "--scheduler-interval", "1").start()
    try:
        kms = server.client()
        store_id = _store(kms, next(clusters), trust_anchor)
        # Another node on the same store wrote CONNECTING, then died before its login ended.
        asyncio.run(_leave_postgres(dsn, server.data_dir, store_id, ConnectionState.CONNECTING))
        deadline = time.monotonic() + 20
        while _entry(kms, store_id)["ConnectionState"] == "CONNECTING" and time.monotonic() < deadline:
            time.sleep(0.2)
        entry = _entry(kms, store_id)
        assert (entry["ConnectionState"], entry["ConnectionErrorCode"]) == ("FAILED", "INTERNAL_ERROR")
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
        kms.connect_custom_key_store(CustomKeyStoreId=store_id)
        assert _entry(kms, store_id)["ConnectionState"] == "CONNECTED"
        kms.disconnect_custom_key_store(CustomKeyStoreId=store_id)
    finally:
        server.stop()
    assert f"custom key store {store_id} ({ACCOUNT} {REGION}) was left CONNECTING" in server.log.read_text()
