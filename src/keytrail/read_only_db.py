"""SQLite files opened by readers only (queries, `keytrail analyze`), which must work on a data dir
they cannot write: evidence on a read-only mount, a backup restored read-only, another user's node,
a node whose disk is full.

A WAL database is read through its -wal and -shm files, and SQLite creates them when they are
missing, which a read-only folder refuses ("unable to open database file") and a full disk too
(the -shm file is made but cannot be given its size: "disk I/O error"). As SQLite's "WAL-mode
File Format" page (section "Read-Only Databases") documents, such a file can still be read when
opened `immutable=1`; but an immutable connection neither takes locks nor reads the -wal file, so
it is used only where the -wal holds no frame (a node stopped cleanly removes it, a node that has the
file open keeps it, and a node killed before its first frame leaves only the 32-byte header): changes
still in a -wal are never skipped in silence. A -shm left beside a -wal of only its header, on a
read-only mount, is one SQLite cannot use either: it says "locking protocol" (SQLITE_PROTOCOL).
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

__all__ = ["connect_read_only", "missing_tables_as_empty", "sqlite_open_error", "sqlite_problem"]

# SQLite's codes for a file that is not a readable database; any other error (a full disk, an I/O
# error, no permission) leaves the file as it was.
_DAMAGE = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)

# SQLite's WAL file layout ("WAL-mode File Format"): the file's header, then each frame's.
_WAL_HEADER, _FRAME_HEADER = 32, 24

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)")


def connect_read_only(path: Path) -> sqlite3.Connection:
    """A connection that reads `path` and never writes it nor creates a file beside it where it
    cannot: sqlite3.Error when SQLite cannot read the file, OSError when it could read it only
    without changes a -wal file holds."""
    db = _connect(path, "mode=ro")
    try:
        db.execute("PRAGMA schema_version")  # the first read opens (or creates) the -wal and -shm files
        return db
    except sqlite3.OperationalError as exc:
        db.close()
        if not _shm_refused(exc, path) or not path.is_file():
            raise
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and _holds_frames(wal):
        raise OSError(
            f"{wal} holds changes not yet in {path.name}, and SQLite can read them only with "
            f"{path.name}-shm, which it cannot create or use here (a read-only folder, or a full disk): copy "
            "the data dir somewhere writable and read that copy")
    return _connect(path, "immutable=1")


def sqlite_problem(exc: sqlite3.Error) -> str:
    """SQLite's reason for `exc`, for a one-line complaint. Its "disk I/O error" when it could not give
    a -shm file its size is, as a rule, a full disk, not a failing one: said so."""
    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_IOERR_SHMSIZE:
        return f"{exc} (no room for its -shm file: is the disk full?)"
    return str(exc)


def sqlite_open_error(exc: sqlite3.Error, what: str, damaged: OSError) -> OSError:
    """What keeps the SQLite file `what` names ("the key store /d/keys.db") from opening: `damaged`
    when SQLite says the file is not a readable database; otherwise (a full disk, no permission) a
    plain OSError, for the file is fine and the remedy for damage (restoring or moving it aside)
    would lose it."""
    if getattr(exc, "sqlite_errorcode", sqlite3.SQLITE_CORRUPT) & 0xFF in _DAMAGE:
        return damaged
    return OSError(f"cannot open {what}: {sqlite_problem(exc)}")


def _shm_refused(exc: sqlite3.OperationalError, path: Path) -> bool:
    """Whether SQLite failed for want of a -shm file it could use: a folder it may not create it in, a
    disk without the space to size it, or one it may only read and cannot rebuild from the -wal. Where
    the -shm can be written, "locking protocol" is readers outrun by a live writer: SQLite's to say."""
    code = exc.sqlite_errorcode
    if code == sqlite3.SQLITE_PROTOCOL:
        return not os.access(path.with_name(path.name + "-shm"), os.W_OK)
    return code & 0xFF == sqlite3.SQLITE_CANTOPEN or code == sqlite3.SQLITE_IOERR_SHMSIZE


def _holds_frames(wal: Path) -> bool:
    """Whether `wal` is long enough for a frame after its header, as SQLite's "WAL-mode File Format"
    lays it out: a 32-byte header, then frames of a 24-byte header and one page each, the page size
    in the header (bytes 8-11, big-endian; 1 for 65536). A header that gives none that SQLite allows
    counts as the smallest page: a file that may hold frames is never read without them."""
    with wal.open("rb") as handle:
        header = handle.read(_WAL_HEADER)
    page = int.from_bytes(header[8:12], "big") if len(header) == _WAL_HEADER else 0
    page = 65536 if page == 1 else page
    if not (512 <= page <= 65536 and page & (page - 1) == 0):
        page = 512
    return wal.stat().st_size >= _WAL_HEADER + _FRAME_HEADER + page


def _connect(path: Path, parameters: str) -> sqlite3.Connection:
    # The path's bytes, not its str: a name that is not valid UTF-8 (a data dir named in Latin-1)
    # holds surrogates quote() cannot encode as UTF-8; SQLite decodes each %XX back to the byte.
    uri = f"file:{quote(os.fsencode(path.absolute()))}?{parameters}"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)


def missing_tables_as_empty(db: sqlite3.Connection, schema: str) -> None:
    """Give a read-only connection each table of `schema` (`CREATE TABLE IF NOT EXISTS` statements)
    that its file lacks as an empty TEMP table: a file its writer is still creating, or one of a
    version before that table, then reads as holding no rows there, as it does, instead of failing."""
    present = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for statement in schema.split(";"):
        table = _TABLE.search(statement)
        if table and table.group(1) not in present:
            db.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
