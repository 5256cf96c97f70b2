"""Per-key locks of one process, re-entrant within one task: what the stores build `key_lock` on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from weakref import WeakValueDictionary

__all__ = ["KeyLocks"]


class KeyLocks:
    """One asyncio lock per name. A task (with what it awaits) that holds a name may take it
    again: a call that locked its key finds the same key again through `apply_due`."""

    def __init__(self) -> None:
        self._locks: WeakValueDictionary[Hashable, asyncio.Lock] = WeakValueDictionary()
        self._held: ContextVar[frozenset[Hashable]] = ContextVar(f"held-{id(self)}", default=frozenset())

    def held(self, name: Hashable) -> bool:
        """Whether the running task holds `name` already."""
        return name in self._held.get()

    @asynccontextmanager
    async def hold(self, name: Hashable) -> AsyncIterator[None]:
        if self.held(name):
            yield
            return
        lock = self._locks.setdefault(name, asyncio.Lock())  # kept alive by this frame while held
        async with lock:
            token = self._held.set(self._held.get() | {name})
            try:
                yield
            finally:
                self._held.reset(token)
