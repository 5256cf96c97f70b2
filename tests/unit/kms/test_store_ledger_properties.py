"""The SQLite store's ledger under any sequence of its writes (hypothesis): whatever keytrail itself
writes, reopens included (as serve restarts) and root key rotations, the store opens again, its
ledger is the one of its rows, and the rows are the ones the calls made. A write that fails
halfway changes neither the rows nor the ledger."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import replace
from itertools import chain
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from keytrail.clock import ManualClock
from keytrail.kms.resealing import DOCUMENT_TABLES
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store_ledger import Ledger
from tests.support.ledger_calls import EVERY_KIND_OF_WRITE, Calls, Step, calls, service_over
from tests.support.ledger_operations import Op, RowModel, operations, run_operation, store_rows
from tests.support.store_documents import ACCOUNT, OURS

# Reopening the file (a restart) and rotating the root key, between any two writes.
_SQLITE_ONLY = st.tuples(st.sampled_from(["reopen", "reseal"]))


def _file(path: Path) -> tuple[str | None, dict[str, list[tuple[str, ...]]], list[tuple[str, tuple[str, ...], str]]]:
    """The ledger document, each table's primary keys, and every row's entry, as keys.db holds them."""
    db = sqlite3.connect(path)
    try:
        found = db.execute("SELECT doc FROM ledger WHERE id = 1").fetchone()
        tables: dict[str, list[tuple[str, ...]]] = {}
        entries = []
        for table in DOCUMENT_TABLES:
            rows = db.execute(f"SELECT {', '.join(table.primary_key)}, doc FROM {table.name}").fetchall()
            tables[table.name] = [tuple(row[:-1]) for row in rows]
            entries += [(table.name, tuple(row[:-1]), row[-1]) for row in rows]
    finally:
        db.close()
    return None if found is None else found[0], tables, entries


async def _run(path: Path, ops: list[Op]) -> None:
    root = RootKey(os.urandom(32))
    store, model = SqliteStore(path, root), RowModel()
    try:
        for op in ops:
            if op[0] == "reopen":
                await store.close()
                store = SqliteStore(path, root)  # LedgerMismatch here is the bug this test looks for
            elif op[0] == "reseal":
                root = RootKey(os.urandom(32))
                await store.reseal(root)
            else:
                await run_operation(store, model, op)
    finally:
        await store.close()
    ledger, tables, entries = _file(path)
    assert ledger is not None and Ledger.from_doc(root, ledger) == Ledger.of(root, entries)
    assert store_rows(tables) == model.expected()
    again = SqliteStore(path, root)
    try:
        assert {(k.region, k.key_id) for k in await again.all_keys()} == model.keys
    finally:
        await again.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(operations(_SQLITE_ONLY))
def test_any_sequence_of_writes_leaves_a_store_that_opens_and_matches_its_ledger(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_run(Path(directory) / "keys.db", ops))


def _fail_inserts_of(path: Path, key_id: str) -> None:
    """A real SQLite error partway through a write's transaction: the insert of key `key_id`."""
    db = sqlite3.connect(path)
    with db:
        db.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON keys WHEN NEW.key_id = '{key_id}' "
                   "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    db.close()


async def test_a_write_failing_halfway_changes_neither_rows_nor_ledger_and_later_writes_keep_in_step(
        tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    store = SqliteStore(path, root)
    first, second = replace(OURS, key_id="k0"), replace(OURS, key_id="k1")
    await store.put_keys([first, second])
    _fail_inserts_of(path, "boom")
    with pytest.raises(sqlite3.IntegrityError, match="refused by the test"):
        # Its first statements (k0 and its rows deleted, k1 written) are made before the failure.
        await store.delete_key(first, [replace(second, description="changed"), replace(OURS, key_id="boom")])
    with pytest.raises(sqlite3.IntegrityError):
        await store.put_keys([replace(second, description="again"), replace(OURS, key_id="boom")])
    assert await store.get_key(ACCOUNT, OURS.region, "k0") == first  # memory as the file: unchanged
    await store.put_key(replace(first, description="after"))  # the next write starts from the ledger of before
    await store.close()
    ledger, tables, entries = _file(path)
    assert ledger is not None and Ledger.from_doc(root, ledger) == Ledger.of(root, entries)
    assert sorted(tables["keys"]) == [(ACCOUNT, OURS.region, "k0"), (ACCOUNT, OURS.region, "k1")]
    again = SqliteStore(path, root)
    assert (await again.get_key(ACCOUNT, OURS.region, "k1")) == second
    await again.close()


async def _run_calls(path: Path, steps: list[Step]) -> None:
    root, clock = RootKey(os.urandom(32)), ManualClock()
    store = SqliteStore(path, root)
    calls = Calls(service_over(store, clock), clock)
    try:
        for step in steps:
            if step[0] == "restart":
                await store.close()
                store = SqliteStore(path, root)  # LedgerMismatch here is the bug this test looks for
                calls.service = service_over(store, clock)
            else:
                await calls.run(step)
    finally:
        await store.close()
    ledger, _, entries = _file(path)
    assert ledger is not None and Ledger.from_doc(root, ledger) == Ledger.of(root, entries)
    await SqliteStore(path, root).close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(calls(), st.just([("restart",)])), max_size=4).map(lambda parts: list(chain(*parts))))
@example([*EVERY_KIND_OF_WRITE[:8], ("restart",), *EVERY_KIND_OF_WRITE[8:]])
def test_any_sequence_of_kms_calls_leaves_a_store_that_opens_and_matches_its_ledger(steps: list[Step]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        asyncio.run(_run_calls(Path(directory) / "keys.db", steps))


_REPO = Path(__file__).resolve().parents[3]
_CRASHING_WRITER = """
import asyncio, os, sys
from dataclasses import replace
from pathlib import Path
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.store_documents import GRANT, OURS

async def main() -> None:
    store = SqliteStore(Path(sys.argv[1]), RootKey(bytes.fromhex(sys.argv[2])))
    first, second = replace(OURS, key_id="k0"), replace(OURS, key_id="k1")
    await store.put_keys([first, second])
    await store.put_grant(replace(GRANT, key_id="k0"))
    # The process dies inside delete_key's transaction: k0 and its grant deleted, k1 being written.
    store._db.create_function("die", 0, lambda: os._exit(9))
    store._db.execute("CREATE TEMP TRIGGER die AFTER INSERT ON keys WHEN NEW.key_id = 'k1' BEGIN SELECT die(); END")
    await store.delete_key(first, [replace(second, description="changed")])

asyncio.run(main())
"""


def test_a_process_dying_inside_a_write_leaves_rows_and_ledger_as_before_it(tmp_path: Path) -> None:
    secret, path = os.urandom(32), tmp_path / "keys.db"
    died = subprocess.run([sys.executable, "-c", _CRASHING_WRITER, str(path), secret.hex()],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(_REPO / "src"), str(_REPO)])},
                          capture_output=True)
    assert died.returncode == 9, died.stderr
    ledger, tables, entries = _file(path)
    root = RootKey(secret)
    assert ledger is not None and Ledger.from_doc(root, ledger) == Ledger.of(root, entries)
    assert sorted(tables["keys"]) == [(ACCOUNT, OURS.region, "k0"), (ACCOUNT, OURS.region, "k1")]
    assert len(tables["grants"]) == 1
    SqliteStore(path, root)._db.close()  # opens: no LedgerMismatch


async def test_every_kind_of_write_through_kms_calls_keeps_the_ledger_in_step(tmp_path: Path) -> None:
    """The writes the property test above may miss, for sure: a key deleted at the end of its
    waiting period with its alias and grant, a replica made primary and the other copy deleted
    (the primary written without it), imported material expired; then the store opens."""
    root, clock, path = RootKey(os.urandom(32)), ManualClock(), tmp_path / "keys.db"
    store = SqliteStore(path, root)
    calls = Calls(service_over(store, clock), clock)
    for step in EVERY_KIND_OF_WRITE:
        await calls.run_or_raise(step)  # each one succeeds
    await store.close()
    again = SqliteStore(path, root)
    try:
        keys = {(key.region, key.key_id): key.state.value for key in await again.all_keys()}
        assert keys == {("us-east-1", calls.keys[2]): "PendingImport", ("eu-west-1", calls.keys[1]): "Enabled"}
        assert [a.name for a in await again.list_aliases(ACCOUNT, "us-east-1")] == []
        assert await again.all_grants("us-east-1") == [] and await again.all_grants("eu-west-1") == []
    finally:
        await again.close()
    ledger, _, entries = _file(path)
    assert ledger is not None and Ledger.from_doc(root, ledger) == Ledger.of(root, entries)
