"""A folder seen through a read-only bind mount, where permission bits would not stop root; a
small filesystem of a test's own, to fill."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["filled", "read_only_view", "small_filesystem"]


@contextmanager
def read_only_view(folder: Path, view: Path) -> Iterator[Path]:
    """`folder` at `view` on a read-only bind mount (as evidence kept on a read-only mount is), for
    the test's duration; the test is skipped where this process may not mount (not root, say)."""
    view.mkdir()
    _mount("--bind", str(folder), str(view))
    try:
        _mount("-o", "remount,ro,bind", str(view))
        yield view
    finally:
        subprocess.run(["umount", str(view)], check=True, capture_output=True)


@contextmanager
def small_filesystem(folder: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of `size` at `folder` for the test's duration (skipped where this process may not mount)."""
    folder.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                            text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here (root, or CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)


def filled(disk: Path) -> Path:
    """Take every free byte of the filesystem `disk` is on; the file that holds them."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):  # no space left: the aim
        while True:
            handle.write(bytes(1 << 16))
    return filler


def _mount(*args: str) -> None:
    try:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("a read-only data dir needs a read-only bind mount: no mount command here")
    if result.returncode != 0:
        pytest.skip(f"a read-only data dir needs a read-only bind mount, which this process may not make "
                    f"(root, or CAP_SYS_ADMIN): mount {' '.join(args)}: {result.stderr.strip()}")
