"""`keytrail root-key rotate` while another process reads keys.db (a sqlite3 shell, an online
.backup, `keytrail analyze`): its read transaction keeps the WAL from being emptied into keys.db, and
the pages holding the values sealed under the old root key from being overwritten. The rotation
waits for it a while, then says so, and running it again once that process is closed erases them."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.sealing import ROOT_KEY_FILE_ENV, RootKey, SealError
from tests.support.sqlite_reader import SqliteReader, sealed_values, store_file_bytes, store_key, stored_key

pytestmark = pytest.mark.integration

KEY = Key("111122223333", "us-east-1", "1234abcd-12ab-34cd-56ef-1234567890ab", datetime(2026, 1, 1, tzinfo=UTC),
          policy="{}", materials=(KeyMaterial("ab" * 32, os.urandom(32), datetime(2026, 1, 1, tzinfo=UTC)),))
COMMAND = "keytrail root-key rotate"
NOT_ERASED = ("{prefix}: the key store is sealed under the new root key, but keys.db still holds the values sealed "
              "under the old one: another process (a sqlite3 shell or .backup, keytrail analyze) kept a read of it "
              "open for {wait} s: close it, then run the same command again to erase them\n")
NOTHING_TO_RESEAL = ("the key store was already sealed under the new root key (a rotation stopped before it "
                     "finished): nothing to reseal")

# The rotation with its wait for readers shortened, as the tests' reader does not end by itself.
_WAITING = """
import sys
from keytrail.cli import main, root_key
root_key.ERASE_WAIT_SECONDS = float(sys.argv[1])
sys.argv = ["keytrail", "root-key", "rotate", *sys.argv[2:]]
main()
"""


def _rotate(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _WAITING, "0.5", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


def _new_key(path: Path) -> Path:
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("root_key_from", ["root.key", "$KEYTRAIL_ROOT_KEY_FILE"])
def test_a_rotation_a_reader_keeps_from_erasing_says_so_and_running_it_again_erases(
        tmp_path: Path, root_key_from: str) -> None:
    # It exited 0 saying the old root key opens nothing, and a copy of keys.db alone opened every
    # key under the old root key: the checkpoint's "busy" was not read.
    data, old = tmp_path / "data", _new_key(tmp_path / "old.key")
    env = None if root_key_from == "root.key" else {**os.environ, ROOT_KEY_FILE_ENV: str(old)}
    if env is None:  # the one serve made at its first start
        RootKey.load(data)
        old.write_bytes((data / "root.key").read_bytes())
    asyncio.run(store_key(data / "keys.db", RootKey(old.read_bytes()), KEY))
    sealed = sealed_values(data / "keys.db")
    new = _new_key(tmp_path / "new.key")
    reader = SqliteReader(data / "keys.db")

    result = _rotate("--data-dir", data, "--new-key", new, env=env)
    assert [value in (data / "keys.db").read_bytes() for value in sealed] == [True]  # what a copy of it holds
    assert (result.returncode, result.stderr) == (2, NOT_ERASED.format(prefix=COMMAND, wait="0.5"))
    assert result.stdout.splitlines()[0] == ("resealed and re-authenticated 1 document(s) of the key store under the "
                                             "new root key")
    if env is None:
        assert (data / "root.key").read_bytes() == new.read_bytes()  # replaced as usual
    with pytest.raises(SealError):
        asyncio.run(stored_key(data / "keys.db", RootKey(old.read_bytes()), KEY))
    again = _rotate("--data-dir", data, "--new-key", new, env=env)  # the reader still there: said again
    assert (again.returncode, again.stderr) == (2, result.stderr)
    assert again.stdout.splitlines()[0] == NOTHING_TO_RESEAL

    reader.close()
    assert [value in (data / "keys.db").read_bytes() for value in sealed] == [True]  # a reader does not erase
    again = _rotate("--data-dir", data, "--new-key", new, env=env)
    assert (again.returncode, again.stderr) == (0, "")
    assert again.stdout.splitlines()[0] == NOTHING_TO_RESEAL
    assert [value for value in sealed if value in store_file_bytes(data)] == []
    assert asyncio.run(stored_key(data / "keys.db", RootKey(new.read_bytes()), KEY)) == KEY


def test_running_it_again_once_the_reader_erased_them_itself_says_nothing_is_left(tmp_path: Path) -> None:
    # A sqlite3 shell that can write empties the WAL into keys.db as it closes, the last one to.
    data = tmp_path / "data"
    asyncio.run(store_key(data / "keys.db", RootKey.load(data), KEY))
    sealed = sealed_values(data / "keys.db")
    new = _new_key(tmp_path / "new.key")
    reader = SqliteReader(data / "keys.db", read_only=False)
    assert _rotate("--data-dir", data, "--new-key", new).returncode == 2
    reader.close()
    assert [value for value in sealed if value in store_file_bytes(data)] == []
    again = _rotate("--data-dir", data, "--new-key", new)
    assert (again.returncode, again.stdout) == (2, "")
    assert again.stderr == (f"{COMMAND}: --new-key holds the current root key: nothing to reseal, nor to erase in "
                            "keys.db (its WAL is empty); to rotate, make a new one with head -c 32 /dev/urandom > "
                            "FILE\n")
