"""Writing Parquet files so that a failure to write reads as one: polars reports the file system's
errors (a full disk) as its own ComputeError, which callers that handle OSError would let through
as a traceback, and it leaves the partial file behind."""

from __future__ import annotations

from pathlib import Path

import polars as pl

__all__ = ["write_parquet"]


def write_parquet(frame: pl.DataFrame, path: Path) -> None:
    """`frame.write_parquet(path)`; on failure no file at `path` and an OSError naming it."""
    try:
        frame.write_parquet(path)
    except pl.exceptions.PolarsError as exc:  # the frame is computed: what fails here is the write
        path.unlink(missing_ok=True)
        raise OSError(f"cannot write {path}: {exc}") from None
