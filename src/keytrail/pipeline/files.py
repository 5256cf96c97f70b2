"""Writing Parquet files so that a failure to write reads as one: polars reports the file system's
errors (a full disk) as its own ComputeError, which callers that handle OSError would let through
as a traceback, and it leaves the partial file behind."""

from __future__ import annotations

import stat
from collections.abc import Iterable, Iterator
from itertools import chain
from pathlib import Path

import polars as pl
from polars.io.plugins import register_io_source

__all__ = ["sink_parquet", "write_parquet"]


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """`frame.write_parquet(path)`; on failure no file at `path` and an OSError naming it."""
    try:
        frame.write_parquet(path)
    except pl.exceptions.PolarsError as exc:  # the frame is computed: what fails here is the write
        path.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {exc}") from None


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
        try:
            frames.sink_parquet(path)
        except pl.exceptions.PolarsError as exc:
            path.unlink(missing_ok=True)
            raise OSError(f"cannot write {path}: {exc}") from None
        return
    # A FIFO or a device (a report's --out /dev/stdout): polars opens a path twice to write it,
    # and a FIFO's reader took the first close for the end, the second open then waiting for a
    # reader for ever. Opened once here and written through; nothing of ours to remove on failure.
    with path.open("wb") as handle:
        try:
            frames.sink_parquet(handle)
        except pl.exceptions.PolarsError as exc:
            raise OSError(f"cannot write {path}: {exc}") from None


def _regular_or_absent(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except FileNotFoundError:
        return True
