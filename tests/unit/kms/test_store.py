"""The SQLite store: state survives reopening; material is sealed; deletes are whole."""

from __future__ import annotations

import base64
import json
import os
import sqlite3
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias, Grant

NOW = datetime(2026, 1, 1, tzinfo=UTC)
ROOT = RootKey(os.urandom(32))


def _key(secret: bytes) -> Key:
    material = KeyMaterial("cd" * 32, secret, NOW)
    return Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", NOW,
               materials=(material,), tags=(("team", "a"),), policy="{}")


async def test_keys_aliases_grants_survive_reopen(tmp_path: Path) -> None:
    secret = os.urandom(32)
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    key = _key(secret)
    await store.put_key(key)
    await store.put_alias(Alias(key.account, key.region, "alias/a", key.key_id, NOW, NOW))
    await store.put_grant(Grant(key.account, key.region, key.key_id, "g" * 64, "arn:aws:iam::1:user/x",
                                ("Decrypt",), key.account, NOW, token="t"))
    await store.close()
    reopened = SqliteStore(tmp_path / "keys.db", ROOT)
    assert await reopened.get_key(key.account, key.region, key.key_id) == key
    assert [a.name for a in await reopened.list_aliases(key.account, key.region)] == ["alias/a"]
    assert len(await reopened.list_grants(key.account, key.region, key.key_id)) == 1
    await reopened.delete_key(key)
    assert await reopened.list_aliases(key.account, key.region) == []
    assert await reopened.list_grants(key.account, key.region, key.key_id) == []


async def test_deleting_a_grant_tells_whether_it_was_there(tmp_path: Path) -> None:
    # RetireGrant and RevokeGrant answer NotFoundException when another call deleted the grant first.
    store, key = SqliteStore(tmp_path / "keys.db", ROOT), _key(os.urandom(32))
    grant = Grant(key.account, key.region, key.key_id, "g" * 64, "arn:aws:iam::1:user/x", ("Decrypt",), key.account,
                  NOW, token="t")
    await store.put_key(key)
    await store.put_grant(grant)
    assert await store.delete_grant(grant)
    assert not await store.delete_grant(grant)
    assert await store.list_grants(key.account, key.region, key.key_id) == []
    await store.close()


async def test_grants_are_listed_in_creation_order_through_every_change(tmp_path: Path) -> None:
    # The order is kept between calls (every call on a key lists its grants); each change, and a
    # reopen, must show in the next listing.
    store, key = SqliteStore(tmp_path / "keys.db", ROOT), _key(os.urandom(32))

    def made(letter: str, minutes: int) -> Grant:
        return Grant(key.account, key.region, key.key_id, letter * 64, "arn:aws:iam::1:user/x", ("Decrypt",),
                     key.account, NOW.replace(minute=minutes), token="t")

    async def listed(of: SqliteStore) -> list[str]:
        return [g.grant_id[0] for g in await of.list_grants(key.account, key.region, key.key_id)]

    await store.put_key(key)
    for letter, minutes in (("b", 2), ("c", 3)):
        await store.put_grant(made(letter, minutes))
    assert await listed(store) == ["b", "c"]
    (await store.list_grants(key.account, key.region, key.key_id)).clear()  # the caller's list, not the store's
    await store.put_grant(made("a", 1))  # made earlier, written later
    assert await listed(store) == ["a", "b", "c"]
    assert await store.delete_grant(made("b", 2))
    assert await listed(store) == ["a", "c"]
    await store.close()
    reopened = SqliteStore(tmp_path / "keys.db", ROOT)
    assert await listed(reopened) == ["a", "c"]
    await reopened.delete_key(key)
    await reopened.put_key(key)
    assert await listed(reopened) == []
    await reopened.close()


async def test_the_grants_to_a_caller_follow_every_change_in_creation_order(tmp_path: Path) -> None:
    # Every call on a key asks for its caller's grants: read from an index by grantee, not filtered
    # from a copy of all the key's (a Decrypt 7x slower at 47,000 grants); put over a grant of its
    # id (another grantee), delete, reopen and the key's deletion must all show.
    store, key = SqliteStore(tmp_path / "keys.db", ROOT), _key(os.urandom(32))
    alice, bob = "arn:aws:iam::1:user/alice", "arn:aws:iam::1:user/bob"

    def made(letter: str, minutes: int, grantee: str) -> Grant:
        return Grant(key.account, key.region, key.key_id, letter * 64, grantee, ("Decrypt",), key.account,
                     NOW.replace(minute=minutes), token="t")

    async def to(of: SqliteStore, *grantees: str) -> list[str]:
        return [g.grant_id[0] for g in await of.grants_to(key.account, key.region, key.key_id, grantees)]

    await store.put_key(key)
    assert await to(store, alice) == []
    for letter, minutes, grantee in (("c", 3, alice), ("b", 2, bob), ("a", 1, alice), ("d", 4, bob)):
        await store.put_grant(made(letter, minutes, grantee))
    assert (await to(store, alice), await to(store, bob), await to(store, alice, bob)) == (
        ["a", "c"], ["b", "d"], ["a", "b", "c", "d"])
    await store.put_grant(made("c", 3, bob))  # the same grant id, now bob's
    assert (await to(store, alice), await to(store, bob)) == (["a"], ["b", "c", "d"])
    assert await store.delete_grant(made("b", 2, bob))
    assert await to(store, bob) == ["c", "d"]
    await store.close()
    reopened = SqliteStore(tmp_path / "keys.db", ROOT)
    assert (await to(reopened, alice), await to(reopened, bob)) == (["a"], ["c", "d"])
    await reopened.delete_key(key)
    await reopened.put_key(key)
    assert await to(reopened, alice, bob) == []
    await reopened.close()


async def test_material_never_reaches_the_file_in_clear(tmp_path: Path) -> None:
    secret = os.urandom(32)
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    await store.put_key(_key(secret))
    await store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert secret not in raw and base64.b64encode(secret) not in raw and secret.hex().encode() not in raw
    shown = repr(_key(secret))
    assert repr(secret)[2:-1] not in shown and secret.hex() not in shown


async def test_wrong_root_key_cannot_open_the_store(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    await store.put_key(_key(os.urandom(32)))
    await store.close()
    with pytest.raises(SealError):
        SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))


def _open_files_under(directory: Path) -> list[str]:
    """The files of `directory` this process holds open (keys.db, -wal, -shm)."""
    held = (os.readlink(fd.path) for fd in os.scandir("/proc/self/fd") if fd.is_symlink())
    return sorted(path for path in held if path.startswith(str(directory)))


async def test_a_store_refused_for_another_root_key_is_closed(tmp_path: Path) -> None:
    # The caller gets no store to close: a node retrying, or `analyze` over many data dirs, would
    # otherwise keep the file (and SQLite's lock on it) until the refusal's traceback is collected.
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    await store.put_key(_key(os.urandom(32)))
    await store.close()
    assert _open_files_under(tmp_path) == []
    with pytest.raises(SealError) as refused:
        SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    assert refused.tb is not None  # still alive: its frames hold the half-made store
    assert _open_files_under(tmp_path) == []


async def test_the_store_and_its_wal_files_are_the_owners_only(tmp_path: Path) -> None:
    # SQLite's -wal and -shm hold the same rows as keys.db; it gives them the database file's mode.
    (tmp_path / "keys.db-wal").write_bytes(b"")  # left by a crash, with the umask's mode
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    await store.put_key(_key(os.urandom(32)))
    modes = {path.name: oct(path.stat().st_mode & 0o777) for path in tmp_path.iterdir()}
    await store.close()
    assert modes == {"keys.db": "0o600", "keys.db-wal": "0o600", "keys.db-shm": "0o600"}


async def test_a_deleted_keys_sealed_material_is_gone_from_the_store_files(tmp_path: Path) -> None:
    # Key deletion destroys the material for good (AWS: DeleteKey, DeleteImportedKeyMaterial); SQLite
    # otherwise keeps a deleted row's bytes in freed space and the WAL, which the root key opens.
    store = SqliteStore(tmp_path / "keys.db", ROOT)
    key, other = _key(os.urandom(32)), replace(_key(os.urandom(32)), key_id="0987dcba-09fe-87dc-65ba-ab0987654321")
    two = replace(other, materials=(*other.materials, KeyMaterial("ef" * 32, os.urandom(32), NOW, imported=True)))
    await store.put_keys([key, two])
    sealed = _sealed(tmp_path)
    await store.delete_key(key)
    gone = replace(two.materials[1], secret=b"", imported=False)  # as DeleteImportedKeyMaterial leaves it
    await store.put_key(replace(two, materials=(two.materials[0], gone)))
    left = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert [value in left for value in sealed] == [False, True, False]
    await store.close()


def _sealed(directory: Path) -> list[bytes]:
    with sqlite3.connect(directory / "keys.db") as db:
        docs = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM keys ORDER BY key_id DESC")]
    return [material["sealed"].encode() for doc in docs for material in doc["materials"]]


async def test_a_deleted_keys_sealed_material_does_not_stay_in_the_root_keys_table(tmp_path: Path) -> None:
    """The root key keeps each material's sealed text to write it again unchanged; a deleted key's
    stayed there for the life of the process, so a node creating and deleting keys grew for good."""
    root = RootKey(os.urandom(32))
    store = SqliteStore(tmp_path / "keys.db", root)
    key = _key(os.urandom(32))
    await store.put_key(key)
    first = _sealed(tmp_path)
    await store.put_key(replace(key, description="again"))
    assert _sealed(tmp_path) == first  # kept while the key lives: written again as it was
    await store.delete_key(key)
    await store.put_key(key)  # the same id and material, as a restore would bring back
    assert _sealed(tmp_path) != first  # sealed anew: nothing of the deleted key was held
    for n in range(200):
        many = replace(_key(os.urandom(32)), key_id=f"{n:08d}-12ab-34cd-56ef-1234567890ab")
        await store.put_key(many)
        await store.delete_key(many)
    assert len(root._sealed) == 1  # the live key's alone, however many were created and deleted
    await store.close()
