"""serve's hold on its data dir: one serve at a time, and a failed start removes what appeared
since it held it, nothing else (not what a symbolic link made meanwhile points to)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keytrail.cli.data_dir_hold import DataDirBusy, DataDirHold


def test_a_data_dir_is_held_by_one_serve_at_a_time(tmp_path: Path) -> None:
    first = DataDirHold.take(tmp_path)
    assert first.exclusive
    with pytest.raises(DataDirBusy, match=f"another keytrail serve is running on --data-dir {tmp_path}"):
        DataDirHold.take(tmp_path)
    first.release()
    DataDirHold.take(tmp_path).release()


def test_what_appeared_since_the_hold_is_removed_but_what_was_there_and_what_is_kept(tmp_path: Path) -> None:
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir()
    elsewhere.mkdir()
    (elsewhere / "precious").write_text("x")
    (data / "notes.txt").write_text("the operator's")
    hold = DataDirHold.take(data)
    try:
        (data / "audit" / "log").mkdir(parents=True)
        for name in ("principals.toml", "root.key", "keys.db"):
            (data / name).write_text("made by the start")
        (data / "tls").symlink_to(elsewhere)
        hold.remove_new(keep={"root.key"})
    finally:
        hold.release()
    assert sorted(path.name for path in data.iterdir()) == ["notes.txt", "root.key"]
    assert (elsewhere / "precious").read_text() == "x"


def test_what_other_programs_made_meanwhile_and_the_sqlite_files_of_a_database_there_before_stay(
        tmp_path: Path) -> None:
    # A data dir given as `.` (or a home directory) holds what other programs write there while
    # serve starts; and keys.db-wal holds the writes of the start's key store (an upgrade) until
    # a checkpoint, which another reader of keys.db (keytrail analyze) keeps from happening.
    (tmp_path / "keys.db").write_text("the operator's keys")
    hold = DataDirHold.take(tmp_path)
    try:
        for name in ("keys.db-wal", "keys.db-shm", "editor.swp", "serve.log"):
            (tmp_path / name).write_text("written meanwhile")
        for name in ("alarms.jsonl", "webhook-dead-letter-0.jsonl", "detector.lock"):
            (tmp_path / name).write_text("made by the start")
        (tmp_path / "metrics").mkdir()
        hold.remove_new(keep=set())
    finally:
        hold.release()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "editor.swp", "keys.db", "keys.db-shm", "keys.db-wal", "serve.log"]


def test_what_appeared_inside_the_folders_of_serve_that_were_there_is_removed_and_what_was_there_stays(
        tmp_path: Path) -> None:
    # A start on an existing data dir writes into its folders (the trail's opening digest, a new
    # segment, a checkpoint): only the names new at the top of the data dir went.
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    (data / "audit" / "integrity" / "digests").mkdir(parents=True)
    (data / "audit" / "log").mkdir()
    (data / "metrics" / "state").mkdir(parents=True)
    elsewhere.mkdir()
    (data / "audit" / "integrity" / "digests" / "0000000000.json").write_text("signed before")
    (data / "audit" / "log" / "00000000.seg").write_text("records")
    (data / "metrics" / "state" / "0.sqlite").write_text("checkpoint")
    (data / "metrics" / "linked").symlink_to(elsewhere)
    hold = DataDirHold.take(data)
    try:
        (data / "audit" / "integrity" / "digests" / "0000000001.json").write_text("made by the start")
        (data / "audit" / "integrity" / "signing-key.pem").write_text("made by the start")
        (data / "audit" / "log" / "00000000.seg").write_text("records, and more")  # there before: stays
        (data / "audit" / "log" / "00000100.seg").write_text("made by the start")
        (data / "metrics" / "usage" / "day=2026-11-30").mkdir(parents=True)
        (data / "metrics" / "usage" / "day=2026-11-30" / "0.parquet").write_text("made by the start")
        (data / "metrics" / "state" / "0.sqlite-wal").write_text("the checkpoint's committed writes")
        (elsewhere / "precious").write_text("x")  # new, but not in the data dir
        hold.remove_new(keep=set())
    finally:
        hold.release()
    assert sorted(str(path.relative_to(data)) for path in data.rglob("*")) == [
        "audit", "audit/integrity", "audit/integrity/digests", "audit/integrity/digests/0000000000.json",
        "audit/log", "audit/log/00000000.seg", "metrics", "metrics/linked", "metrics/state",
        "metrics/state/0.sqlite", "metrics/state/0.sqlite-wal"]
    assert (data / "audit" / "log" / "00000000.seg").read_text() == "records, and more"
    assert (elsewhere / "precious").read_text() == "x"


def test_a_folder_kept_keeps_what_appeared_inside_it(tmp_path: Path) -> None:
    # `keep` names what another process writes (an `audit import` holding the trail), all of it.
    (tmp_path / "audit" / "log").mkdir(parents=True)
    hold = DataDirHold.take(tmp_path)
    try:
        (tmp_path / "audit" / "log" / "00000000.seg").write_text("imported")
        hold.remove_new(keep={"audit"})
    finally:
        hold.release()
    assert (tmp_path / "audit" / "log" / "00000000.seg").read_text() == "imported"
