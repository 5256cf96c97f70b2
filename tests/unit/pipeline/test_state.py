"""The partition state file: same-second uses and state files written before logOffset existed."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from keytrail.pipeline.frame import empty_frame
from keytrail.pipeline.lastused import LAST_USED_SCHEMA
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import aggregate
from keytrail.pipeline.state import PartitionState, StateFileDamaged, StateUpdate
from keytrail.pipeline.usage import USAGE_SCHEMA

KEY = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
ALICE = "arn:aws:iam::111122223333:user/alice"
NOON = datetime(2026, 10, 1, 12, tzinfo=UTC)
_OLD_LAST_USED = """CREATE TABLE last_used (keyArn TEXT, principalArn TEXT, lastUsedTime INTEGER,
  lastUsedOperation TEXT, eventId TEXT, requestId TEXT, PRIMARY KEY (keyArn, principalArn)) WITHOUT ROWID"""


def _use(operation: str, event_id: str, offset: int) -> StateUpdate:
    """What a batch holding only this successful use of KEY by ALICE at NOON adds."""
    row = {"keyArn": KEY, "principalArn": ALICE, "lastUsedTime": NOON, "lastUsedOperation": operation,
           "eventId": event_id, "requestId": f"request-{event_id}", "logOffset": offset}
    return replace(aggregate(empty_frame()), last_used=pl.DataFrame([row], schema=LAST_USED_SCHEMA))


def _last(path: Path) -> tuple[str, str]:
    state = PartitionState(path)
    try:
        row = state.last_used().row(0, named=True)
        return row["lastUsedOperation"], row["eventId"]
    finally:
        state.close()


def test_a_later_checkpoint_s_same_second_use_wins_whatever_its_event_id(tmp_path: Path) -> None:
    path = tmp_path / "p0.sqlite"
    state = PartitionState(path, owner=True)
    state.stage(_use("Encrypt", "ffff", 10), 11)
    state.flush()
    state.stage(_use("Decrypt", "0000", 11), 12)  # same second, smaller eventId, later in the log
    state.flush()
    state.close()
    assert _last(path) == ("Decrypt", "0000")


def test_last_used_of_one_key_is_that_key_s_rows_of_the_whole_table(tmp_path: Path) -> None:
    # GetKeyLastUsage asks for one key on every call: the state reads its rows only.
    other = KEY.replace("1234abcd", "5678efab")
    rows = [{"keyArn": key, "principalArn": principal, "lastUsedTime": NOON, "lastUsedOperation": "Encrypt",
             "eventId": f"{key[-4:]}-{principal[-5:]}", "requestId": "r", "logOffset": offset}
            for offset, (key, principal) in enumerate([(KEY, ALICE), (other, ALICE), (KEY, ALICE + "-bob")])]
    state = PartitionState(tmp_path / "p0.sqlite", owner=True)
    try:
        state.stage(replace(aggregate(empty_frame()), last_used=pl.DataFrame(rows, schema=LAST_USED_SCHEMA)), 3)
        state.flush()
        whole = state.last_used()
        assert state.last_used(KEY).sort("principalArn").equals(
            whole.filter(pl.col("keyArn") == KEY).sort("principalArn"))
        assert state.last_used(KEY).height == 2 and state.last_used(other).height == 1
        assert state.last_used(KEY.replace("1234abcd", "00000000")).is_empty()
    finally:
        state.close()


def _state_file_from_before_log_offsets(path: Path) -> Path:
    """A state file whose last_used table has no logOffset, holding ALICE's Encrypt of KEY at NOON."""
    with sqlite3.connect(path) as db:
        db.execute(_OLD_LAST_USED)
        db.execute("INSERT INTO last_used VALUES (?,?,?,?,?,?)",
                   (KEY, ALICE, int(NOON.timestamp() * 1_000_000), "Encrypt", "ffff", "request-ffff"))
    db.close()
    return path


def test_a_state_file_from_before_log_offsets_is_upgraded_in_place(tmp_path: Path) -> None:
    path = _state_file_from_before_log_offsets(tmp_path / "p0.sqlite")
    assert _last(path) == ("Encrypt", "ffff")  # readable as before
    state = PartitionState(path, owner=True)
    state.stage(_use("Decrypt", "0000", 0), 1)  # the first record read after the upgrade
    state.flush()
    state.close()
    assert _last(path) == ("Decrypt", "0000")


def test_a_state_file_from_before_log_offsets_is_read_as_it_is_by_a_query(tmp_path: Path) -> None:
    path = _state_file_from_before_log_offsets(tmp_path / "p0.sqlite")
    state = PartitionState(path, read_only=True)  # a query never upgrades: its rows sort first, as upgraded ones
    try:
        assert state.last_used(KEY).row(0, named=True) == {
            "keyArn": KEY, "principalArn": ALICE, "lastUsedTime": NOON, "lastUsedOperation": "Encrypt",
            "eventId": "ffff", "requestId": "request-ffff", "logOffset": -1}
    finally:
        state.close()
    with sqlite3.connect(path) as db:
        assert "logOffset" not in [row[1] for row in db.execute("PRAGMA table_info(last_used)")]
    db.close()


def test_a_state_file_that_cannot_be_opened_is_not_called_damaged(tmp_path: Path) -> None:
    path = state_dir(tmp_path) / "segment-log.sqlite"
    path.mkdir(parents=True)  # SQLite cannot open it; nothing says the state is lost
    with pytest.raises(OSError, match="cannot open the metrics state file") as info:
        PartitionState(path)
    assert not isinstance(info.value, StateFileDamaged)  # whose advice, move it aside, would lose it
    # SQLite said "unable to open database file", and to a query "disk I/O error": a failing disk?
    assert str(info.value) == f"cannot open the metrics state file {path}: it is a directory, not a file"
    with pytest.raises(OSError) as info:
        PartitionState(path, read_only=True)
    assert str(info.value) == f"cannot open the metrics state file {path}: it is a directory, not a file"


def test_a_state_file_sqlite_cannot_read_is_named_in_one_line(tmp_path: Path) -> None:
    path = state_dir(tmp_path) / "segment-log.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a database, just bytes " * 100)
    with pytest.raises(StateFileDamaged) as info:
        PartitionState(path)
    assert str(path) in str(info.value) and "keytrail consume rebuilds it" in str(info.value)
    result = subprocess.run([sys.executable, "-m", "keytrail", "usage", "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    assert result.stderr == f"keytrail usage: {info.value}\n"


@pytest.mark.parametrize("damage", ["emptied", "fifo"])
def test_a_usage_file_of_the_state_that_cannot_be_read_is_named_in_one_line(tmp_path: Path, damage: str) -> None:
    from tests.support.audit_records import fill_trail

    fill_trail(tmp_path, 20)
    keytrail = [sys.executable, "-m", "keytrail"]
    subprocess.run([*keytrail, "consume", "--data-dir", str(tmp_path), "--no-follow"], check=True, timeout=120,
                   capture_output=True)
    [usage_file] = (state_dir(tmp_path) / "usage").glob("day=*/*.parquet")
    if damage == "emptied":  # by a crash or a bad disk
        usage_file.write_bytes(b"")
    else:  # by whoever can write the data dir: polars opened it waiting for a writer forever
        usage_file.unlink()
        os.mkfifo(usage_file)
    result = subprocess.run([*keytrail, "usage", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 1 and result.stdout == "" and result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"keytrail usage: the metrics state's usage files under {state_dir(tmp_path)}/usage cannot be read")
    assert f"move {state_dir(tmp_path)}/segment-log.sqlite aside" in result.stderr
    assert (f"{usage_file} is not a regular file" in result.stderr) == (damage == "fifo")


def test_usage_since_a_time_with_an_offset_reads_the_utc_day_it_falls_on(tmp_path: Path) -> None:
    # 01:00+02:00 on Oct 1 is 23:00 UTC on Sep 30: that UTC day's file must be read too.
    minute = datetime(2026, 9, 30, 23, 30, tzinfo=UTC)
    row = {"minute": minute, "keyArn": KEY, "principalArn": ALICE, "accountId": "111122223333",
           "eventName": "Decrypt", "keyPairSpec": None, "count": 3, "errorCount": 0}
    state = PartitionState(tmp_path / "p0.sqlite", owner=True)
    state.stage(replace(aggregate(empty_frame()), usage=pl.DataFrame([row], schema=USAGE_SCHEMA)), 1)
    state.flush()
    since = datetime(2026, 10, 1, 1, tzinfo=timezone(timedelta(hours=2)))
    try:
        assert state.usage(since).get_column("count").to_list() == [3]
    finally:
        state.close()


def test_cost_since_a_time_with_an_offset_grants_the_free_tier_of_its_utc_month(tmp_path: Path) -> None:
    # 00:30+02:00 on Oct 1 is 22:30 UTC on Sep 30: September's free tier, used up on Sep 10, applies.
    def minute(when: datetime, count: int) -> dict[str, object]:
        return {"minute": when, "keyArn": KEY, "principalArn": ALICE, "accountId": "111122223333",
                "eventName": "Decrypt", "keyPairSpec": None, "count": count, "errorCount": 0}

    rows = [minute(datetime(2026, 9, 10, tzinfo=UTC), 20_000), minute(datetime(2026, 9, 30, 23, tzinfo=UTC), 10_000)]
    state = PartitionState(state_dir(tmp_path) / "p0.sqlite", owner=True)
    state.stage(replace(aggregate(empty_frame()), usage=pl.DataFrame(rows, schema=USAGE_SCHEMA)), 1)
    state.flush()
    state.close()
    since = datetime(2026, 10, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    until = datetime(2026, 10, 2, tzinfo=UTC)
    report = MetricsStore(tmp_path).cost(PriceTable(free_tier_requests=20_000), since, until)
    assert report.get_column("requestCost").to_list() == [Decimal("0.03")]


@pytest.mark.parametrize("partitions", [1, 2])
@pytest.mark.parametrize("window", [None, "hour"])
def test_usage_as_categories_is_the_string_table_in_the_same_order(tmp_path: Path, partitions: int,
                                                                   window: str | None) -> None:
    # Stored out of order, so that the categories' codes (first seen, first numbered) are not in
    # the strings' order; a null principal sorts last in both.
    names = ["zeta", "alpha", None, "mu", "beta"]
    rows = [{"minute": NOON + timedelta(minutes=37 * n), "keyArn": f"{KEY}-{n % 3}",
             "principalArn": None if names[n % 5] is None else f"{ALICE}-{names[n % 5]}",
             "accountId": "111122223333", "eventName": ["Encrypt", "Decrypt"][n % 2], "keyPairSpec": None,
             "count": n + 1, "errorCount": n % 2} for n in range(40)]
    for part in range(partitions):
        state = PartitionState(state_dir(tmp_path) / f"p{part}.sqlite", owner=True)
        update = pl.DataFrame(rows[part::partitions], schema=USAGE_SCHEMA)
        state.stage(replace(aggregate(empty_frame()), usage=update), 1)
        state.flush()
        state.close()
    store = MetricsStore(tmp_path)
    for by in (["keyArn", "principalArn", "accountId", "eventName"], ["principalArn", "keyArn"]):
        plain = store.usage(by, window)  # type: ignore[arg-type]
        compact = store.usage(by, window, categories=True)  # type: ignore[arg-type]
        assert all(compact.schema[name] == pl.Categorical for name in by)
        assert plain.height > 10
        assert compact.with_columns(pl.col(by).cast(pl.String)).equals(plain)


def test_a_state_file_the_full_disk_has_no_room_for_says_so(tmp_path: Path) -> None:
    # SQLite's bare "disk I/O error" (it could not size the -shm file) read as a failing disk.
    from tests.support.mounts import filled, small_filesystem

    with small_filesystem(tmp_path / "disk") as disk:
        PartitionState(disk / "0.sqlite", owner=True).close()
        filled(disk)
        with pytest.raises(OSError) as refused:
            PartitionState(disk / "0.sqlite", owner=True)
    assert str(refused.value) == (f"cannot open the metrics state file {disk / '0.sqlite'}: disk I/O error (no room "
                                  "for its -shm file: is the disk full?)")
