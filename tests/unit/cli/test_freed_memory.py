"""After its start a node hands the memory the start freed back to the system (glibc's
`malloc_trim`), and starts the same where the C library has no such call. The resident memory this
saves is measured by the benchmark's scale table (bench/phases.py), not here."""

from __future__ import annotations

import ctypes
from typing import Any

import pytest

from keytrail.cli import node


class _Glibc:
    def __init__(self) -> None:
        self.trims: list[int] = []

    def malloc_trim(self, pad: int) -> int:
        self.trims.append(pad)
        return 1


def test_the_start_trims_the_heap_with_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Glibc()
    opened: list[str] = []

    def cdll(name: str) -> Any:
        opened.append(name)
        return libc

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    node._release_freed_memory()
    assert opened == ["libc.so.6"] and libc.trims == [0]


@pytest.mark.parametrize("library", [OSError("libc.so.6: cannot open shared object file"), object()])
def test_without_glibc_the_start_goes_on(monkeypatch: pytest.MonkeyPatch, library: object) -> None:
    def cdll(name: str) -> object:
        if isinstance(library, OSError):
            raise library
        return library  # a C library without malloc_trim (musl)

    monkeypatch.setattr(ctypes, "CDLL", cdll)
    node._release_freed_memory()  # returns, raising nothing
