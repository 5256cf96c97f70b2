"""Nodes upgraded onto a PostgreSQL key store that holds no key's last use yet (written by a version
without `kms_key_last_use`, or by a node killed before it wrote its last second's uses): each node
shares at its start the uses its own consumer counted, so a key used only through node A before
then is used on node B too, and AWS's guard against deleting a key in use holds there."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from keytrail.kms.sealing import ROOT_KEY_ENV, RootKey
from keytrail.kms.store_ledger import Ledger
from tests.integration.test_last_use_nodes import GUARDED, _code, _last_use
from tests.support.postgres import database_url, fetch_value, scratch_database
from tests.support.server import KeytrailServer
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration


@pytest.fixture
def store_url() -> Iterator[str]:
    """A database of the test's own on the real server at 127.0.0.1:5432, dropped afterwards."""
    with scratch_database() as name:
        yield database_url(name)



async def _as_before_the_table(dsn: str, root: RootKey) -> None:
    """The store as a version without `kms_key_last_use` leaves it: no row there, and the ledger
    counting none (the table made empty by the first node of the new version)."""
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            ledger = Ledger.from_doc(root, await connection.fetchval("SELECT doc FROM kms_ledger WHERE id = 1"))
            for row in await connection.fetch("SELECT account, region, key_id, doc FROM kms_key_last_use"):
                ledger.remove(root, "key_last_use", (row["account"], row["region"], row["key_id"]), row["doc"])
            await connection.execute("DELETE FROM kms_key_last_use")
            await connection.execute("UPDATE kms_ledger SET doc = $1 WHERE id = 1", ledger.to_doc(root))
    finally:
        await connection.close()


def test_a_key_used_through_one_node_before_the_upgrade_is_used_on_the_other_after_it(
        tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = os.urandom(32)
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(secret).decode())
    a = KeytrailServer(tmp_path / "a", "--store", store_url).start()
    on_a = a.client("alice")
    guarded = on_a.create_key(Policy=GUARDED)["KeyMetadata"]["Arn"]
    a.advance(40 * 86400)
    used = on_a.encrypt(KeyId=guarded, Plaintext=b"x")["ResponseMetadata"]["RequestId"]
    eventually_blocking(lambda: _last_use(on_a, guarded), what="A's consumer to count its call")
    assert a.stop() == 0
    asyncio.run(_as_before_the_table(store_url, RootKey(secret)))
    assert asyncio.run(fetch_value(store_url, "SELECT count(*) FROM kms_key_last_use")) == 0

    a.start()  # both nodes of the new version
    b = KeytrailServer(tmp_path / "b", "--store", store_url).start()
    try:
        on_b = b.client("alice")
        b.advance(40 * 86400)  # the key is 40 days old on B too
        eventually_blocking(lambda: _last_use(on_b, guarded).get("KmsRequestId") == used,
                            what="B's GetKeyLastUsage to name the Encrypt A served before the upgrade")
        assert _code(on_b.schedule_key_deletion, KeyId=guarded, PendingWindowInDays=7) == "AccessDeniedException"
    finally:
        assert b.stop() == 0
        assert a.stop() == 0
