"""A node's key files that cannot be used are named in one line, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.kms.sealing import ROOT_KEY_ENV, RootKey, RootKeyUnusable
from keytrail.kms.sqlite_store import KeyStoreUnreadable, SqliteStore


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
    (tmp_path / "keys.db").write_bytes(b"garbage\n")
    result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path), "--port", "0"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f"keytrail: the key store {tmp_path / 'keys.db'} cannot")
    assert "Traceback" not in result.stderr


def test_a_key_store_that_cannot_be_opened_is_not_called_damaged(tmp_path: Path) -> None:
    (tmp_path / "keys.db").mkdir()  # SQLite cannot open it; nothing about the keys is known
    with pytest.raises(OSError, match="cannot open the key store .*keys.db: unable to open") as info:
        SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    assert not isinstance(info.value, KeyStoreUnreadable)  # whose advice, a backup over it, would lose keys
