"""The SQLite store's ledger (real keys.db files): a row put back to an earlier authentic version,
a row deleted, a deleted row inserted again, the ledger row deleted or edited: the store does not
open (LedgerMismatch, one line); an untouched store opens after any number of writes; a store of
the version before the ledger is given one; root key rotation keeps it; a whole keys.db put back
from a copy (a backup) opens."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from keytrail.cli.detect import register
from keytrail.kms.authentic_docs import authenticate, verify
from keytrail.kms.codec import grant_to_doc
from keytrail.kms.resealing import DOCUMENT_TABLES
from keytrail.kms.sealing import RootKey, write_root_key_file
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias
from keytrail.kms.store_ledger import Ledger, LedgerMismatch
from tests.support.store_documents import (
    ACCOUNT,
    ALIAS,
    CKS,
    GRANT,
    NOW,
    OTHER,
    OURS,
    REGION,
    TOKEN,
    seeded,
    with_mac_of_before_the_ledger,
)

TIGHT = '{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Principal":"*","Action":"kms:*","Resource":"*"}]}'
SAME_COUNT = "as many rows as the ledger counts, but not the same ones"


async def _store(path: Path, root: RootKey) -> None:
    await (await seeded(SqliteStore(path, root))).close()


def _rows(path: Path, sql: str, *args: str) -> list[tuple[str, ...]]:
    with sqlite3.connect(path) as db:
        found = db.execute(sql, args).fetchall()
    db.close()
    return found


def _execute(path: Path, sql: str, *args: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


def _opens(path: Path, root: RootKey) -> None:
    store = SqliteStore(path, root)
    store._db.close()


async def test_a_key_put_back_to_its_document_of_before_a_policy_change_stops_the_store_opening(
        tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    [(before,)] = _rows(path, "SELECT doc FROM keys WHERE key_id=?", OURS.key_id)
    store = SqliteStore(path, root)
    await store.put_key(replace(OURS, policy=TIGHT))  # the policy tightened
    await store.close()
    _execute(path, "UPDATE keys SET doc=? WHERE key_id=?", before, OURS.key_id)  # authentic, but of before
    with pytest.raises(LedgerMismatch) as refused:
        SqliteStore(path, root)
    assert str(refused.value).startswith("the key store does not match its ledger (rows rolled back, deleted or "
                                         f"added outside keytrail): {SAME_COUNT}")
    remedy = "restore the whole file from a backup taken while serve was stopped"
    assert f"{path} was changed outside keytrail: {remedy}" in str(refused.value)


async def test_a_deleted_row_stops_the_store_opening(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    _execute(path, "DELETE FROM aliases WHERE name=?", ALIAS.name)
    with pytest.raises(LedgerMismatch, match="ledger .rows rolled back, deleted or added outside keytrail.: "
                                             r"aliases 0 row\(s\), the ledger 1\. "):
        SqliteStore(path, root)


async def test_a_revoked_grant_inserted_again_stops_the_store_opening(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    [revoked] = _rows(path, "SELECT * FROM grants WHERE grant_id=?", GRANT.grant_id)
    store = SqliteStore(path, root)
    await store.delete_grant(GRANT)  # RevokeGrant
    await store.close()
    _execute(path, "INSERT INTO grants VALUES (?, ?, ?, ?, ?)", *revoked)  # authentic, MAC and all
    with pytest.raises(LedgerMismatch, match=r"grants 1 row\(s\), the ledger 0"):
        SqliteStore(path, root)
    _execute(path, "DELETE FROM grants WHERE grant_id=?", GRANT.grant_id)
    _opens(path, root)  # as keytrail left it


async def test_a_store_opens_after_many_writes_and_deletes_and_its_ledger_is_that_of_its_rows(
        tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    store = SqliteStore(path, root)
    for n in range(20):
        alias = Alias(ACCOUNT, REGION, f"alias/n{n}", OURS.key_id if n % 2 else OTHER.key_id, NOW, NOW)
        assert await store.add_alias(alias)
        await store.put_key(replace(OURS, description=f"version {n}"))
        await store.put_grant(replace(GRANT, grant_id=f"{n:064x}", key_id=OURS.key_id))
        if n % 3 == 0:
            await store.delete_alias(alias)
            await store.delete_grant(replace(GRANT, grant_id=f"{n:064x}", key_id=OURS.key_id))
    await store.put_import_parameters(TOKEN)
    await store.put_import_parameters(replace(TOKEN, token_id="01" * 16, valid_to=TOKEN.valid_to.replace(
        year=TOKEN.valid_to.year + 1)))  # deletes the first, stale by then, by its valid_to
    await store.put_custom_key_store(CKS)
    await store.delete_custom_key_store(CKS)
    await store.delete_key(OURS)  # its aliases and grants with it, by their key_id column
    await store.close()
    again = SqliteStore(path, root)
    assert [a.name for a in await again.list_aliases(ACCOUNT, REGION)] == ["alias/n10", "alias/n14", "alias/n16",
                                                                          "alias/n2", "alias/n4", "alias/n8"]
    assert await again.get_import_parameters(TOKEN.token_id) is None
    await again.close()
    [(ledger,)] = _rows(path, "SELECT doc FROM ledger")
    entries = [(table.name, tuple(found[:-1]), found[-1]) for table in DOCUMENT_TABLES
               for found in _rows(path, f"SELECT {', '.join(table.primary_key)}, doc FROM {table.name}")]
    assert Ledger.from_doc(root, ledger) == Ledger.of(root, entries)


async def test_a_store_of_the_version_before_the_ledger_is_given_one_as_it_opens(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    _as_the_version_before_the_ledger(path, root)
    store = SqliteStore(path, root)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    assert await store.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    await store.close()
    [(doc,)] = _rows(path, "SELECT doc FROM aliases")
    verify(root, "aliases", (ACCOUNT, REGION, ALIAS.name), doc)  # today's MAC
    _opens(path, root)
    _execute(path, "DELETE FROM grants")
    with pytest.raises(LedgerMismatch, match=r"grants 0 row\(s\), the ledger 1"):  # and it holds from then on
        SqliteStore(path, root)


async def test_a_deleted_or_edited_ledger_row_stops_the_store_opening(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    [(ledger,)] = _rows(path, "SELECT doc FROM ledger")
    _execute(path, "DELETE FROM ledger")  # to have the store take its rows as they are
    with pytest.raises(LedgerMismatch, match="the ledger row is missing, though the documents were written with one"):
        SqliteStore(path, root)
    edited = json.loads(ledger)
    edited["rows"]["grants"] = 0
    _execute(path, "INSERT INTO ledger VALUES (1, ?)", json.dumps(edited, sort_keys=True))
    with pytest.raises(LedgerMismatch, match="the ledger row does not verify under the root key"):
        SqliteStore(path, root)


async def test_an_empty_store_whose_ledger_row_does_not_verify_is_a_ledger_refused_not_a_root_key(
        tmp_path: Path) -> None:
    # No row but the ledger's: nothing tells an edited ledger from one of another root key, and
    # "the root key does not open the key material" would send the operator after a key that may be right.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await SqliteStore(path, root).close()
    [(ledger,)] = _rows(path, "SELECT doc FROM ledger")
    edited = json.loads(ledger)
    edited["rows"]["keys"] = 1
    _execute(path, "UPDATE ledger SET doc = ?", json.dumps(edited, sort_keys=True))
    with pytest.raises(LedgerMismatch, match="the ledger row does not verify under the root key, and the store "
                                             "holds no other row"):
        SqliteStore(path, root)
    _execute(path, "UPDATE ledger SET doc = ?", ledger)
    with pytest.raises(LedgerMismatch, match="the ledger row does not verify under the root key"):
        SqliteStore(path, RootKey(os.urandom(32)))
    await SqliteStore(path, root).close()  # put back as keytrail left it


async def test_root_key_rotation_keeps_the_ledger_under_the_new_key(tmp_path: Path) -> None:
    old, new, path = RootKey(os.urandom(32)), RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root=old)
    store = SqliteStore(path, old)
    await store.put_import_parameters(TOKEN)
    assert await store.reseal(new) == 5
    await store.delete_grant(GRANT)  # kept in step under the new key
    await store.close()
    again = SqliteStore(path, new)
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == []
    await again.close()
    _execute(path, "DELETE FROM keys WHERE key_id=?", OTHER.key_id)
    with pytest.raises(LedgerMismatch, match=r"keys 1 row\(s\), the ledger 2"):
        SqliteStore(path, new)


async def test_rotation_refuses_rows_changed_since_the_store_opened(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    store = SqliteStore(path, root)
    _execute(path, "DELETE FROM grants")  # under the open store: the rotation's ledger must not take it in
    with pytest.raises(LedgerMismatch, match=r"grants 0 row\(s\), the ledger 1"):
        await store.reseal(RootKey(os.urandom(32)))
    await store.close()


async def test_a_whole_keys_db_put_back_from_a_copy_opens_as_the_backup_it_is(tmp_path: Path) -> None:
    # By design: the ledger travels with the rows, and an older copy of both is a backup restored.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    shutil.copy(path, tmp_path / "backup.db")
    store = SqliteStore(path, root)
    await store.delete_grant(GRANT)
    await store.close()
    shutil.copy(tmp_path / "backup.db", path)
    again = SqliteStore(path, root)
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    await again.close()


def _as_the_version_before_the_ledger(path: Path, root: RootKey) -> None:
    """keys.db as the version before wrote it: MACs without the ledger's binding, no ledger."""
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE ledger")
        for table, key in (("keys", "account, region, key_id"), ("aliases", "account, region, name"),
                           ("grants", "account, region, key_id, grant_id")):
            for *row, doc in db.execute(f"SELECT {key}, doc FROM {table}").fetchall():
                db.execute(f"UPDATE {table} SET doc=? WHERE doc=?",
                           (with_mac_of_before_the_ledger(root, table, tuple(row), doc), doc))
    db.close()


async def test_analyze_beside_a_node_of_the_version_before_leaves_the_store_for_the_new_version_to_upgrade(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`keytrail analyze` (new version) reads the store of a node still running the version before:
    had it written the upgrade, the old node's next write (a grant) would not be in the ledger, and
    the new version's first start would refuse the store."""
    monkeypatch.setattr("keytrail.cli.detect.no_core_dumps", lambda: None)  # in this process: tests/conftest.py
    secret, data_dir = os.urandom(32), tmp_path / "data"
    root, path = RootKey(secret), data_dir / "keys.db"
    await _store(path, root)
    _as_the_version_before_the_ledger(path, root)
    write_root_key_file(data_dir / "root.key", secret)
    before = _rows(path, "SELECT doc FROM keys ORDER BY key_id")
    app = typer.Typer()
    register(app)
    # In a thread: the command runs its own event loop.
    result = await asyncio.to_thread(CliRunner().invoke, app, ["analyze", "--data-dir", str(data_dir), "--format",
                                                                "json"])
    assert result.exit_code == 0, result.output
    # Not even the ledger's empty table: analyze opens the file read-only.
    assert _rows(path, "SELECT name FROM sqlite_master WHERE name = 'ledger' AND type = 'table'") == []
    assert _rows(path, "SELECT doc FROM keys ORDER BY key_id") == before
    revoked = replace(GRANT, grant_id="b2" * 32)  # the old node writes on, as it always did
    row = (ACCOUNT, REGION, OTHER.key_id, revoked.grant_id)
    _execute(path, "INSERT INTO grants VALUES (?, ?, ?, ?, ?)", *row, with_mac_of_before_the_ledger(
        root, "grants", row, authenticate(root, "grants", row, grant_to_doc(revoked))))
    store = SqliteStore(path, root)  # the new version's first start: upgraded, the old node's grant with the rest
    assert len(await store.list_grants(ACCOUNT, REGION, OTHER.key_id)) == 2
    await store.close()
    _opens(path, root)


async def test_a_store_opened_without_upgrade_refuses_writes(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store(path, root)
    _as_the_version_before_the_ledger(path, root)
    reader = SqliteStore(path, root, upgrade=False)
    assert await reader.get_key(ACCOUNT, REGION, OURS.key_id) == OURS  # read as the upgrade would have
    with pytest.raises(OSError, match="opened for reading only"):
        await reader.put_alias(replace(ALIAS, name="alias/new"))
    await reader.close()
    _opens(path, root)


def test_a_table_that_holds_no_row_counts_the_same_recorded_or_not() -> None:
    """A ledger recorded before a table existed (an older version's) matches one computed over
    the same rows by a version that counts that table too, empty; a row in it does not."""
    root = RootKey(bytes(32))
    recorded = Ledger.of(root, [("keys", ("a",), authenticate(root, "keys", ("a",), '{"k":1}'))])
    recorded.rows = {"keys": 1}  # as an older version wrote it: no entry for the newer tables
    found = recorded.copy()
    found.rows = {table.name: 0 for table in DOCUMENT_TABLES} | {"keys": 1}
    recorded.check(found)
    found.rows["grants"] = 1
    with pytest.raises(LedgerMismatch, match="grants 1 row"):
        recorded.check(found)
