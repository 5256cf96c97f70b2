"""Reading and writing Parquet files under any path.

Writing so that a failure to write reads as one: polars reports the file system's errors (a full
disk) as its own ComputeError, which callers that handle OSError would let through as a traceback,
and it leaves the partial file behind.

Under any path: polars takes a path str it cannot encode as UTF-8 (a data dir named in Latin-1,
whose undecodable bytes Python holds as surrogates) for a file object, and fails ("Object does not
have a .read() method"). Such a file is opened here and polars given the open file: it reads and
writes one through its descriptor, as lazily and as fast as by its path (measured: a 457 MB file
scanned in 104 MB either way). Other paths are still given as paths, so that a read of many files
does not hold a descriptor open for each.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import IO

import polars as pl
from polars.io.plugins import register_io_source

__all__ = ["polars_can_name", "readable", "sink_parquet", "write_parquet"]

#: Where polars reads or writes a file: its path, or the file opened in Python.
Target = Path | IO[bytes]


def polars_can_name(path: Path) -> bool:
    """Whether polars can be given `path` itself (see the module's docstring)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def readable(paths: Sequence[Path]) -> Iterator[list[Path] | list[IO[bytes]]]:
    """`paths` as polars can read them, valid until the block ends: the paths themselves, or, if
    polars cannot be given one of them, every file opened here (an absent one: FileNotFoundError
    here, as polars would raise it) and closed after."""
    if all(polars_can_name(path) for path in paths):
        yield list(paths)
        return
    with contextlib.ExitStack() as opened:
        handles: list[IO[bytes]] = [opened.enter_context(path.open("rb")) for path in paths]
        yield handles


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """`frame.write_parquet(path)`; on failure no file at `path` and an OSError naming it."""
    _written(path, frame.write_parquet)


def sink_parquet(parts: Iterable[pl.DataFrame], path: Path) -> None:
    """`parts` (frames of one schema, in order) written to `path` as one Parquet file, streamed:
    polars' sink takes them as they come and writes them a row group at a time, so they are never
    concatenated whole. On failure, as `write_parquet`."""
    iterator = iter(parts)
    first = next(iterator, pl.DataFrame())

    def source(columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None,
               _batch: int | None) -> Iterator[pl.DataFrame]:
        # What polars may push down into a source: a projection, a filter, a row limit.
        for frame in chain([first], iterator):
            frame = frame if columns is None else frame.select(columns)
            frame = frame if predicate is None else frame.filter(predicate)
            if n_rows is not None:
                frame, n_rows = frame.head(n_rows), n_rows - min(n_rows, frame.height)
            yield frame
            if n_rows == 0:
                return

    frames = register_io_source(source, schema=first.schema)
    if _regular_or_absent(path):
        _written(path, frames.sink_parquet)
        return
    # A FIFO or a device (a report's --out /dev/stdout): polars opens a path twice to write it,
    # and a FIFO's reader took the first close for the end, the second open then waiting for a
    # reader for ever. Opened once here and written through; nothing of ours to remove on failure.
    with path.open("wb") as handle:
        try:
            frames.sink_parquet(handle)
        except pl.exceptions.PolarsError as exc:
            raise OSError(f"cannot write {path}: {exc}") from None


def _written(path: Path, write: Callable[[Target], object]) -> None:
    """`write` to the regular file (or none yet) at `path`: given the path, or the file opened
    here where polars cannot be given the path. On failure no file at `path` and an OSError."""
    try:
        with _writable(path) as target:
            write(target)
    except pl.exceptions.PolarsError as exc:
        path.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {exc}") from None
    except OSError:  # opening or closing the file here (a full disk): its own errno kept
        path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _writable(path: Path) -> Iterator[Target]:
    if polars_can_name(path):
        yield path
        return
    with path.open("wb") as handle:  # truncated, its mode kept: a temp file reserved 0600 stays so
        yield handle


def _regular_or_absent(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True
