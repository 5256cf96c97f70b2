"""serve's hold on its data dir: one serve at a time, and a failed start removes what appeared
since it held it, nothing else (not what a symbolic link made meanwhile points to)."""

from __future__ import annotations

import fcntl
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
        for name in ("alarms.jsonl", "alarm-dead-letter-kafka.jsonl", "detector.lock", "alarm-outbox-mqtt.jsonl"):
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
        (data / "audit" / "log" / "00000100.seg").write_text("")  # made by the start, which took no record
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
    assert (data / "audit" / "log" / "00000000.seg").read_text() == "records"
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


def _served_trail(data: Path) -> None:
    """An audit trail of a node that served and stopped: a segment, its final digest."""
    (data / "audit" / "integrity" / "digests").mkdir(parents=True)
    (data / "audit" / "log").mkdir()
    (data / "audit" / "integrity" / "digests" / "0000000000.json").write_text('{"final": true}')
    (data / "audit" / "log" / f"{0:020d}.seg").write_text("records")


def _signed_meanwhile(data: Path) -> list[Path]:
    """Two digests signed since the hold, and a new segment: what a trail that took records makes."""
    made = [data / "audit" / "integrity" / "digests" / f"000000000{n}.json" for n in (1, 2)]
    made.append(data / "audit" / "log" / f"{100:020d}.seg")
    for path in made:
        path.write_text("signed, or records, since the hold")
    return made


def test_what_a_trail_that_took_records_since_the_hold_signed_them_with_stays(tmp_path: Path) -> None:
    # Records added to a segment that was there stay (due deletions the start carried out, or another
    # program's): removing the digests that sign them left records after the last stop's final
    # digest, and the next start refused the trail as one written while no node ran.
    _served_trail(tmp_path)
    hold = DataDirHold.take(tmp_path)
    try:
        with (tmp_path / "audit" / "log" / f"{0:020d}.seg").open("a") as segment:
            segment.write(", and the start's")
        made = _signed_meanwhile(tmp_path)
        hold.remove_new(keep=set())
    finally:
        hold.release()
    assert all(path.exists() for path in made)


def test_the_tail_a_start_cut_off_its_segment_stays(tmp_path: Path) -> None:
    # A torn tail is cut off the segment and kept beside it (`.cut-at-…`): the only copy of bytes
    # an earlier run wrote, which the cut segment no longer holds.
    _served_trail(tmp_path)
    segment = tmp_path / "audit" / "log" / f"{0:020d}.seg"
    hold = DataDirHold.take(tmp_path)
    try:
        kept = segment.with_name(f"{segment.name}.cut-at-3-1")
        kept.write_text("ords")
        segment.write_text("rec")
        hold.remove_new(keep=set())
    finally:
        hold.release()
    assert kept.read_text() == "ords"


def test_what_appeared_in_a_trail_or_metrics_another_program_holds_stays(tmp_path: Path) -> None:
    # `keytrail audit import` or `keytrail consume` writing there while serve failed for another
    # reason (a principals file it cannot read, say): their digests, segments and checkpoints. (A
    # consumer is told by its lock as serve starts: serve's own, under --dev-clock, holds it after.)
    from keytrail.pipeline.query import consumer_lock
    from keytrail.transport.segment_log import event_log_dir

    _served_trail(tmp_path)
    (tmp_path / "metrics" / "state").mkdir(parents=True)
    consumer = consumer_lock(tmp_path).open("w")  # running as serve starts
    fcntl.flock(consumer, fcntl.LOCK_EX)
    hold = DataDirHold.take(tmp_path)
    importer = (event_log_dir(tmp_path) / "LOCK").open("w")  # the event log's writer lock, the other program's
    fcntl.flock(importer, fcntl.LOCK_EX)
    try:
        digest = tmp_path / "audit" / "integrity" / "digests" / "0000000001.json"
        digest.write_text("the importer's opening digest")
        checkpoint = tmp_path / "metrics" / "state" / "1.sqlite"
        checkpoint.write_text("the consumer's")
        hold.remove_new(keep=set())
    finally:
        importer.close()
        consumer.close()
        hold.release()
    assert digest.exists() and checkpoint.exists()


def test_what_a_consume_kafka_started_during_the_start_wrote_in_metrics_stays(tmp_path: Path) -> None:
    # serve checks for one before it writes anything; one started after that and counting into a
    # data dir new to it, while serve failed for another reason, lost its checkpoints to the clean-up.
    from keytrail.pipeline.layout import kafka_consumers_lock

    hold = DataDirHold.take(tmp_path)
    kafka_consumers_lock(tmp_path).parent.mkdir()
    consumer = kafka_consumers_lock(tmp_path).open("w")
    fcntl.flock(consumer, fcntl.LOCK_SH)  # as each `consume --kafka` holds it
    try:
        checkpoint = tmp_path / "metrics" / "state" / "keytrail.audit.v1-0.sqlite"
        checkpoint.parent.mkdir()
        checkpoint.write_text("the consumer's")
        hold.remove_new(keep=set())
    finally:
        consumer.close()
        hold.release()
    assert checkpoint.read_text() == "the consumer's"
