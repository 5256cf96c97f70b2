"""The PostgreSQL store's ledger (real server at 127.0.0.1:5432): a row put back to an earlier
authentic version, a row deleted, a deleted row inserted again, the ledger row deleted: a node
refuses to connect, and a running one, at its next check, refuses every call until restarted (one
log line; the health check names it). Untouched, the store passes its checks after many writes by
two nodes; a store of the version before the ledger is given one; root key rotation keeps it; and
the calls that only read never wait for the ledger's lock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from dataclasses import replace
from types import SimpleNamespace
from typing import cast

import asyncpg
import pytest

from keytrail.cli.health import NodeHealth, StoreProbe
from keytrail.cli.node import Node, _key_inventory, _scheduler
from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authentic_docs import verify
from keytrail.kms.authz import OwnAccountAuthorizer
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.store import Alias
from keytrail.kms.store_ledger import LedgerMismatch
from tests.support.postgres import fetch
from tests.support.store_documents import (
    ACCOUNT,
    ALIAS,
    GRANT,
    NOW,
    OTHER,
    OURS,
    REGION,
    TOKEN,
    seeded,
    with_mac_of_before_the_ledger,
)

pytestmark = pytest.mark.integration

TIGHT = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*"}]}'
REFUSAL = "The request was rejected because an internal exception occurred."


async def _store(dsn: str, root: RootKey) -> PostgresStore:
    return await seeded(await PostgresStore.connect(dsn, root))


async def _refuses_from_its_next_check(store: PostgresStore, detail: str, caplog: pytest.LogCaptureFixture) -> None:
    """The running node's check finds `detail`; from then on every call is refused, and the health
    check says why."""
    assert not store.tampering.ledger_mismatch
    with caplog.at_level(logging.ERROR):
        assert not await store.check_ledger()  # what the background task runs every minute
    assert store.tampering.ledger_mismatch  # for /metrics: KeytrailKeyStoreLedgerMismatch pages
    for call in (store.get_key(ACCOUNT, REGION, OTHER.key_id), store.list_grants(ACCOUNT, REGION, OTHER.key_id),
                 store.put_alias(replace(ALIAS, name="alias/after")), store.all_keys()):
        with pytest.raises(errors.KMSInternalException) as refused:
            await call
        assert refused.value.message == REFUSAL
    health = await NodeHealth(None, StoreProbe(store))()
    assert health["status"] == "unhealthy" and health["keyStore"].startswith(
        "the key store does not match its ledger (rows rolled back, deleted or added outside keytrail): ")
    assert re.search(detail, health["keyStore"]), health
    # /metrics leaves the key inventory out, as for a store that cannot be read, and still answers.
    assert await _key_inventory(cast(Node, SimpleNamespace(service=SimpleNamespace(store=store)))) == ""
    lines = [r.getMessage() for r in caplog.records if "does not match its ledger" in r.getMessage()]
    assert len(lines) == 1 and "refused until the node restarts" in lines[0], lines


async def test_a_key_put_back_to_its_document_of_before_is_found_running_and_at_connect(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    [(before,)] = await fetch(dsn, "SELECT doc FROM kms_keys WHERE key_id=$1", OURS.key_id)
    await store.put_key(replace(OURS, policy=TIGHT))
    await fetch(dsn, "UPDATE kms_keys SET doc=$1 WHERE key_id=$2", before, OURS.key_id)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS  # authentic: only the ledger shows it
    await _refuses_from_its_next_check(store, "as many rows as the ledger counts, but not the same ones", caplog)
    await store.close()
    with pytest.raises(LedgerMismatch, match="as many rows as the ledger counts"):
        await PostgresStore.connect(dsn, root)


async def test_a_deleted_row_is_found_running_and_at_connect(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await fetch(dsn, "DELETE FROM kms_aliases WHERE name=$1", ALIAS.name)
    await _refuses_from_its_next_check(store, r"aliases 0 row\(s\), the ledger 1", caplog)
    await store.close()
    with pytest.raises(LedgerMismatch, match=r"aliases 0 row\(s\), the ledger 1"):
        await PostgresStore.connect(dsn, root)


async def test_a_revoked_grant_inserted_again_is_found_running_and_at_connect(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    [revoked] = await fetch(dsn, "SELECT * FROM kms_grants WHERE grant_id=$1", GRANT.grant_id)
    await store.delete_grant(GRANT)
    await fetch(dsn, f"INSERT INTO kms_grants VALUES ({', '.join(f'${n}' for n in range(1, len(revoked) + 1))})",
                *revoked.values())
    await _refuses_from_its_next_check(store, r"grants 1 row\(s\), the ledger 0", caplog)
    await store.close()
    with pytest.raises(LedgerMismatch, match=r"grants 1 row\(s\), the ledger 0"):
        await PostgresStore.connect(dsn, root)
    await fetch(dsn, "DELETE FROM kms_grants WHERE grant_id=$1", GRANT.grant_id)
    await (await PostgresStore.connect(dsn, root)).close()  # as keytrail left it


async def test_the_background_check_finds_a_deleted_row_by_itself(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    await (await _store(dsn, root)).close()
    store = await PostgresStore.connect(dsn, root, check_every=0.2)
    await fetch(dsn, "DELETE FROM kms_grants")
    with caplog.at_level(logging.ERROR):
        for _ in range(50):
            await asyncio.sleep(0.1)
            with contextlib.suppress(LedgerMismatch):
                await store.ping()
                continue
            break
    with pytest.raises(errors.KMSInternalException):
        await store.get_key(ACCOUNT, REGION, OURS.key_id)
    await store.close()
    assert [r.getMessage() for r in caplog.records if "ledger" in r.getMessage()] == [
        "key store: the key store does not match its ledger (rows rolled back, deleted or added outside keytrail): "
        "grants 0 row(s), the ledger 1: every call on it is refused until the node restarts (which refuses to start "
        "until the database is restored)"]


async def test_the_scheduler_says_once_that_a_store_off_its_ledger_refuses_its_ticks(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    store = await _store(dsn, RootKey(os.urandom(32)))
    await fetch(dsn, "DELETE FROM kms_grants")
    assert not await store.check_ledger()
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(NOW), audit=_Unrecorded(),
                                     authorizer=OwnAccountAuthorizer()))
    node = SimpleNamespace(service=service, settings=SimpleNamespace(scheduler_interval_seconds=0.01))
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        scheduler = asyncio.create_task(_scheduler(cast(Node, node)))
        await asyncio.sleep(0.3)  # some 30 ticks, each refused
        scheduler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await scheduler
    await store.close()
    assert [r.getMessage() for r in caplog.records if "maintenance" in r.getMessage()] == [
        f"scheduled key maintenance failed: {REFUSAL} (said again only once it runs, or fails otherwise)"]


class _Unrecorded:
    async def record(self, call: object) -> None:
        return None


async def test_a_deleted_ledger_row_stops_the_next_write_and_the_next_connect(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await fetch(dsn, "DELETE FROM kms_ledger")
    with pytest.raises(errors.KMSInternalException):
        await store.put_alias(Alias(ACCOUNT, REGION, "alias/new", OTHER.key_id, NOW, NOW))
    with pytest.raises(errors.KMSInternalException):  # and every call after it
        await store.get_key(ACCOUNT, REGION, OURS.key_id)
    await store.close()
    with pytest.raises(LedgerMismatch, match="the ledger row is missing, though the documents were written with one"):
        await PostgresStore.connect(dsn, root)
    assert await fetch(dsn, "SELECT name FROM kms_aliases WHERE name='alias/new'") == []


async def test_a_dropped_ledger_table_stops_the_next_write_as_a_deleted_ledger_row_does(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await fetch(dsn, "DROP TABLE kms_ledger")
    with pytest.raises(errors.KMSInternalException):  # an AWS error, not the database's (a 500)
        await store.put_alias(Alias(ACCOUNT, REGION, "alias/new", OTHER.key_id, NOW, NOW))
    with pytest.raises(errors.KMSInternalException):  # and every call after it, before the next check
        await store.get_key(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(LedgerMismatch, match='a table of the key store is missing .relation "kms_ledger"'):
        await store.ping()  # what the health check says
    await store.close()


async def test_two_nodes_writing_together_leave_a_store_that_matches_its_ledger(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    first = await _store(dsn, root)
    second = await PostgresStore.connect(dsn, root)

    async def writes(store: PostgresStore, node: int) -> None:
        for n in range(15):
            name = f"alias/{node}-{n}"
            assert await store.add_alias(Alias(ACCOUNT, REGION, name, OURS.key_id, NOW, NOW))
            await store.put_grant(replace(GRANT, grant_id=f"{node}{n:063x}"))
            async with store.key_lock(ACCOUNT, REGION, OURS.key_id):
                await store.put_key(replace(OURS, description=f"{node}-{n}"))
            if n % 2:
                await store.delete_alias(Alias(ACCOUNT, REGION, name, OURS.key_id, NOW, NOW))
            assert not await store.update_alias(Alias(ACCOUNT, REGION, f"alias/none-{n}", OURS.key_id, NOW, NOW))

    await asyncio.gather(writes(first, 1), writes(second, 2))
    await first.put_import_parameters(TOKEN)
    await second.delete_key(OTHER)  # its grants with it
    assert await first.check_ledger() and await second.check_ledger()
    await first.close()
    await second.close()
    again = await PostgresStore.connect(dsn, root)
    assert len(await again.list_aliases(ACCOUNT, REGION)) == 1 + 2 * 8
    await again.close()


async def test_a_store_of_the_version_before_the_ledger_is_given_one_as_a_node_connects(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    await (await _store(dsn, root)).close()
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute("DROP TABLE kms_ledger")
        for table, key in (("keys", ("account", "region", "key_id")), ("aliases", ("account", "region", "name")),
                           ("grants", ("account", "region", "key_id", "grant_id"))):
            for found in await connection.fetch(f"SELECT {', '.join(key)}, doc FROM kms_{table}"):
                row = tuple(found[column] for column in key)
                await connection.execute(f"UPDATE kms_{table} SET doc=$1 WHERE doc=$2",
                                         with_mac_of_before_the_ledger(root, table, row, found["doc"]), found["doc"])
    finally:
        await connection.close()
    store = await PostgresStore.connect(dsn, root)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    assert await store.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    assert await store.check_ledger()
    await store.close()
    [(doc,)] = await fetch(dsn, "SELECT doc FROM kms_aliases")
    verify(root, "aliases", (ACCOUNT, REGION, ALIAS.name), doc)  # today's MAC
    await fetch(dsn, "DELETE FROM kms_grants")
    with pytest.raises(LedgerMismatch, match=r"grants 0 row\(s\), the ledger 1"):
        await PostgresStore.connect(dsn, root)


async def test_root_key_rotation_keeps_the_ledger_under_the_new_key(dsn: str) -> None:
    old, new = RootKey(os.urandom(32)), RootKey(os.urandom(32))
    store = await _store(dsn, old)
    assert await store.reseal(new) == 4
    assert await store.check_ledger()
    await store.delete_grant(GRANT)
    await store.close()
    again = await PostgresStore.connect(dsn, new)
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == []
    await again.close()
    await fetch(dsn, "DELETE FROM kms_keys WHERE key_id=$1", OTHER.key_id)
    with pytest.raises(LedgerMismatch, match=r"keys 1 row\(s\), the ledger 2"):
        await PostgresStore.connect(dsn, new)


async def test_calls_that_only_read_do_not_wait_for_the_ledgers_lock(dsn: str) -> None:
    # Encrypt, Decrypt, GenerateDataKey read the key and its grants: never the ledger's row lock,
    # which a write (here another session's) holds for its transaction.
    store = await _store(dsn, RootKey(os.urandom(32)))
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT doc FROM kms_ledger WHERE id = 1 FOR UPDATE")
            reads = asyncio.gather(store.get_key(ACCOUNT, REGION, OURS.key_id),
                                   store.list_grants(ACCOUNT, REGION, OTHER.key_id),
                                   store.get_alias(ACCOUNT, REGION, ALIAS.name))
            assert await asyncio.wait_for(reads, 5) == [OURS, [GRANT], ALIAS]
            write = asyncio.ensure_future(store.put_alias(replace(ALIAS, name="alias/waits")))
            await asyncio.sleep(0.5)
            assert not write.done()  # a write takes its turn
        await asyncio.wait_for(write, 5)
    finally:
        await holder.close()
    assert await store.check_ledger()
    await store.close()


async def test_a_dropped_ledger_table_is_found_running_and_at_connect(
        dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    root = RootKey(os.urandom(32))
    store = await _store(dsn, root)
    await fetch(dsn, "DROP TABLE kms_ledger")
    await _refuses_from_its_next_check(store, 'a table of the key store is missing .relation "kms_ledger" does not '
                                              'exist.', caplog)
    await store.close()
    with pytest.raises(LedgerMismatch, match="the ledger row is missing, though the documents were written with one"):
        await PostgresStore.connect(dsn, root)
