"""SQLite files read where nothing may be written: keytrail.read_only_db."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail import read_only_db
from keytrail.read_only_db import connect_read_only, missing_tables_as_empty
from tests.support.mounts import filled, read_only_view, small_filesystem

_SCHEMA = "CREATE TABLE IF NOT EXISTS kept (x); CREATE TABLE IF NOT EXISTS added_later (y);"


def _wal_database(path: Path, *, left_in_wal: bool) -> None:
    """A WAL database holding one row: closed cleanly (no -wal left), or by a process that died
    (its row only in the -wal file)."""
    script = (f"import os, sqlite3; db = sqlite3.connect({str(path)!r}, isolation_level=None); "
              "db.execute('PRAGMA journal_mode=WAL'); db.execute('CREATE TABLE kept (x)'); "
              "db.execute('INSERT INTO kept VALUES (1)'); " + ("os._exit(0)" if left_in_wal else "db.close()"))
    subprocess.run([sys.executable, "-c", script], check=True)


def _wal_header_only(path: Path, header_from: Path) -> None:
    """A WAL database holding one row in its file, left as a node killed while its writer had synced the
    -wal's 32-byte header and not yet written a frame (synchronous=FULL syncs the header first): a -wal
    of that header alone, beside the -shm of a connection that found the -wal empty."""
    _wal_database(path, left_in_wal=False)
    script = (f"import os, sqlite3; db = sqlite3.connect({str(path)!r}, isolation_level=None); "
              "db.execute('SELECT x FROM kept').fetchall(); os._exit(0)")
    subprocess.run([sys.executable, "-c", script], check=True)
    _wal_database(header_from, left_in_wal=True)  # a -wal with frames, whose header SQLite wrote
    path.with_name(path.name + "-wal").write_bytes(header_from.with_name(header_from.name + "-wal").read_bytes()[:32])


def _names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_a_database_closed_cleanly_is_read_on_a_read_only_mount(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _wal_database(tmp_path / "data" / "a.db", left_in_wal=False)
    with read_only_view(tmp_path / "data", tmp_path / "view") as view:
        db = connect_read_only(view / "a.db")  # SQLite cannot create a.db-shm here
        assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
        db.close()
    assert _names(tmp_path / "data") == ["a.db"]


def test_rows_left_in_the_wal_are_read_through_the_shm_left_beside_it(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _wal_database(tmp_path / "data" / "a.db", left_in_wal=True)
    with read_only_view(tmp_path / "data", tmp_path / "view") as view:
        db = connect_read_only(view / "a.db")
        assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
        db.close()


def test_rows_left_in_a_wal_without_its_shm_are_refused_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    _wal_database(tmp_path / "data" / "a.db", left_in_wal=True)
    (tmp_path / "data" / "a.db-shm").unlink()  # a copy that left it out
    with read_only_view(tmp_path / "data", tmp_path / "view") as view, pytest.raises(OSError) as refused:
        connect_read_only(view / "a.db")
    assert f"{tmp_path / 'view' / 'a.db-wal'} holds changes not yet in a.db" in str(refused.value)
    assert "copy the data dir somewhere writable" in str(refused.value)


@pytest.mark.parametrize("shm", ["kept", "left out"])
def test_a_wal_of_only_its_header_holds_no_changes_and_the_file_is_read(tmp_path: Path, shm: str) -> None:
    # The metrics state of a node killed under load: with its -shm kept, SQLite said only "locking
    # protocol" (SQLITE_PROTOCOL) on a read-only copy; without it, the copy was refused as if the
    # 32-byte -wal held changes. A -wal holds changes only in frames after its header.
    (tmp_path / "data").mkdir()
    (tmp_path / "other").mkdir()
    _wal_header_only(tmp_path / "data" / "a.db", tmp_path / "other" / "b.db")
    if shm == "left out":
        (tmp_path / "data" / "a.db-shm").unlink()
    before = {name: (tmp_path / "data" / name).read_bytes() for name in _names(tmp_path / "data")}
    with read_only_view(tmp_path / "data", tmp_path / "view") as view:
        db = connect_read_only(view / "a.db")
        assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
        db.close()
    assert {name: (tmp_path / "data" / name).read_bytes() for name in _names(tmp_path / "data")} == before


def test_frames_in_the_wal_beside_a_shm_sqlite_cannot_use_are_refused_not_skipped(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # SQLite's "locking protocol" when it cannot use a read-only -shm (as for a -wal of only its header)
    # is, where the -wal holds frames, the refusal with its remedy, not SQLite's bare words.
    (tmp_path / "data").mkdir()
    _wal_database(tmp_path / "data" / "a.db", left_in_wal=True)
    opened = read_only_db._connect

    def unusable_shm(path: Path, parameters: str) -> sqlite3.Connection:
        if parameters == "mode=ro":
            return _FailingConnection(sqlite3.SQLITE_PROTOCOL)  # type: ignore[return-value]
        return opened(path, parameters)

    monkeypatch.setattr(read_only_db, "_connect", unusable_shm)
    with read_only_view(tmp_path / "data", tmp_path / "view") as view, pytest.raises(OSError) as refused:
        connect_read_only(view / "a.db")
    assert f"{tmp_path / 'view' / 'a.db-wal'} holds changes not yet in a.db" in str(refused.value)
    assert "copy the data dir somewhere writable" in str(refused.value)


def test_locking_protocol_where_the_shm_can_be_written_is_sqlite_s_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Not a copy SQLite cannot use the -shm of, but readers outrun by a live writer: said as SQLite says it.
    _wal_database(tmp_path / "a.db", left_in_wal=True)
    monkeypatch.setattr(read_only_db, "_connect", lambda path, parameters: _FailingConnection(sqlite3.SQLITE_PROTOCOL))
    with pytest.raises(sqlite3.OperationalError, match="locking protocol"):
        connect_read_only(tmp_path / "a.db")


class _FailingConnection:
    """A connection whose first read fails with SQLite's error `code`."""

    def __init__(self, code: int) -> None:
        self.code = code

    def execute(self, sql: str) -> None:
        error = sqlite3.OperationalError("locking protocol")
        error.sqlite_errorcode = self.code
        raise error

    def close(self) -> None:
        pass


def test_a_table_the_file_lacks_reads_as_empty_and_the_file_is_not_written(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kept (x)")
        db.execute("INSERT INTO kept VALUES (1)")
    db.close()
    before = path.read_bytes()
    db = connect_read_only(path)
    missing_tables_as_empty(db, _SCHEMA)
    assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
    assert db.execute("SELECT y FROM added_later").fetchall() == []
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("INSERT INTO kept VALUES (2)")
    db.close()
    assert path.read_bytes() == before and _names(tmp_path) == ["a.db"]


def test_a_database_closed_cleanly_is_read_on_a_full_disk(tmp_path: Path) -> None:
    # SQLite made a.db-shm but could not give it its size ("disk I/O error"): `keytrail usage`,
    # `cost`, `last-used` and `analyze` failed on the data dir of a node stopped by a full disk.
    with small_filesystem(tmp_path / "disk") as disk:
        _wal_database(disk / "a.db", left_in_wal=False)
        filled(disk)
        db = connect_read_only(disk / "a.db")
        assert db.execute("SELECT x FROM kept").fetchall() == [(1,)]
        db.close()
