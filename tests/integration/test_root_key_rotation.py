"""`keytrail root-key rotate`: a node's key store sealed again under a new root key; the next
`serve` decrypts what was encrypted before, and the old root key opens nothing."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.kms.codec import grant_to_doc
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.sealing import ROOT_KEY_FILE_ENV, RootKey, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Grant
from tests.integration.test_serve_store import database  # noqa: F401  (a fixture)
from tests.support.server import KeytrailServer
from tests.support.sqlite_reader import store_key, stored_key
from tests.support.store_documents import sqlite_ledger_as_a_node_would

pytestmark = pytest.mark.integration

KEY = Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", datetime(2026, 1, 1, tzinfo=UTC),
          policy="{}", materials=(KeyMaterial("ab" * 32, os.urandom(32), datetime(2026, 1, 1, tzinfo=UTC)),))


def _rotate(*args: str | Path, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "root-key", "rotate", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def _new_key(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


def test_a_rotated_root_key_opens_what_was_sealed_before_and_the_old_one_nothing(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    kms = server.client()
    key = kms.create_key()["KeyMetadata"]["Arn"]
    kms.rotate_key_on_demand(KeyId=key)
    blob = kms.encrypt(KeyId=key, Plaintext=b"before the rotation")["CiphertextBlob"]
    assert server.stop() == 0
    old = (data / "root.key").read_bytes()
    new = _new_key(tmp_path / "new.key")
    result = _rotate("--data-dir", data, "--new-key", new)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "resealed and re-authenticated 1 document(s) of the key store under the new root key",
        f"{data / 'root.key'} now holds the new root key; {new} is a copy of it: keep it apart from the data dir "
        "as its backup, or delete it"]
    assert (data / "root.key").read_bytes() == new.read_bytes()
    with pytest.raises(SealError):
        SqliteStore(data / "keys.db", RootKey(old))
    server.start()
    try:
        assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"before the rotation"
    finally:
        assert server.stop() == 0


def test_a_root_key_named_by_the_environment_is_left_for_the_operator_to_point_at_the_new_one(
        tmp_path: Path) -> None:
    data, old = tmp_path / "data", _new_key(tmp_path / "old.key")
    env = {**os.environ, ROOT_KEY_FILE_ENV: str(old)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_KEY_FILE_ENV, str(old))
        server = KeytrailServer(data).start()
        blob = server.client().encrypt(KeyId=server.client().create_key()["KeyMetadata"]["Arn"],
                                       Plaintext=b"sealed under old.key")["CiphertextBlob"]
        assert server.stop() == 0
    new = _new_key(tmp_path / "new.key")
    result = _rotate("--data-dir", data, "--new-key", new, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"start serve with the new root key: ${ROOT_KEY_FILE_ENV}={new} (or $KEYTRAIL_ROOT_KEY set to its base64); "
        "the old root key opens nothing any more")
    assert not (data / "root.key").exists()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_KEY_FILE_ENV, str(new))
        server.start()
        try:
            assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed under old.key"
        finally:
            assert server.stop() == 0


def test_the_next_step_names_the_new_key_by_its_absolute_path(tmp_path: Path) -> None:
    # `--new-key secrets/new.key` was repeated as given: pasted into a unit file or another working
    # directory, $KEYTRAIL_ROOT_KEY_FILE named nothing.
    data, old = tmp_path / "data", _new_key(tmp_path / "old.key")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_KEY_FILE_ENV, str(old))
        asyncio.run(store_key(data / "keys.db", RootKey.load(data), KEY))
    (tmp_path / "secrets").mkdir()
    new = _new_key(tmp_path / "secrets" / "new.key")
    result = _rotate("--data-dir", "data", "--new-key", Path("secrets") / "new.key",
                     env={**os.environ, ROOT_KEY_FILE_ENV: str(old)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        f"start serve with the new root key: ${ROOT_KEY_FILE_ENV}={new} (or $KEYTRAIL_ROOT_KEY set to its base64); "
        "the old root key opens nothing any more")


def test_a_root_key_that_is_a_symbolic_link_is_refused_before_anything_is_resealed(tmp_path: Path) -> None:
    # The link was replaced with a file holding the new key inside the data dir, and the secret
    # it pointed to, the one the operator keeps, went on holding the old key: silently.
    data, secrets = tmp_path / "data", tmp_path / "secrets"
    server = KeytrailServer(data).start()
    kms = server.client()
    blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["Arn"], Plaintext=b"linked")["CiphertextBlob"]
    assert server.stop() == 0
    secrets.mkdir()
    kept = (data / "root.key").rename(secrets / "root.key")
    (data / "root.key").symlink_to(Path("..") / "secrets" / "root.key")
    server.start()  # serve reads the root key through the link
    assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"linked"
    assert server.stop() == 0
    old, store = kept.read_bytes(), (data / "keys.db").read_bytes()
    new = _new_key(tmp_path / "new.key")
    result = _rotate("--data-dir", data, "--new-key", new)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"keytrail root-key rotate: {data / 'root.key'} is a symbolic link to {kept}: rotating would replace the "
        f"link with a file holding the new root key and leave the old one in {kept}: rotate with "
        f"${ROOT_KEY_FILE_ENV}={kept}, or replace the link with the file it points to: nothing was changed\n")
    assert (data / "root.key").is_symlink() and kept.read_bytes() == old
    assert (data / "keys.db").read_bytes() == store

    result = _rotate("--data-dir", data, "--new-key", new, env={**os.environ, ROOT_KEY_FILE_ENV: str(kept)})
    assert result.returncode == 0, result.stderr
    assert (data / "root.key").is_symlink() and kept.read_bytes() == old  # for the operator to put new.key there
    kept.write_bytes(new.read_bytes())
    server.start()
    try:
        assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"linked"
    finally:
        assert server.stop() == 0


def test_rotation_is_refused_in_one_line_while_serve_runs(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    try:
        server.client().create_key()
        result = _rotate("--data-dir", tmp_path / "data", "--new-key", _new_key(tmp_path / "new.key"))
    finally:
        assert server.stop() == 0
    assert (result.returncode, result.stderr) == (2, (
        f"keytrail root-key rotate: the event log {tmp_path / 'data' / 'audit' / 'log'} is in use by another process: "
        "keytrail serve, keytrail audit import or another keytrail root-key rotate on --data-dir "
        f"{tmp_path / 'data'}: stop it, or let it finish, first\n"))


def test_a_row_that_does_not_verify_stops_the_rotation_in_one_line(tmp_path: Path) -> None:
    # Resealed, a forged row would pass for one authenticated under the new root key, and taken
    # into the new ledger, rows added outside keytrail would pass for its own.
    data = tmp_path / "data"
    asyncio.run(_store_with_a_forged_grant(data))
    before = (data / "keys.db").read_bytes()
    result = _rotate("--data-dir", data, "--new-key", _new_key(tmp_path / "new.key"))
    assert (result.returncode, result.stderr.split(". ")[0]) == (2, (
        "keytrail root-key rotate: the key store does not match its ledger (rows rolled back, deleted or added "
        "outside keytrail): grants 1 row(s), the ledger 0"))
    assert result.stderr.endswith(": nothing was changed\n") and len(result.stderr.splitlines()) == 1
    sqlite_ledger_as_a_node_would(data / "keys.db", RootKey.load(data))  # as if forged before the ledger
    before = (data / "keys.db").read_bytes()
    result = _rotate("--data-dir", data, "--new-key", _new_key(tmp_path / "new.key"))
    assert (result.returncode, result.stderr) == (2, (
        "keytrail root-key rotate: the grants document of row 111122223333/us-east-1/"
        f"{KEY.key_id}/{'f0' * 32} does not verify under the root key: restore that row as keytrail last wrote it, or "
        "the whole key store, from a backup; nothing was changed\n"))
    assert (data / "keys.db").read_bytes() == before


async def _store_with_a_forged_grant(data: Path) -> None:
    store = SqliteStore(data / "keys.db", RootKey.load(data))
    await store.put_key(KEY)
    await store.close()
    forged = Grant(KEY.account, KEY.region, KEY.key_id, "f0" * 32, "arn:aws:iam::444455556666:root", ("Decrypt",),
                   KEY.account, KEY.creation_date, token="t")
    with sqlite3.connect(data / "keys.db") as db:
        db.execute("INSERT INTO grants VALUES (?, ?, ?, ?, ?)",
                   (KEY.account, KEY.region, KEY.key_id, forged.grant_id, grant_to_doc(forged)))
    db.close()


@pytest.mark.parametrize(("content", "complaint"), [
    (b"short", "holds 5 bytes, not 32: make it with head -c 32 /dev/urandom > FILE: nothing was changed"),
    (None, "--new-key: no such file: "),
    ("folder", "--new-key: not a regular file: "),  # it said "no such file" of a folder there
    # Warned of in a line of its own before the command's refusal (serve running, no key store).
    ("shared", "can be read by other users (mode 0644): chmod 600 (or 400) it first"),
    # Said to be one others "can read" (0622), or taken (owned by another user): a root key they know.
    ("written", "can be written by other users (mode 0622): chmod 600 (or 400) it first"),
    pytest.param("owned", "is owned by uid 4242, not by uid 0 that keytrail runs as: chown it to uid 0 first",
                 marks=pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another uid takes root")),
])
def test_a_new_key_that_is_no_root_key_is_refused_in_one_line(
        tmp_path: Path, content: bytes | str | None, complaint: str) -> None:
    new = tmp_path / "new.key"
    if content == "folder":
        new.mkdir()
    elif isinstance(content, bytes):
        new.write_bytes(content)
        new.chmod(0o600)
    elif isinstance(content, str):  # 32 random bytes others can get at
        new.write_bytes(os.urandom(32))
        new.chmod({"shared": 0o644, "written": 0o622, "owned": 0o600}[content])
        if content == "owned":
            os.chown(new, 4242, -1)
    result = _rotate("--data-dir", tmp_path / "data", "--new-key", new)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("keytrail root-key rotate: ") and complaint in result.stderr


def test_the_current_root_key_file_as_the_new_key_is_refused_before_anything_changes(tmp_path: Path) -> None:
    # It "rotated" to the same key, then advised: "<data>/root.key is a copy of it: keep it apart
    # from the data dir as its backup, or delete it", of the only copy of the root key.
    data = tmp_path / "data"
    asyncio.run(store_key(data / "keys.db", RootKey.load(data), KEY))
    before = (data / "keys.db").read_bytes()
    result = _rotate("--data-dir", data, "--new-key", data / ".." / "data" / "root.key")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"keytrail root-key rotate: --new-key: {data / '..' / 'data' / 'root.key'} is the "
                             f"current root key ({data / 'root.key'}): make a new one with head -c 32 /dev/urandom "
                             "> FILE\n")
    assert (data / "keys.db").read_bytes() == before


def test_a_copy_of_the_current_root_key_as_the_new_key_is_refused_before_anything_changes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    asyncio.run(store_key(data / "keys.db", RootKey.load(data), KEY))
    before = (data / "keys.db").read_bytes()
    copy = _new_key(tmp_path / "copy.key")
    copy.write_bytes((data / "root.key").read_bytes())
    result = _rotate("--data-dir", data, "--new-key", copy)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("keytrail root-key rotate: --new-key holds the current root key: nothing to reseal, nor "
                             "to erase in keys.db (its WAL is empty); to rotate, make a new one with head -c 32 "
                             "/dev/urandom > FILE\n")
    assert (data / "keys.db").read_bytes() == before


def test_a_shared_store_is_resealed_and_a_node_with_the_old_key_is_refused(
        tmp_path: Path, database: str) -> None:  # noqa: F811
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    old, new = _new_key(tmp_path / "old.key"), _new_key(tmp_path / "new.key")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_KEY_FILE_ENV, str(old))
        server = KeytrailServer(tmp_path / "data", "--store", url).start()
        kms = server.client()
        blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["Arn"], Plaintext=b"shared")["CiphertextBlob"]
        busy = _rotate("--new-key", new, env={**os.environ, "KEYTRAIL_STORE": url})
        assert server.stop() == 0
    assert busy.returncode == 2 and "other client(s) are connected" in busy.stderr, busy.stderr
    result = _rotate("--new-key", new, env={**os.environ, "KEYTRAIL_STORE": url, ROOT_KEY_FILE_ENV: str(old)})
    assert result.returncode == 0, result.stderr
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(ROOT_KEY_FILE_ENV, str(old))
        with pytest.raises(RuntimeError, match="the root key does not open"):
            KeytrailServer(tmp_path / "stale-node", "--store", url).start()
        patch.setenv(ROOT_KEY_FILE_ENV, str(new))
        server = KeytrailServer(tmp_path / "data", "--store", url).start()
        try:
            assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"shared"
        finally:
            assert server.stop() == 0


_KILLED_AT = """
import os, sys
from keytrail.cli import main, root_key
from keytrail.kms.sqlite_store import SqliteStore
def killed(*args, **kwargs):
    os._exit(137)
if sys.argv[1] == "before root.key":
    root_key.write_root_key_file = killed
else:  # after the commit, before the WAL is emptied into keys.db
    SqliteStore._flush_freed = killed
sys.argv = ["keytrail", "root-key", "rotate", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize("killed_at", ["before root.key", "before the WAL is emptied"])
def test_a_rotation_killed_after_its_commit_is_finished_by_running_it_again(tmp_path: Path, killed_at: str) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    kms = server.client()
    blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["Arn"], Plaintext=b"before")["CiphertextBlob"]
    assert server.stop() == 0
    sealed_before = _sealed_materials(data / "keys.db")
    new = _new_key(tmp_path / "new.key")
    args = ["--data-dir", str(data), "--new-key", str(new)]
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, killed_at, *args], capture_output=True, timeout=120)
    assert killed.returncode == 137, killed.stderr
    assert (data / "root.key").read_bytes() != new.read_bytes()

    again = _rotate(*args)
    assert (again.returncode, again.stderr) == (0, ""), again.stderr
    assert again.stdout.splitlines()[0] == ("the key store was already sealed under the new root key (a rotation "
                                            "stopped before it finished): nothing to reseal")
    assert (data / "root.key").read_bytes() == new.read_bytes()
    raw = b"".join(path.read_bytes() for path in data.iterdir() if path.name.startswith("keys.db"))
    assert [value for value in sealed_before if value in raw] == []  # nothing the old key opens
    server.start()
    try:
        assert server.client().decrypt(CiphertextBlob=blob)["Plaintext"] == b"before"
    finally:
        assert server.stop() == 0


def _sealed_materials(path: Path) -> list[bytes]:
    with sqlite3.connect(path) as db:
        docs = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM keys")]
    db.close()
    return [material["sealed"].encode() for doc in docs for material in doc["materials"]]


_DISK_FULL_AT = """
import errno, sqlite3, sys
from keytrail.cli import main, root_key
from keytrail.kms import sqlite_store
def store_full(*args):
    raise sqlite3.OperationalError("database or disk is full")
def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
if sys.argv[1] == "the key store":
    sqlite_store.rewrite = store_full
else:
    root_key.write_root_key_file = disk_full
sys.argv = ["keytrail", "root-key", "rotate", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(("full_at", "complaint"), [
    ("the key store", "cannot write the key store (database or disk is full): make room and run the same command "
                      "again to finish the rotation"),
    ("root.key", "the key store is sealed under the new root key, but {data}/root.key still holds the old one: "
                 "cannot replace it (No space left on device): make room and run the same command again"),
])
def test_a_full_disk_stops_the_rotation_in_one_line_and_running_it_again_finishes_it(
        tmp_path: Path, full_at: str, complaint: str) -> None:
    # It ended in a traceback (sqlite3.OperationalError, or an OSError once the store was resealed).
    data = tmp_path / "data"
    asyncio.run(store_key(data / "keys.db", RootKey.load(data), KEY))
    new = _new_key(tmp_path / "new.key")
    args = ["--data-dir", str(data), "--new-key", str(new)]
    full = subprocess.run([sys.executable, "-c", _DISK_FULL_AT, full_at, *args], capture_output=True, text=True,
                          timeout=120)
    assert (full.returncode, full.stderr) == (2, f"keytrail root-key rotate: {complaint.format(data=data)}\n")
    assert _rotate(*args).returncode == 0
    assert (data / "root.key").read_bytes() == new.read_bytes()
    assert asyncio.run(stored_key(data / "keys.db", RootKey(new.read_bytes()), KEY)) == KEY
