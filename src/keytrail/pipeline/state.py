"""Checkpointed aggregate state of one source partition, in one SQLite file.

Aggregates, the eventIDs recently seen and the next source offset change together in one
transaction, so a crash at any point leaves state and offset consistent: a restart resumes
from exactly the offset the state covers. Several processes may own partitions of one data
directory; each partition has its own file, and a compare-and-set on the offset refuses a
checkpoint when another owner moved the partition on meanwhile.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from keytrail.owner_only import reserve
from keytrail.pipeline.clock_steps import ClockStep
from keytrail.pipeline.cost import LIFECYCLE_EVENTS, LIFECYCLE_SCHEMA
from keytrail.pipeline.dedup import SeenIds, no_hashes, pack
from keytrail.pipeline.lastused import LAST_USED_SCHEMA, merge_last_used
from keytrail.pipeline.layout import SEGMENT_LOG_PARTITION
from keytrail.pipeline.usage import merge_usage
from keytrail.pipeline.usage_files import MANIFEST_SCHEMA, Shape, UsageFiles
from keytrail.read_only_db import connect_read_only, missing_tables_as_empty, sqlite_open_error

__all__ = ["SEGMENT_LOG_PARTITION", "PartitionState", "StaleBatchError", "StateFileDamaged", "StateUpdate"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER);
CREATE TABLE IF NOT EXISTS last_used (keyArn TEXT, principalArn TEXT, lastUsedTime INTEGER,
  lastUsedOperation TEXT, eventId TEXT, requestId TEXT, logOffset INTEGER NOT NULL DEFAULT -1,
  PRIMARY KEY (keyArn, principalArn)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lifecycle (eventID TEXT PRIMARY KEY, keyArn TEXT, eventTime INTEGER,
  eventName TEXT, keySpec TEXT, keyManager TEXT);
CREATE TABLE IF NOT EXISTS outcomes (eventName TEXT, errorCode TEXT, count INTEGER,
  PRIMARY KEY (eventName, errorCode)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen (generation INTEGER, hashes BLOB);  -- eventID hashes, int64 native order
CREATE TABLE IF NOT EXISTS source_files (name TEXT PRIMARY KEY) WITHOUT ROWID;  -- input files counted whole
CREATE TABLE IF NOT EXISTS clock_steps (eventID TEXT PRIMARY KEY, keyArn TEXT, eventName TEXT, eventTime INTEGER,
  afterName TEXT, afterTime INTEGER) WITHOUT ROWID;  -- lifecycle events billed in log order (clock_steps.py)
"""
# A key's latest lifecycle event, asked as a batch brings one of its (in_log_order): by key, not a scan.
_LIFECYCLE_BY_KEY = "CREATE INDEX IF NOT EXISTS lifecycle_by_key ON lifecycle (keyArn, eventTime);"
_LATEST_LIFECYCLE = f"""SELECT eventTime, eventName FROM lifecycle WHERE keyArn = ?
  AND eventName IN ({", ".join(f"'{name}'" for name in LIFECYCLE_EVENTS)}) ORDER BY eventTime DESC LIMIT 1"""
# Same-second uses: the later in this partition's log wins (every staged offset lies beyond the
# stored ones, so the comparison holds for rows of earlier checkpoints too).
_UPSERT_LAST_USED = """INSERT INTO last_used VALUES (?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET
  lastUsedTime = excluded.lastUsedTime, lastUsedOperation = excluded.lastUsedOperation,
  eventId = excluded.eventId, requestId = excluded.requestId, logOffset = excluded.logOffset
  WHERE (excluded.lastUsedTime, excluded.logOffset, excluded.eventId)
      > (last_used.lastUsedTime, last_used.logOffset, last_used.eventId)"""
# State files from before logOffset: their rows sort before any later use of the same second.
_ADD_LOG_OFFSET = "ALTER TABLE last_used ADD COLUMN logOffset INTEGER NOT NULL DEFAULT -1"
_UPSERT_OUTCOMES = """INSERT INTO outcomes VALUES (?,?,?) ON CONFLICT DO UPDATE SET
  count = count + excluded.count"""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_READ_ROWS = 20_000  # rows of a table read into a frame at a time


class StaleBatchError(RuntimeError):
    """The batch does not start at the offset this state covers (another owner moved on)."""


@dataclass(frozen=True)
class StateUpdate:
    """What one batch adds: aggregates of its new events, their eventID hashes and their time span."""

    usage: pl.DataFrame
    last_used: pl.DataFrame
    lifecycle: pl.DataFrame
    outcomes: pl.DataFrame  # eventName, errorCode ("" for success), count
    seen: pl.Series = field(default_factory=no_hashes)  # eventID hashes (keytrail.pipeline.dedup)
    clock_steps: tuple[ClockStep, ...] = ()  # lifecycle events `lifecycle` takes in log order
    earliest: datetime | None = None
    latest: datetime | None = None


class StateFileDamaged(OSError):
    """A partition's state file that SQLite cannot read (an OSError: the CLI reports it in one line)."""

    def __init__(self, path: Path, cause: sqlite3.DatabaseError) -> None:
        super().__init__(f"the metrics state file {path} cannot be read ({cause}): move it aside, and "
                         "keytrail consume rebuilds it from the start of its source")


def _open_error(path: Path, exc: sqlite3.DatabaseError) -> OSError:
    if path.is_dir():  # SQLite says "unable to open database file", or to a reader "disk I/O error"
        return OSError(f"cannot open the metrics state file {path}: it is a directory, not a file")
    return sqlite_open_error(exc, f"the metrics state file {path}", StateFileDamaged(path, exc))


class PartitionState:
    """The state file of one partition; see the module docstring.

    Batches are staged in memory (`stage`) and written together by `flush`: one transaction per
    checkpoint, so the per-event cost of SQLite is amortized. Until a flush the source offset on
    disk does not move either, so a crash only loses work that will be read again.
    """

    def __init__(self, path: Path, *, dedup_capacity: int = 1_000_000, owner: bool = False,
                 read_only: bool = False) -> None:
        """`read_only`: for queries, which must work on a data dir they cannot write (and never
        write one they can): the file is opened read-only, and neither created nor upgraded."""
        self.path = path
        self.dedup_capacity = dedup_capacity
        self.owner = owner  # only an owner stages and flushes, and needs the eventIDs in memory
        try:
            self._db = connect_read_only(path) if read_only else self._connect_writable(path)
        except sqlite3.DatabaseError as exc:  # a directory in its place, or (read-only, as it reads) not a database
            raise _open_error(path, exc) from None
        self._last_used_columns = ", ".join(LAST_USED_SCHEMA)
        try:
            if read_only:
                missing_tables_as_empty(self._db, _SCHEMA + MANIFEST_SCHEMA)
                if not self._has_log_offset():  # a file from before it, which only its owner upgrades
                    self._last_used_columns = self._last_used_columns.replace("logOffset", "-1 AS logOffset")
            else:
                self._db.executescript(
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;" + _SCHEMA + MANIFEST_SCHEMA + _LIFECYCLE_BY_KEY
                )
                self._add_log_offset()
            self.usage_files = UsageFiles(path.parent / "usage", path.stem, self._db)
            self._pending: list[StateUpdate] = []
            self._load()
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise _open_error(path, exc) from None

    @staticmethod
    def _connect_writable(path: Path) -> sqlite3.Connection:
        reserve(path)  # owner only, and its -wal and -shm files with it
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)

    def _load(self) -> None:
        self._pending.clear()
        self._persisted = self.meta("next_offset") or 0
        self._next = self._persisted
        self.seen = SeenIds(self.dedup_capacity)
        self.seen.generation = generation = self.meta("seen_generation") or 0
        self._staged_seen: list[tuple[int, pl.Series]] = []
        if not self.owner:
            return
        rows = self._db.execute("SELECT generation, hashes FROM seen WHERE generation >= ?", (generation - 1,))
        self.seen.restore(generation, rows)

    def _add_log_offset(self) -> None:
        if self._has_log_offset():
            return
        self._db.execute("BEGIN IMMEDIATE")  # another process may be adding it right now
        try:
            if not self._has_log_offset():
                self._db.execute(_ADD_LOG_OFFSET)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def _has_log_offset(self) -> bool:
        return any(row[1] == "logOffset" for row in self._db.execute("PRAGMA table_info(last_used)"))

    def close(self) -> None:
        self._db.close()

    def meta(self, name: str) -> int | None:
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else int(row[0])

    @property
    def next_offset(self) -> int:
        """The first source offset not yet covered (staged or persisted)."""
        return self._next

    @property
    def persisted_offset(self) -> int:
        """The first source offset not yet covered on disk."""
        return self._persisted

    def stage(self, update: StateUpdate, end: int) -> None:
        """Hold `update` (covering offsets up to `end`) for the next flush."""
        self._pending.append(update)
        self._next = end
        self._staged_seen.append((self.seen.generation, update.seen))
        self.seen.add(update.seen)

    def stored_lifecycle(self, event_ids: Iterable[str]) -> set[str]:
        """Those of `event_ids` the lifecycle table holds already (read again: a log restored)."""
        ids = list(event_ids)
        marks = ",".join("?" * len(ids))
        return {row[0] for row in self._db.execute(f"SELECT eventID FROM lifecycle WHERE eventID IN ({marks})", ids)}

    def latest_lifecycle(self, key_arn: str) -> tuple[datetime, str] | None:
        """The latest (time, name) of the lifecycle events of `key_arn` stored or staged; of the
        same time, the one staged last."""
        row = self._db.execute(_LATEST_LIFECYCLE, (key_arn,)).fetchone()
        latest = None if row is None else (_moment(row[0]), str(row[1]))
        of_key = (pl.col("keyArn") == key_arn) & pl.col("eventName").is_in(LIFECYCLE_EVENTS)
        for update in self._pending:  # staged since the last flush: a batch or a few
            for when, name in update.lifecycle.filter(of_key).select("eventTime", "eventName").iter_rows():
                if latest is None or when >= latest[0]:
                    latest = (when, name)
        return latest

    def flush(self) -> bool:
        """Write everything staged and the new offset in one transaction; False if nothing was staged.

        Raises StaleBatchError (and drops what was staged) when another owner moved the offset.
        """
        if not self._pending:
            return False
        if not self.owner:
            raise RuntimeError(f"{self.path.name}: opened read-only")
        db = self._db
        files = self.usage_files.write(merge_usage([u.usage for u in self._pending]))
        db.execute("BEGIN IMMEDIATE")
        try:
            on_disk = self.meta("next_offset") or 0
            if on_disk != self._persisted:
                raise StaleBatchError(f"{self.path.name}: offset moved to {on_disk} by another owner")
            self.usage_files.add_to_manifest(files)
            self._write(self._pending, self._next)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            self.usage_files.discard(name for name, _, _ in files)
            self._load()
            raise
        self._pending.clear()
        self._staged_seen.clear()
        self._persisted = self._next
        self.usage_files.compact()
        return True

    def _write(self, updates: list[StateUpdate], end: int) -> None:
        db = self._db
        db.executemany(_UPSERT_LAST_USED, _last_used_rows(merge_last_used([u.last_used for u in updates])))
        db.executemany(
            "INSERT OR IGNORE INTO lifecycle VALUES (?,?,?,?,?,?)",
            _lifecycle_rows(pl.concat([u.lifecycle for u in updates])),
        )
        db.executemany("INSERT OR IGNORE INTO clock_steps VALUES (?,?,?,?,?,?)",
                       (_clock_step_row(step) for u in updates for step in u.clock_steps))
        db.executemany(
            _UPSERT_OUTCOMES,
            pl.concat([u.outcomes for u in updates])
            .group_by("eventName", "errorCode")
            .agg(pl.col("count").sum())
            .rows(),
        )
        generation = self.seen.generation
        db.executemany("INSERT INTO seen VALUES (?,?)", ((g, pack(h)) for g, h in self._staged_seen if h.len()))
        db.execute("DELETE FROM seen WHERE generation < ?", (generation - 1,))
        db.execute("INSERT OR REPLACE INTO meta VALUES ('seen_generation', ?)", (generation,))
        for update in updates:
            self._set_bounds(update)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('next_offset', ?)", (end,))

    def _set_bounds(self, update: StateUpdate) -> None:
        if update.earliest is not None:
            self._db.execute(
                "INSERT INTO meta VALUES ('earliest', ?) ON CONFLICT DO UPDATE SET "
                "value = min(value, excluded.value)",
                (_us(update.earliest),),
            )
        if update.latest is not None:
            self._db.execute(
                "INSERT INTO meta VALUES ('latest', ?) ON CONFLICT DO UPDATE SET "
                "value = max(value, excluded.value)",
                (_us(update.latest),),
            )

    # --- reads -----------------------------------------------------------------------------------

    def usage(self, since: datetime | None = None, until: datetime | None = None,
              shape: Shape | None = None) -> pl.DataFrame:
        """Minute-level usage with minute in [since, until) (or what `shape` makes of it)."""
        return self.usage_files.read(since, until, shape)

    def last_used(self, key_arn: str | None = None) -> pl.DataFrame:
        """The last use of each key by each principal; `key_arn`: that key's rows only (found by
        the table's primary key, as GetKeyLastUsage asks on every call)."""
        return pl.concat([_frame([], LAST_USED_SCHEMA, ["lastUsedTime"]), *self.last_used_parts(key_arn)])

    def last_used_parts(self, key_arn: str | None = None) -> Iterator[pl.DataFrame]:
        """`last_used`'s rows a slice at a time: as Python tuples, a large account's key x principal
        pairs (hundreds of thousands) take several times the memory of their frame."""
        select = f"SELECT {self._last_used_columns} FROM last_used"
        cursor = (self._db.execute(select) if key_arn is None
                  else self._db.execute(f"{select} WHERE keyArn = ?", (key_arn,)))
        while rows := cursor.fetchmany(_READ_ROWS):
            yield _frame(rows, LAST_USED_SCHEMA, ["lastUsedTime"])

    def lifecycle(self) -> pl.DataFrame:
        rows = self._db.execute(
            "SELECT keyArn, eventTime, eventName, keySpec, keyManager, eventID FROM lifecycle"
        ).fetchall()
        return _frame(rows, LIFECYCLE_SCHEMA, ["eventTime"])

    def clock_steps(self) -> list[ClockStep]:
        """The lifecycle events taken in log order (a clock step back), oldest first."""
        rows = self._db.execute("SELECT keyArn, eventName, eventID, eventTime, afterName, afterTime "
                                "FROM clock_steps ORDER BY afterTime, eventTime, eventID")
        return [ClockStep(key, name, event_id, _moment(when), after, _moment(after_time))
                for key, name, event_id, when, after, after_time in rows]

    def counted_files(self) -> set[str]:
        """The input files (by the identity their source gives them) a checkpoint covered whole."""
        return {name for (name,) in self._db.execute("SELECT name FROM source_files")}

    def add_counted_files(self, names: Iterable[str]) -> None:
        """List input files whose every record a persisted checkpoint covers."""
        self._db.executemany("INSERT OR IGNORE INTO source_files VALUES (?)", ((n,) for n in names))

    def outcomes(self) -> list[tuple[str, str, int]]:
        return [tuple(r) for r in self._db.execute("SELECT eventName, errorCode, count FROM outcomes")]  # type: ignore[misc]


def _us(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def _moment(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def _clock_step_row(step: ClockStep) -> tuple[Any, ...]:
    return (step.event_id, step.key_arn, step.event_name, _us(step.event_time), step.after_name, _us(step.after_time))


def _text(frame: pl.DataFrame, columns: Sequence[str], times: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    # SQLite treats NULLs in a primary key as distinct, so keys are stored with "" for null.
    exprs = [
        pl.col(c).dt.epoch("us")
        if c in times
        else pl.col(c).fill_null("")
        if frame.schema[c] == pl.String
        else pl.col(c)
        for c in columns
    ]
    return frame.select(exprs).iter_rows()  # not all as tuples at once: a checkpoint writes ~100k rows


def _last_used_rows(last_used: pl.DataFrame) -> Iterable[tuple[Any, ...]]:
    return _text(last_used, list(LAST_USED_SCHEMA), ["lastUsedTime"])


def _lifecycle_rows(lifecycle: pl.DataFrame) -> Iterable[tuple[Any, ...]]:
    columns = ["eventID", "keyArn", "eventTime", "eventName", "keySpec", "keyManager"]
    return _text(lifecycle, columns, ["eventTime"])


def _frame(rows: list[Any], schema: dict[str, pl.DataType], times: Sequence[str]) -> pl.DataFrame:
    raw = {name: (pl.Int64() if name in times else dtype) for name, dtype in schema.items()}
    frame = pl.DataFrame(rows, schema=raw, orient="row")
    return frame.with_columns(
        *[pl.col(t).cast(pl.Datetime("us", "UTC")) for t in times],
        *[pl.when(pl.col(c) != "").then(pl.col(c)).alias(c) for c, d in schema.items() if d == pl.String],
    )
