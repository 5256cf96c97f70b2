"""Random UUID v4 strings for request ids and event ids, cheaply.

Every KMS call needs two (`x-amzn-RequestId`, the audit record's `eventID`). `uuid.uuid4()` costs
one `os.urandom` system call and a `UUID` object per id (~2.8 µs measured); drawing the random bits
from a 4 KiB `os.urandom` buffer and formatting its hex text directly costs ~0.8 µs. The ids are
not secrets, only unique: the pool holds nothing worth protecting, and a forked child drops the
pool it inherited so that parent and child never hand out the same ids.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable

__all__ = ["UuidSource"]

_POOL_BYTES = 4096
_HEX_PER_ID = 32
# RFC 4122 variant: the top two bits of the clock_seq_hi nibble are 10, so 8, 9, a or b.
_VARIANT = {digit: "89ab"[int(digit, 16) & 0b11] for digit in "0123456789abcdef"}


class UuidSource:
    """Hands out random (version 4, RFC 4122 variant) UUID strings; call it for the next one."""

    __slots__ = ("__weakref__", "_hex", "_lock", "_next")

    def __init__(self) -> None:
        self._hex = ""
        self._next = 0
        self._lock = threading.Lock()  # two threads must never take the same slice (~0.15 µs)
        drop = weakref.WeakMethod(self._drop)
        os.register_at_fork(after_in_child=lambda: _call_if_alive(drop))

    def __call__(self) -> str:
        with self._lock:
            start = self._next
            if start >= len(self._hex):
                self._hex, start = os.urandom(_POOL_BYTES).hex(), 0
            self._next = start + _HEX_PER_ID
            h = self._hex[start:start + _HEX_PER_ID]
        # The 13th digit becomes the version (4); the 17th keeps two random bits under the variant.
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"

    def _drop(self) -> None:
        # In the forked child: another thread of the parent may have held the lock at the fork.
        self._hex, self._next, self._lock = "", 0, threading.Lock()


def _call_if_alive(method: weakref.WeakMethod[Callable[[], None]]) -> None:
    bound = method()
    if bound is not None:
        bound()
