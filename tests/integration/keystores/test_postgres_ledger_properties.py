"""The PostgreSQL store's ledger under any sequence of its writes (hypothesis, real server at
127.0.0.1:5432), and under two nodes writing together to the same keys and to others: the store
passes its check, a node connects to it again, no write is lost, no two writes wait for each other
for ever, and a write that fails halfway changes neither the rows nor the ledger."""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import replace

import asyncpg
import pytest
from hypothesis import HealthCheck, example, given, settings

from keytrail.clock import ManualClock
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.resealing import DOCUMENT_TABLES
from keytrail.kms.sealing import RootKey
from keytrail.kms.store import Alias
from tests.support.ledger_calls import EVERY_KIND_OF_WRITE, Calls, Step, calls, service_over
from tests.support.ledger_operations import KEY_IDS, REGIONS, Op, RowModel, operations, run_operation, store_rows
from tests.support.postgres import fresh_database
from tests.support.store_documents import ACCOUNT, GRANT, NOW, OURS

pytestmark = pytest.mark.integration


async def _tables(dsn: str) -> dict[str, list[tuple[str, ...]]]:
    connection = await asyncpg.connect(dsn)
    try:
        return {table.name: [tuple(row) for row in await connection.fetch(
                    f"SELECT {', '.join(table.primary_key)} FROM kms_{table.name}")]
                for table in DOCUMENT_TABLES}
    finally:
        await connection.close()


async def _connects_and_checks(dsn: str, root: RootKey) -> None:
    """A node connects (which checks the rows against the ledger) and its check passes."""
    again = await PostgresStore.connect(dsn, root)
    try:
        assert await again.check_ledger()
    finally:
        await again.close()


async def _run(ops: list[Op]) -> None:
    root = RootKey(os.urandom(32))
    async with fresh_database() as dsn:
        store, model = await PostgresStore.connect(dsn, root), RowModel()
        try:
            for op in ops:
                await run_operation(store, model, op)
            assert await store.check_ledger()
        finally:
            await store.close()
        assert store_rows(await _tables(dsn)) == model.expected()
        await _connects_and_checks(dsn, root)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations())
# A token written again with a later valid_to kept its first one: the next put deleted it as stale.
@example([("put_import_parameters", "t1", 0), ("put_import_parameters", "t1", 1), ("put_import_parameters", "t0", 3)])
def test_any_sequence_of_writes_leaves_a_store_that_matches_its_ledger(ops: list[Op]) -> None:
    asyncio.run(_run(ops))


async def _node_writes(store: PostgresStore, node: int, seed: int) -> None:
    """Writes of one node on keys both nodes write, some under the key's lock as the service takes it."""
    chance = random.Random(seed)
    for n in range(30):
        region, key_id = chance.choice(REGIONS), chance.choice(KEY_IDS)
        key = replace(OURS, region=region, key_id=key_id, description=f"{node}-{n}")
        alias = Alias(ACCOUNT, region, f"alias/{chance.choice('ab')}", key_id, NOW, NOW)
        grant = replace(GRANT, region=region, key_id=key_id, grant_id=f"g{chance.randrange(3)}")
        match chance.randrange(7):
            case 0:
                async with store.key_lock(ACCOUNT, region, key_id):
                    await store.get_key(ACCOUNT, region, key_id)
                    await store.put_keys([key, replace(key, region=REGIONS[region == REGIONS[0]])])
            case 1:
                async with store.key_lock(ACCOUNT, region, key_id):
                    await store.delete_key(key, [replace(key, key_id=chance.choice(KEY_IDS))])
            case 2:
                await store.add_alias(alias)
            case 3:
                await store.update_alias(alias)
            case 4:
                await store.delete_alias(alias)
            case 5:
                await store.put_grant(grant)
            case _:
                await store.delete_grant(grant)


async def test_two_nodes_writing_the_same_keys_together_keep_the_ledger_and_never_wait_for_ever(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    first, second = await PostgresStore.connect(dsn, root), await PostgresStore.connect(dsn, root)
    try:
        for seed in range(3):
            # A deadlock between the keys' advisory locks and the ledger row's lock would hang here.
            await asyncio.wait_for(asyncio.gather(*(_node_writes(node, n, seed * 10 + n) for n, node in
                                                    enumerate((first, second, first, second)))), 60)
            assert await first.check_ledger() and await second.check_ledger()
    finally:
        await first.close()
        await second.close()
    await _connects_and_checks(dsn, root)


async def test_two_nodes_writing_together_lose_no_write(dsn: str) -> None:
    """Each node adds grants and aliases of its own and writes the same key: every grant and
    alias is there afterwards, and the ledger counts them."""
    root = RootKey(os.urandom(32))
    nodes = [await PostgresStore.connect(dsn, root) for _ in range(2)]

    async def writes(store: PostgresStore, node: int) -> None:
        for n in range(20):
            await store.put_grant(replace(GRANT, key_id=OURS.key_id, grant_id=f"{node}-{n}"))
            assert await store.add_alias(Alias(ACCOUNT, OURS.region, f"alias/{node}-{n}", OURS.key_id, NOW, NOW))
            await store.put_key(replace(OURS, description=f"{node}-{n}"))

    try:
        await asyncio.wait_for(asyncio.gather(*(writes(store, n) for n, store in enumerate(nodes))), 60)
        assert len(await nodes[0].list_grants(ACCOUNT, OURS.region, OURS.key_id)) == 40
        assert len(await nodes[1].list_aliases(ACCOUNT, OURS.region)) == 40
        assert all([await store.check_ledger() for store in nodes])
    finally:
        for store in nodes:
            await store.close()


async def test_a_write_failing_halfway_changes_neither_rows_nor_ledger(dsn: str) -> None:
    root = RootKey(os.urandom(32))
    store = await PostgresStore.connect(dsn, root)
    try:
        await store.put_keys([OURS, replace(OURS, key_id="k1")])
        await store.put_grant(replace(GRANT, key_id=OURS.key_id))
        before = await _tables(dsn)
        # PostgreSQL's text refuses NUL: the last statement of the transaction fails, after the key,
        # its grant and the other key were already written in it.
        with pytest.raises(asyncpg.PostgresError):
            await store.delete_key(OURS, [replace(OURS, key_id="k1", description="changed"),
                                          replace(OURS, key_id="k\x00")])
        assert await _tables(dsn) == before
        assert await store.check_ledger()
        await store.put_key(replace(OURS, description="after"))
        assert await store.check_ledger()
    finally:
        await store.close()
    await _connects_and_checks(dsn, root)



async def _run_calls(steps: list[Step]) -> None:
    root, clock = RootKey(os.urandom(32)), ManualClock()
    async with fresh_database() as dsn:
        store = await PostgresStore.connect(dsn, root)
        calls = Calls(service_over(store, clock), clock)
        try:
            for step in steps:
                await calls.run(step)
            assert await store.check_ledger()
        finally:
            await store.close()
        await _connects_and_checks(dsn, root)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(calls())
@example(EVERY_KIND_OF_WRITE)
def test_any_sequence_of_kms_calls_leaves_a_store_that_matches_its_ledger(steps: list[Step]) -> None:
    asyncio.run(_run_calls(steps))


async def test_a_node_reading_every_row_as_it_connects_while_another_writes_finds_no_mismatch(dsn: str) -> None:
    """With `kms_root_key` deleted (docs/operations.md: that only has the rows read again as the
    next node connects), the node connecting reads the ledger and every row while another node
    writes: it must read them as of one write, not the ledger before a write and a row after it."""
    root = RootKey(os.urandom(32))
    writing = await PostgresStore.connect(dsn, root)
    await writing.put_key(OURS)
    written = 0

    async def writes() -> None:
        nonlocal written
        while True:
            await writing.put_grant(replace(GRANT, key_id=OURS.key_id, grant_id=f"{written}"))
            written += 1

    task = asyncio.create_task(writes())
    connection = await asyncpg.connect(dsn)
    try:
        for _ in range(20):
            await connection.execute("DELETE FROM kms_root_key")
            await (await PostgresStore.connect(dsn, root)).close()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connection.close()
        await writing.close()
    assert written > 20  # the other node wrote all along
    await _connects_and_checks(dsn, root)


async def test_a_database_whose_default_isolation_is_repeatable_read_takes_writes_of_two_nodes_together(
        dsn: str) -> None:
    """Writes wait for the ledger row's lock and then read the rows as the write before left them,
    which READ COMMITTED gives: under a stricter default a write that waited would fail (could not
    serialize), as would a node reading every row as it connects."""
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} SET default_transaction_isolation = 'repeatable read'")
    await admin.close()
    root = RootKey(os.urandom(32))
    nodes = [await PostgresStore.connect(dsn, root) for _ in range(2)]

    async def writes(store: PostgresStore, node: int) -> None:
        for n in range(20):
            await store.put_grant(replace(GRANT, key_id=OURS.key_id, grant_id=f"{node}-{n}"))

    async def connects() -> None:  # every row read as each connects (kms_root_key deleted)
        for _ in range(5):
            admin = await asyncpg.connect(dsn)
            await admin.execute("DELETE FROM kms_root_key")
            await admin.close()
            await (await PostgresStore.connect(dsn, root)).close()

    try:
        await asyncio.wait_for(asyncio.gather(connects(), *(writes(store, n) for n, store in enumerate(nodes))), 60)
        assert len(await nodes[0].list_grants(ACCOUNT, OURS.region, OURS.key_id)) == 40
        assert all([await store.check_ledger() for store in nodes])
    finally:
        for store in nodes:
            await store.close()
    await _connects_and_checks(dsn, root)
