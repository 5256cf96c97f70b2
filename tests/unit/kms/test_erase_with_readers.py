"""Deleted material and keys.db's readers: another process's read transaction (a sqlite3 shell, an
online .backup, `keytrail analyze`) keeps the WAL from being emptied into keys.db, and the pages that
held the material from being overwritten; the store tries again until the read ends, without
holding up the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.kms import sqlite_store
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.sqlite_reader import SqliteReader, sealed_values, store_file_bytes

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = RootKey(os.urandom(32))
KEY = Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", NOW, policy="{}",
          materials=(KeyMaterial("cd" * 32, os.urandom(32), NOW),
                     KeyMaterial("ef" * 32, os.urandom(32), NOW, imported=True)))
WAITING = "deleted key material stays in"


async def _delete_key(store: SqliteStore) -> None:
    await store.delete_key(KEY)


async def _delete_imported_material(store: SqliteStore) -> None:
    gone = replace(KEY.materials[1], secret=b"", imported=False)  # as DeleteImportedKeyMaterial leaves it
    await store.put_key(replace(KEY, materials=(KEY.materials[0], gone)))


@pytest.mark.parametrize(("delete", "erased"), [(_delete_key, [True, True]),
                                                (_delete_imported_material, [False, True])])
async def test_material_deleted_while_a_reader_holds_keys_db_is_erased_once_the_read_ends(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, delete, erased) -> None:
    # The checkpoint's result was not read: the material stayed in keys.db (and its WAL) for good, a
    # copy of keys.db alone opened it under the root key, and the call waited 5 s on the event loop.
    monkeypatch.setattr(sqlite_store, "ERASE_RETRY_SECONDS", 0.05)
    path = tmp_path / "keys.db"
    store = SqliteStore(path, ROOT)
    await store.put_key(KEY)
    await store.close()  # its WAL emptied into keys.db: the material is in the file itself
    sealed = sealed_values(path)
    store = SqliteStore(path, ROOT)
    reader = SqliteReader(path)
    started = time.monotonic()
    await delete(store)
    assert time.monotonic() - started < 1  # no wait for the reader on the event loop
    await asyncio.sleep(0.5)  # tries again, while the reader holds on
    assert [value in path.read_bytes() for value in sealed] == [True, True]
    assert [r.levelno for r in caplog.records if WAITING in r.getMessage()] == [logging.WARNING]  # once
    reader.close()
    await asyncio.sleep(0.5)
    assert [value not in store_file_bytes(tmp_path) for value in sealed] == erased
    assert [r.levelno for r in caplog.records if WAITING in r.getMessage()] == [logging.WARNING]
    await store.close()


async def test_a_store_closed_while_the_erase_waits_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(sqlite_store, "ERASE_RETRY_SECONDS", 60)
    path = tmp_path / "keys.db"
    await _stored_then_deleted_under_a_reader(path)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said[-1] == (f"{path} still holds deleted key material as the key store closes (another process's read "
                        "of it has not ended): it is erased when a keytrail serve on it next deletes material, or "
                        "stops, while no other process reads it")


def test_erasing_for_root_key_rotate_waits_for_a_reader_to_end(tmp_path: Path) -> None:
    path = tmp_path / "keys.db"
    asyncio.run(_stored_then_deleted_under_a_reader(path))
    reader = SqliteReader(path)
    assert not sqlite_store.erase_freed(path, 0.2)
    threading.Timer(0.5, reader.close).start()
    started = time.monotonic()
    assert sqlite_store.erase_freed(path, 10)
    assert 0.4 < time.monotonic() - started < 5
    assert not path.with_name("keys.db-wal").exists() or path.with_name("keys.db-wal").stat().st_size == 0


async def _stored_then_deleted_under_a_reader(path: Path) -> None:
    """keys.db with changes left in its WAL: a reader kept them there as the store closed."""
    store = SqliteStore(path, ROOT)
    await store.put_key(KEY)
    reader = SqliteReader(path)
    await store.delete_key(KEY)
    await store.close()
    reader.close()
    assert path.with_name("keys.db-wal").stat().st_size > 0
