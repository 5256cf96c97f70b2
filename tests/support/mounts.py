"""A folder seen through a read-only bind mount, where permission bits would not stop root."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["read_only_view"]


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


def _mount(*args: str) -> None:
    try:
        result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("a read-only data dir needs a read-only bind mount: no mount command here")
    if result.returncode != 0:
        pytest.skip(f"a read-only data dir needs a read-only bind mount, which this process may not make "
                    f"(root, or CAP_SYS_ADMIN): mount {' '.join(args)}: {result.stderr.strip()}")
