"""Minute-level usage of one partition as immutable Parquet files, listed in the state's manifest.

A checkpoint writes its usage as new files (one per UTC day, fsynced, unique names) *before*
its transaction, and the transaction lists them in `usage_files` together with the offsets:
a file not in the manifest is an orphan of a crash and is deleted on open. Readers only read
listed files and sum their counts. Many small files of a day are compacted into one (new file
listed and old ones unlisted in one transaction, then deleted). Appending Parquet costs far
less per row than upserting each group into SQLite.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import polars as pl

from keytrail.owner_only import STALE_TEMP_SECONDS, make_dirs, remove_stale_temps, reserve, sync_folder
from keytrail.pipeline.files import readable, write_parquet
from keytrail.pipeline.usage import USAGE_SCHEMA, merge_usage

__all__ = ["MANIFEST_SCHEMA", "Shape", "UsageFiles", "UsageFilesDamaged"]

#: A lazy query over minute-level usage rows (filter, group, sum) that `UsageFiles.read` runs.
Shape = Callable[[pl.LazyFrame], pl.LazyFrame]

MANIFEST_SCHEMA = "CREATE TABLE IF NOT EXISTS usage_files (name TEXT PRIMARY KEY, day TEXT, rows INTEGER);"
COMPACT_AFTER = 8  # files of one day before the smallest are merged
COMPACT_MAX_ROWS = 100_000  # never merge more rows than this at once: compaction memory stays bounded


class UsageFilesDamaged(OSError):
    """Usage files of a partition's state that cannot be read (an OSError: one line in the CLI)."""


class UsageFiles:
    """The usage files of `partition` under `root` (`day=YYYY-MM-DD/<partition>.<id>.parquet`)."""

    def __init__(self, root: Path, partition: str, db: sqlite3.Connection) -> None:
        self.root = root
        self.partition = partition
        self.db = db

    def write(self, usage: pl.DataFrame) -> list[tuple[str, str, int]]:
        """Write `usage` as durable, not yet listed files; return their (name, day, rows)."""
        written = []
        days = usage.with_columns(day=pl.col("minute").dt.date().cast(pl.String))
        for (day,), part in days.partition_by("day", as_dict=True).items():
            name = f"day={day}/{self.partition}.{uuid.uuid4().hex}.parquet"
            _durable_write(part.drop("day"), self.root / name)
            written.append((name, str(day), part.height))
        return written

    def add_to_manifest(self, written: Iterable[tuple[str, str, int]]) -> None:
        """Add files to the manifest (inside the caller's transaction)."""
        self.db.executemany("INSERT INTO usage_files VALUES (?, ?, ?)", written)

    def discard(self, names: Iterable[str]) -> None:
        for name in names:
            (self.root / name).unlink(missing_ok=True)

    def listed(self, since: datetime | None = None, until: datetime | None = None) -> list[str]:
        rows = self.db.execute("SELECT name FROM usage_files WHERE day >= ? AND day <= ?", _days(since, until))
        return [name for (name,) in rows]

    def day_rows(self, since: datetime | None = None, until: datetime | None = None) -> list[tuple[str, int]]:
        """(UTC day, stored minute rows) of the files that `listed(since, until)` names."""
        rows = self.db.execute("SELECT day, sum(rows) FROM usage_files WHERE day >= ? AND day <= ? GROUP BY day",
                               _days(since, until))
        return [(day, int(count)) for day, count in rows]

    def remove_orphans(self, min_age_seconds: float = STALE_TEMP_SECONDS) -> None:
        """Delete this partition's files that no committed checkpoint lists (left by a crash).

        Only files older than `min_age_seconds`: a younger one may belong to a checkpoint that
        another owner of the partition is committing right now.
        """
        listed: set[str] = set(self.listed())
        cutoff = time.time() - min_age_seconds
        for path in self.root.glob(f"day=*/{self.partition}.*.parquet"):
            if f"{path.parent.name}/{path.name}" not in listed and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
        # Temp files of writes a kill cut short (`_durable_write`), never renamed; another owner of
        # the partition (a group member sharing the data dir) may rename its own one meanwhile.
        remove_stale_temps(self.root, f"day=*/.{self.partition}.*.parquet.tmp", min_age_seconds=min_age_seconds)

    def read(self, since: datetime | None, until: datetime | None, shape: Shape | None = None) -> pl.DataFrame:
        """Minute-level usage with minute in [since, until), summed over the listed files; or,
        with `shape`, what it makes of those rows, computed as the files stream by (a roll-up
        never holds every minute row of a long period in memory)."""
        for attempt in range(3):
            names = self.listed(since, until)
            self._require_regular(names)
            try:
                with readable([self.root / n for n in names]) as sources:  # open until the rows are read
                    frame = _minutes(sources, since, until)
                    if shape is not None:
                        return shape(frame).collect(engine="streaming")
                    return merge_usage([frame.collect()])
            except FileNotFoundError:  # compacted meanwhile: read the new manifest
                if attempt == 2:
                    raise
            except pl.exceptions.PolarsError as exc:
                raise self._unreadable(names, exc) from None
        raise AssertionError("unreachable")

    def _require_regular(self, names: list[str]) -> None:
        """UsageFilesDamaged unless each of the files `names` that is there is a regular file: polars
        opened a FIFO put in one's place (whoever can write the data dir can make one) waiting for a
        writer forever, and `usage`, `cost` and the consumer with it. One stat a file."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):  # compacted meanwhile: the read tries again
                if not stat.S_ISREG((self.root / name).stat().st_mode):
                    raise self._unreadable(names, ValueError(
                        f"{self.root / name} is not a regular file (a FIFO, a device or a socket in a file's place)"))

    def _unreadable(self, names: list[str], error: Exception) -> OSError:
        """The error for listed files that polars cannot read (damaged, emptied by a crash)."""
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return UsageFilesDamaged(
            f"the metrics state's usage files under {self.root} cannot be read ({reason}): move "
            f"{self.root.parent / (self.partition + '.sqlite')} aside, and keytrail consume rebuilds the state "
            f"from the start of its source ({len(names)} files read: {', '.join(names[:3])}{', …' * (len(names) > 3)})")

    def compact(self) -> None:
        """Merge the smallest files of each day that has more than COMPACT_AFTER of them."""
        crowded = self.db.execute(
            "SELECT day FROM usage_files GROUP BY day HAVING count(*) > ?", (COMPACT_AFTER,)
        )
        for (day,) in crowded.fetchall():
            old: list[str] = []
            total = 0
            for name, rows in self.db.execute(
                "SELECT name, rows FROM usage_files WHERE day = ? ORDER BY rows", (day,)
            ):
                if len(old) == COMPACT_AFTER or (old and total + rows > COMPACT_MAX_ROWS):
                    break
                old.append(name)
                total += rows
            if len(old) > 1:
                self._require_regular(old)
                try:
                    with readable([self.root / n for n in old]) as sources:
                        merged = merge_usage([pl.read_parquet(source) for source in sources])
                except pl.exceptions.PolarsError as exc:
                    raise self._unreadable(old, exc) from None
                self._replace(old, merged)

    def _replace(self, old: list[str], merged: pl.DataFrame) -> None:
        new = self.write(merged)
        self.db.execute("BEGIN IMMEDIATE")
        try:
            self.db.executemany("DELETE FROM usage_files WHERE name = ?", [(n,) for n in old])
            self.add_to_manifest(new)
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self.discard(n for n, _, _ in new)
            raise
        self.discard(old)


def _minutes(sources: list[Path] | list[IO[bytes]], since: datetime | None, until: datetime | None) -> pl.LazyFrame:
    """The minute rows of the files `sources` with minute in [since, until), not yet read."""
    frame = pl.scan_parquet(sources) if sources else pl.LazyFrame(schema=USAGE_SCHEMA)
    if since is not None:
        frame = frame.filter(pl.col("minute") >= since)
    if until is not None:
        frame = frame.filter(pl.col("minute") < until)
    return frame


def _days(since: datetime | None, until: datetime | None) -> tuple[str, str]:
    """The first and last UTC day whose files may hold minutes in [since, until). Files are by UTC
    day: a bound with another offset may fall on another day there; an `until` at midnight ends
    the day before (a span of whole days reads no file of the next)."""
    low = since.astimezone(UTC).date().isoformat() if since else ""
    high = (until.astimezone(UTC) - timedelta(microseconds=1)).date().isoformat() if until else "9999"
    return low, high


def _durable_write(frame: pl.DataFrame, path: Path) -> None:
    make_dirs(path.parent)
    temp = path.with_name(f".{path.name}.tmp")
    write_parquet(frame, reserve(temp))
    with temp.open("rb") as handle:
        os.fsync(handle.fileno())
    temp.replace(path)
    sync_folder(path.parent)
