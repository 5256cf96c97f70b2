"""CSV, JSON lines and Parquet forms of a report: every table in one long file.

Each row carries `table` (usage, usage_over_time, cost, cost_projection, last_used, denied,
alarms) and that table's columns; the other columns are empty. Read one table back with
`pl.read_parquet(path).filter(pl.col("table") == "cost")`.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import json
import os
import secrets
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import polars as pl
import polars.selectors as cs

from keytrail.owner_only import remove_stale_temps, replace_whole_temps
from keytrail.pipeline.files import sink_parquet
from keytrail.reports.lines import TIME_FORMAT, csv_lines, json_lines

__all__ = ["ADDED_LAST", "TabularFormat", "cell_text", "long_form", "long_form_parts", "replacing", "write_tabular"]


class TabularFormat(StrEnum):
    csv = "csv"
    json = "json"
    parquet = "parquet"


#: Columns added to several tables after the long file's columns were set: last, so that every
#: other column keeps its place (a reader by position reads what it read before).
ADDED_LAST = ("aliases",)
_SLICE_ROWS = 20_000  # rows formatted at a time: a long report never sits in memory as one text


def long_form(tables: Mapping[str, pl.DataFrame], only: str | None = None) -> pl.DataFrame:
    """One frame holding every table (or only the one named), tagged by a leading `table` column."""
    return pl.concat(list(long_form_parts(tables, only)), how="diagonal_relaxed")


def long_form_parts(tables: Mapping[str, pl.DataFrame], only: str | None = None) -> Iterator[pl.DataFrame]:
    """`long_form`'s rows a slice at a time, each with all of its columns and types: the long frame
    (every table's rows times every table's columns, mostly null) is never built whole."""
    chosen = {name: frame for name, frame in tables.items() if only is None or name == only}
    if only is not None and not chosen:
        raise ValueError(f"no table named {only!r} (choose from {', '.join(tables)})")
    header = pl.concat([_tagged(name, frame.clear()) for name, frame in chosen.items()], how="diagonal_relaxed")
    header = header.select(pl.exclude(ADDED_LAST), *(c for c in ADDED_LAST if c in header.columns))
    return _slices(header, chosen)  # refused above, before a writer opens its file


def _slices(header: pl.DataFrame, chosen: Mapping[str, pl.DataFrame]) -> Iterator[pl.DataFrame]:
    yield header
    for name, frame in chosen.items():
        for part in frame.iter_slices(_SLICE_ROWS):
            yield pl.concat([header, _tagged(name, part)], how="diagonal_relaxed")


def _tagged(name: str, frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` after a `table` column of `name`, its categories as the strings they stand for."""
    return frame.select(pl.lit(name).alias("table"), pl.all()).with_columns(cs.categorical().cast(pl.String))


def write_tabular(frame: pl.DataFrame | Iterable[pl.DataFrame], out: Path, form: TabularFormat,
                  columns_of: Mapping[str, Sequence[str]] | None = None, *, owner_only: bool = False) -> Path:
    """Write `frame` (or the parts of one, same columns each, in order) to `out` atomically (temp
    file, then rename). `columns_of`: each table's own columns, which JSON lines write even when
    null (a reader then finds every column of a table). `owner_only`: 0600 (`out` is in a data dir)."""
    parts = [frame] if isinstance(frame, pl.DataFrame) else frame
    with replacing(out, owner_only=owner_only) as temp:
        if form is TabularFormat.parquet:
            sink_parquet(parts, temp)  # a large report's long form is never whole in memory
        else:
            with temp.open("w", encoding="utf-8") as sink:
                if form is TabularFormat.csv:
                    _csv(parts, sink)
                else:
                    _json_lines(parts, columns_of or {}, sink)
    return out


@contextlib.contextmanager
def replacing(out: Path, *, owner_only: bool = False) -> Iterator[Path]:
    """A temporary file beside `out` to write, renamed to `out` once written. Removed when the
    writing or the rename fails (a full disk, `out` a folder, Ctrl-C): a report of gigabytes must
    not leave a hidden copy of itself behind. `owner_only`: 0600.

    As a shell's `>` does, a symbolic link is written through (its target replaced, the link kept)
    and a FIFO or device (`/dev/stdout`) is written into: renamed over, each was replaced by a
    regular file (as root, /dev/null too), and the output never reached the reader."""
    _require_trusted_path(out, [0])
    if _special(out):
        _require_trusted_special(Path(os.path.realpath(out)))
        yield out  # no temporary file to rename, and nothing of ours to remove on a failure
        return
    out = Path(os.path.realpath(out))
    # A killed run's temp file (as large as its report) is named for it, so no later run replaces it.
    remove_stale_temps(out.parent, replace_whole_temps(out), f".{glob.escape(out.name)}.tmp")
    temp = _new_temp(out, 0o600 if owner_only else 0o666)
    try:
        yield temp
        temp.replace(out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _new_temp(out: Path, mode: int) -> Path:
    """A new, empty hidden file beside `out` (the umask applies to `mode`), made by this call: a
    name known in advance, opened as it stood, was a link another user could plant in /tmp, and
    the report was written through it (its target replaced) and the link renamed over `out`."""
    for _ in range(16):
        temp = out.with_name(f".{out.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode))
        except FileExistsError:
            continue
        return temp
    raise FileExistsError(errno.EEXIST, "no new temporary file name beside it", str(out))


_MAX_LINKS = 40  # as the kernel's: past it, a loop, which the write itself fails with ELOOP


def _require_trusted_path(path: Path, links: list[int]) -> None:
    """PermissionError for a symbolic link on the way to `path` (the last part, a folder before it,
    or one a link's target goes through) that another user made in a sticky folder every user may
    write (/tmp), as the kernel's fs.protected_symlinks refuses to follow (off in many containers):
    followed, a root-run report replaced whatever file the link's maker pointed it at. `links`: the
    links followed so far, across the whole walk, as the kernel counts them."""
    current = Path(os.getcwd()) if not path.is_absolute() else Path(path.anchor)
    for part in path.parts[1:] if path.is_absolute() else path.parts:
        if part == "..":
            current = current.parent
            continue
        step = current / part
        if step.is_symlink() and links[0] < _MAX_LINKS:
            _require_trusted_link(step)
            links[0] += 1
            _require_trusted_path(current / os.readlink(step), links)
            step = Path(os.path.realpath(step))
        current = step


def _require_trusted_link(link: Path) -> None:
    try:
        made = link.lstat()
    except OSError:  # gone meanwhile: the write says what is wrong
        return
    if _planted(link, made):
        raise PermissionError(errno.EPERM, f"a symbolic link of uid {made.st_uid} in a folder every user may "
                                           "write is not followed", str(link))


def _require_trusted_special(path: Path) -> None:
    """PermissionError for a FIFO or device another user made in a sticky folder every user may
    write, as fs.protected_fifos refuses to open one: they would read the whole report."""
    try:
        found = path.stat()
    except OSError:
        return
    if _planted(path, found):
        raise PermissionError(errno.EPERM, f"a FIFO or device of uid {found.st_uid} in a folder every user may write "
                                           "is not written into", str(path))


def _planted(path: Path, found: os.stat_result) -> bool:
    """Whether `found` (the stat of `path`, not followed) belongs to a user other than this one and
    the folder's owner, in a sticky folder every user may write."""
    try:
        folder = path.parent.stat()
    except OSError:  # gone meanwhile: the write says what is wrong
        return False
    shared = folder.st_mode & stat.S_ISVTX and folder.st_mode & stat.S_IWOTH
    return bool(shared and found.st_uid not in (os.geteuid(), folder.st_uid))


def _special(path: Path) -> bool:
    """Whether `path` names (through any links) something that is neither a file nor a folder."""
    try:
        mode = path.stat().st_mode
    except OSError:  # not there (yet), or a dangling link: a file is made
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _csv(parts: Iterable[pl.DataFrame], sink: TextIO) -> None:
    writer = csv.writer(sink, lineterminator="\n")
    for index, part in enumerate(parts):
        if index == 0:
            writer.writerow(part.columns)
        for piece in part.iter_slices(_SLICE_ROWS):
            if (text := csv_lines(piece)) is not None:
                sink.write(text)
            else:
                writer.writerows([cell_text(value) for value in row] for row in piece.iter_rows())


def _json_lines(parts: Iterable[pl.DataFrame], columns_of: Mapping[str, Sequence[str]], sink: TextIO) -> None:
    """One object per row with its table's columns (null when empty; other tables' columns left
    out); money as exact decimal numbers."""
    for part in parts:
        for piece in part.iter_slices(_SLICE_ROWS):
            text = _table_lines(piece, columns_of)
            sink.write(text if text is not None else
                       "".join(_json_line(row, columns_of) for row in piece.iter_rows(named=True)))


def _table_lines(piece: pl.DataFrame, columns_of: Mapping[str, Sequence[str]]) -> str | None:
    """`piece` as JSON lines formatted by polars (`lines.json_lines`) when all its rows are of one
    table; None otherwise, or when a value needs Python's text."""
    tables = piece.get_column("table").unique() if "table" in piece.columns else pl.Series([None])
    if tables.len() != 1:
        return None
    return json_lines(piece, columns_of.get(tables[0] or "", ()))


def _json_line(row: dict[str, Any], columns_of: Mapping[str, Sequence[str]]) -> str:
    own = columns_of.get(row.get("table") or "", ())
    parts = [f"{json.dumps(name)}: {_json_value(value)}" for name, value in row.items()
             if value is not None or name in own]
    return "{" + ", ".join(parts) + "}\n"


def _json_value(value: Any) -> str:
    if isinstance(value, Decimal):
        return cell_text(value)
    if isinstance(value, datetime | date):
        return json.dumps(cell_text(value))
    return json.dumps(value)


def cell_text(value: Any) -> str:
    """A value as one CSV or table cell: ISO times in UTC, exact decimals, empty for null."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime(TIME_FORMAT)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
