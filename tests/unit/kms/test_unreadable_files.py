"""A node's key files that cannot be used are named in one line, never a traceback."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.kms.authentic_docs import authenticate
from keytrail.kms.sealing import ROOT_KEY_ENV, RootKey, RootKeyUnusable, SealError
from keytrail.kms.sqlite_store import KeyStoreUnreadable, SqliteStore
from tests.support.fifo import outcome_beside_a_fifo
from tests.support.store_documents import sqlite_ledger_as_a_node_would


def test_a_key_store_sqlite_cannot_read(tmp_path: Path) -> None:
    (tmp_path / "keys.db").write_bytes(b"garbage\n")
    with pytest.raises(KeyStoreUnreadable, match="keys.db cannot be read .file is not a database."):
        SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))


def test_a_root_key_of_the_wrong_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "root.key").write_bytes(b"short")
    with pytest.raises(RootKeyUnusable, match="root.key holds 5 bytes, not 32"):
        RootKey.load(tmp_path)
    monkeypatch.setenv(ROOT_KEY_ENV, "not base64!")
    with pytest.raises(RootKeyUnusable, match="must be 32 bytes in base64"):
        RootKey.load(tmp_path)


def test_serve_names_the_unreadable_key_store_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "root.key").write_bytes(os.urandom(32))
    (tmp_path / "keys.db").write_bytes(b"garbage\n")
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"keytrail serve: the key store {tmp_path / 'keys.db'} cannot")
    assert "Traceback" not in result.stderr


def test_a_key_store_that_cannot_be_opened_is_not_called_damaged(tmp_path: Path) -> None:
    (tmp_path / "keys.db").mkdir()  # SQLite cannot open it; nothing about the keys is known
    with pytest.raises(OSError, match="cannot open the key store .*keys.db: unable to open") as info:
        SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    assert not isinstance(info.value, KeyStoreUnreadable)  # whose advice, a backup over it, would lose keys


def _store_with_a_key(data_dir: Path, root: RootKey) -> None:
    from datetime import UTC, datetime

    from keytrail.kms.keys import Key, KeyMaterial

    store = SqliteStore(data_dir / "keys.db", root)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    key = Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", now,
              materials=(KeyMaterial("cd" * 32, os.urandom(32), now),))
    asyncio.run(store.put_key(key))
    asyncio.run(store.close())


def _serve_stderr(data_dir: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_serve_names_a_root_key_that_does_not_open_the_store_in_one_line(tmp_path: Path) -> None:
    _store_with_a_key(tmp_path, RootKey(os.urandom(32)))
    (tmp_path / "root.key").write_bytes(os.urandom(32))  # another node's, or a new one after a loss
    line = _serve_stderr(tmp_path)
    assert line.startswith("keytrail serve: ") and "root key" in line and "cannot unseal" in line


def test_serve_makes_no_new_root_key_beside_a_store_that_holds_keys(tmp_path: Path) -> None:
    # root.key lost (or not restored with keys.db): a new one could not open the keys, and left
    # behind it would stand where the real one must be put back.
    _store_with_a_key(tmp_path, RootKey(os.urandom(32)))
    line = _serve_stderr(tmp_path)
    assert line.startswith("keytrail serve: ") and "no root key" in line and "root.key does not exist" in line
    assert not (tmp_path / "root.key").exists()


def test_a_fifo_in_place_of_the_root_key_file_is_named_not_waited_on(tmp_path: Path) -> None:
    # Read as it came, a FIFO (whoever can write the data dir can make one) kept serve's start
    # waiting for a writer forever, and deaf to SIGTERM meanwhile.
    os.mkfifo(tmp_path / "root.key")
    [error] = outcome_beside_a_fifo(tmp_path / "root.key", lambda: RootKey.load(tmp_path))
    named = f"cannot read the root key file {tmp_path / 'root.key'}: not a regular file"
    assert isinstance(error, RootKeyUnusable) and str(error).startswith(named), error
    assert _serve_stderr(tmp_path).startswith(f"keytrail serve: {named}")


def test_a_sealed_value_that_is_not_base64_is_a_seal_error(tmp_path: Path) -> None:
    root = RootKey(os.urandom(32))
    _store_with_a_key(tmp_path, root)
    db = sqlite3.connect(tmp_path / "keys.db")
    account, region, key_id, text = db.execute("SELECT account, region, key_id, doc FROM keys").fetchone()
    doc = json.loads(text)
    del doc["mac"]
    doc["materials"][0]["sealed"] = "!" + doc["materials"][0]["sealed"]
    # authenticated as the node would: a damaged value, not a tampered document
    damaged = authenticate(root, "keys", (account, region, key_id), json.dumps(doc))
    with db:
        db.execute("UPDATE keys SET doc = ?", (damaged,))
    db.close()
    sqlite_ledger_as_a_node_would(tmp_path / "keys.db", root)
    with pytest.raises(SealError, match="cannot unseal key material for arn:aws:kms:us-east-1:111122223333:key/"):
        SqliteStore(tmp_path / "keys.db", root)
