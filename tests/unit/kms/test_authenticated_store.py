"""The SQLite store's documents are authenticated under the root key, each bound to its row: an
edited, copied or forged row is refused (KMSInternalException, one log line naming the row), an
old store without MACs is upgraded as it opens, a stripped one is not, and root key rotation
authenticates everything again under the new key.

A row copied or forged into a store with a ledger already stops the store from opening
(tests/unit/kms/test_store_ledger.py): the tests of what the MACs refuse on their own take such
rows into the ledger first (`sqlite_ledger_as_a_node_would`), as the upgrade of a store of the
version before the ledger takes whatever rows it holds."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.codec import alias_to_doc, grant_to_doc
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias, Grant
from keytrail.kms.store_ledger import LedgerMismatch
from tests.support.store_documents import (
    ACCOUNT,
    ALIAS,
    CKS,
    FORGED,
    GRANT,
    NOW,
    OTHER,
    OURS,
    REGION,
    TOKEN,
    legacy_key_doc,
    seeded,
    sqlite_ledger_as_a_node_would,
)

OPEN_TO_ALL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]})


async def _store_with_two_keys(path: Path, root: RootKey) -> None:
    await (await seeded(SqliteStore(path, root))).close()


def _doc(path: Path, sql: str, *args: str) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute(sql, args).fetchone()[0])


def _execute(path: Path, sql: str, *args: str) -> None:
    with sqlite3.connect(path) as db:
        db.execute(sql, args)
    db.close()


async def test_a_key_whose_policy_was_edited_is_refused_and_the_others_still_serve(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    doc = json.loads(_doc(path, "SELECT doc FROM keys WHERE key_id=?", OURS.key_id))
    doc["policy"] = OPEN_TO_ALL  # the MAC member kept as it was
    _execute(path, "UPDATE keys SET doc=? WHERE key_id=?", json.dumps(doc, separators=(",", ":")), OURS.key_id)
    with caplog.at_level(logging.ERROR):
        store = SqliteStore(path, root)
        with pytest.raises(errors.KMSInternalException) as refused:
            await store.get_key(ACCOUNT, REGION, OURS.key_id)
        with pytest.raises(errors.KMSInternalException):
            await store.list_keys(ACCOUNT, REGION)  # ListKeys would otherwise hide it
    assert await store.get_key(ACCOUNT, REGION, OTHER.key_id) == OTHER
    assert await store.all_keys() == [OTHER]  # the scheduler goes on with the others
    row = f"the keys document of row {ACCOUNT}/{REGION}/{OURS.key_id} does not verify"
    lines = [r.getMessage() for r in caplog.records if row in r.getMessage()]
    assert len(lines) == 3 and "kms:*" not in "".join(lines)  # at opening, then once per refused call
    assert refused.value.message == "The request was rejected because an internal exception occurred."
    await store.close()


async def test_a_document_copied_to_another_row_is_refused(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    # The other key's grant, copied whole (MAC and all) to our key: a grant on a key it was not made for.
    grant = _doc(path, "SELECT doc FROM grants WHERE key_id=?", OTHER.key_id)
    _execute(path, "INSERT INTO grants VALUES (?, ?, ?, ?, ?)", ACCOUNT, REGION, OURS.key_id, GRANT.grant_id, grant)
    # Our key's document in the other key's row: the other key id now carries our policy and material.
    ours = _doc(path, "SELECT doc FROM keys WHERE key_id=?", OURS.key_id)
    _execute(path, "UPDATE keys SET doc=? WHERE key_id=?", ours, OTHER.key_id)
    with pytest.raises(LedgerMismatch, match="grants 2 row.s., the ledger 1"):
        SqliteStore(path, root)
    sqlite_ledger_as_a_node_would(path, root)
    store = SqliteStore(path, root)
    with pytest.raises(errors.KMSInternalException):
        await store.list_grants(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):
        await store.get_key(ACCOUNT, REGION, OTHER.key_id)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    await store.close()


async def test_a_forged_row_is_refused(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    forged = FORGED
    without_mac, made_up_mac = grant_to_doc(forged), '{"mac":"' + "00" * 32 + '",' + grant_to_doc(forged)[1:]
    _execute(path, "INSERT INTO grants VALUES (?, ?, ?, ?, ?)", ACCOUNT, REGION, OURS.key_id, forged.grant_id,
             without_mac)
    _execute(path, "INSERT INTO aliases VALUES (?, ?, ?, ?, ?)", ACCOUNT, REGION, "alias/forged", OURS.key_id,
             made_up_mac.replace(forged.grant_id, "x"))
    not_hex = '{"mac":"' + "é" * 64 + '",' + alias_to_doc(Alias(ACCOUNT, REGION, "alias/é", OURS.key_id, NOW, NOW))[1:]
    _execute(path, "INSERT INTO aliases VALUES (?, ?, ?, ?, ?)", ACCOUNT, REGION, "alias/é", OURS.key_id, not_hex)
    with pytest.raises(LedgerMismatch, match="aliases 3 row.s., the ledger 1; grants 2 row.s., the ledger 1"):
        SqliteStore(path, root)
    sqlite_ledger_as_a_node_would(path, root)
    store = SqliteStore(path, root)
    with pytest.raises(errors.KMSInternalException):
        await store.list_grants(ACCOUNT, REGION, OURS.key_id)
    with pytest.raises(errors.KMSInternalException):  # a grant token, RetireGrant, RevokeGrant naming it
        await store.get_grant(ACCOUNT, REGION, OURS.key_id, forged.grant_id)
    assert await store.count_grants(ACCOUNT, REGION, OURS.key_id) == 1  # CreateGrant's quota counts it
    with pytest.raises(errors.KMSInternalException):
        await store.get_alias(ACCOUNT, REGION, "alias/forged")
    with pytest.raises(errors.KMSInternalException):  # refused like any other, not a TypeError
        await store.get_alias(ACCOUNT, REGION, "alias/é")
    assert not await store.add_alias(Alias(ACCOUNT, REGION, "alias/forged", OTHER.key_id, NOW, NOW))  # still taken
    assert await store.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    await store.close()


async def _legacy_store(path: Path, root: RootKey) -> None:
    await SqliteStore(path, root).close()  # the schema
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE ledger")  # versions before MACs had none
        for key in (OURS, OTHER):
            db.execute("INSERT INTO keys VALUES (?, ?, ?, ?)",
                       (ACCOUNT, REGION, key.key_id, legacy_key_doc(key, root)))
        db.execute("INSERT INTO aliases VALUES (?, ?, ?, ?, ?)",
                   (ACCOUNT, REGION, ALIAS.name, OURS.key_id, alias_to_doc(ALIAS)))
        db.execute("INSERT INTO grants VALUES (?, ?, ?, ?, ?)",
                   (ACCOUNT, REGION, OTHER.key_id, GRANT.grant_id, grant_to_doc(GRANT)))
    db.close()


async def test_an_old_store_without_macs_is_upgraded_as_it_opens_and_then_serves(tmp_path: Path) -> None:
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _legacy_store(path, root)
    store = SqliteStore(path, root)
    assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
    assert await store.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    await store.put_alias(Alias(ACCOUNT, REGION, "alias/new", OTHER.key_id, NOW, NOW))
    await store.close()
    with sqlite3.connect(path) as db:
        docs = [doc for table in ("keys", "aliases", "grants") for (doc,) in db.execute(f"SELECT doc FROM {table}")]
    db.close()
    assert len(docs) == 5 and all(doc.startswith('{"mac":"') for doc in docs)
    again = SqliteStore(path, root)
    assert [a.name for a in await again.list_aliases(ACCOUNT, REGION)] == ["alias/new", "alias/ours"]
    assert await again.get_key(ACCOUNT, REGION, OTHER.key_id) == OTHER
    await again.close()


async def test_a_store_whose_macs_were_stripped_is_not_taken_for_an_old_one(tmp_path: Path) -> None:
    # The downgrade: every MAC and the ledger removed so the store looks like one from before, and a
    # forged grant added, to be upgraded with the rest. The material, sealed since, gives it away.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    with sqlite3.connect(path) as db:
        for table in ("keys", "aliases", "grants"):
            for rowid, doc in db.execute(f"SELECT rowid, doc FROM {table}").fetchall():
                body = json.loads(doc)
                del body["mac"]
                db.execute(f"UPDATE {table} SET doc=? WHERE rowid=?", (json.dumps(body), rowid))
        db.execute("INSERT INTO grants VALUES (?, ?, ?, ?, ?)",
                   (ACCOUNT, REGION, OURS.key_id, FORGED.grant_id, grant_to_doc(FORGED)))
    db.close()
    with pytest.raises(LedgerMismatch, match="grants 2 row.s., the ledger 1"):
        SqliteStore(path, root)
    _execute(path, "DELETE FROM ledger")
    with pytest.raises(LedgerMismatch, match="holds a value sealed since documents carry a MAC.*MACs were stripped"):
        SqliteStore(path, root)
    assert not _doc(path, "SELECT doc FROM grants WHERE grant_id=?", FORGED.grant_id).startswith('{"mac"')


async def test_root_key_rotation_authenticates_every_document_under_the_new_key(tmp_path: Path) -> None:
    old, new, path = RootKey(os.urandom(32)), RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, old)
    store = SqliteStore(path, old)
    await store.put_import_parameters(TOKEN)
    await store.put_custom_key_store(CKS)
    assert await store.reseal(new) == 6
    await store.put_grant(Grant(ACCOUNT, REGION, OURS.key_id, "b2" * 32, "arn:aws:iam::111122223333:role/x",
                                ("Encrypt",), ACCOUNT, NOW, token="t"))  # written under the new key now
    await store.close()
    with pytest.raises(SealError):
        SqliteStore(path, old)
    again = SqliteStore(path, new)
    assert [k.key_id for k in await again.list_keys(ACCOUNT, REGION)] == sorted([OURS.key_id, OTHER.key_id])
    assert await again.get_alias(ACCOUNT, REGION, ALIAS.name) == ALIAS
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    assert len(await again.list_grants(ACCOUNT, REGION, OURS.key_id)) == 1
    assert await again.get_import_parameters(TOKEN.token_id) == TOKEN
    assert await again.list_custom_key_stores(ACCOUNT, REGION) == [CKS]
    await again.close()


async def test_a_key_served_from_memory_is_not_verified_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The hot path (Encrypt on a cached key) reads the key from memory: verified once, as the store opened.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    store = SqliteStore(path, root)
    macs: list[bytes] = []
    original = root.mac
    monkeypatch.setattr(root, "mac", lambda document: macs.append(document) or original(document))
    for _ in range(3):
        assert await store.get_key(ACCOUNT, REGION, OURS.key_id) == OURS
        assert await store.list_grants(ACCOUNT, REGION, OURS.key_id) == []
    assert macs == []
    await store.close()


async def test_a_refused_row_deleted_with_its_key_is_forgotten(tmp_path: Path) -> None:
    # DeleteKey deletes the key's aliases and grants by their columns, refused ones too: their
    # names are free again, and the calls that listed them answer.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    await _store_with_two_keys(path, root)
    forged = FORGED
    _execute(path, "INSERT INTO grants VALUES (?, ?, ?, ?, ?)", ACCOUNT, REGION, OURS.key_id, forged.grant_id,
             grant_to_doc(forged))
    _execute(path, "UPDATE aliases SET doc=replace(doc, ?, ?) WHERE name=?", OURS.key_id, OTHER.key_id, ALIAS.name)
    sqlite_ledger_as_a_node_would(path, root)
    store = SqliteStore(path, root)
    with pytest.raises(errors.KMSInternalException):
        await store.get_alias(ACCOUNT, REGION, ALIAS.name)
    await store.delete_key(OURS)
    assert await store.get_alias(ACCOUNT, REGION, ALIAS.name) is None
    assert await store.list_aliases(ACCOUNT, REGION) == []
    assert await store.list_grants(ACCOUNT, REGION, OURS.key_id) == []
    assert await store.add_alias(Alias(ACCOUNT, REGION, ALIAS.name, OTHER.key_id, NOW, NOW))
    await store.close()
    await SqliteStore(path, root).close()  # the refused rows' terms left the ledger with them
