"""The SQLite key store's files as tests look at them: another process holding a read transaction
open on keys.db (`SqliteReader`), the sealed values its documents hold and the bytes of its files."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from keytrail.kms.keys import Key
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore

__all__ = ["SqliteReader", "sealed_values", "store_file_bytes", "store_key", "stored_key"]

_READER = """
import sqlite3, sys
reader = sqlite3.connect(f"file:{sys.argv[1]}?mode={sys.argv[2]}", uri=True, isolation_level=None)
reader.execute("BEGIN")
reader.execute("SELECT count(*) FROM keys").fetchone()
print("reading", flush=True)
sys.stdin.read()  # until the test closes it
reader.execute("COMMIT")
reader.close()
"""


class SqliteReader:
    """Another process holding a read transaction open on a SQLite file, as an online `.backup`, a
    monitoring script or a `sqlite3` shell does. In a process of its own: the test reads the file's
    bytes, and closing any descriptor of a file drops every POSIX lock its process holds on it, the
    reader's too.

    A read transaction on `path` from the start until `close()`; `read_only=False` opens the
    file as a sqlite3 shell does, which, the last connection to close, empties the WAL into it."""

    def __init__(self, path: Path, *, read_only: bool = True) -> None:
        self._proc = subprocess.Popen([sys.executable, "-c", _READER, str(path), "ro" if read_only else "rw"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self._proc.stdout is not None and self._proc.stdout.readline() == "reading\n"

    def close(self) -> None:
        """End the read, then the process."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        assert self._proc.wait(timeout=30) == 0


def sealed_values(path: Path) -> list[bytes]:
    """The sealed material of every key the SQLite store at `path` holds, as its documents store it."""
    db = sqlite3.connect(path)
    try:
        docs = [json.loads(doc) for (doc,) in db.execute("SELECT doc FROM keys")]
    finally:
        db.close()
    return [material["sealed"].encode() for doc in docs for material in doc["materials"]]


def store_file_bytes(directory: Path) -> bytes:
    """The bytes of every file of the key store in `directory` (keys.db and its WAL and shared memory)."""
    return b"".join(path.read_bytes() for path in directory.iterdir() if path.name.startswith("keys.db"))


async def store_key(path: Path, root: RootKey, key: Key) -> None:
    """`key` put in the SQLite store at `path`, sealed under `root`, the store closed."""
    store = SqliteStore(path, root)
    await store.put_key(key)
    await store.close()


async def stored_key(path: Path, root: RootKey, key: Key) -> Key | None:
    """`key` as the SQLite store at `path` opened under `root` holds it (SealError: not its root key)."""
    store = SqliteStore(path, root)
    try:
        return await store.get_key(key.account, key.region, key.key_id)
    finally:
        await store.close()
