"""Per-key locks of one process, re-entrant within one task: what the stores build `key_lock` on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from weakref import WeakValueDictionary

from keytrail.kms import errors

__all__ = ["SECOND_LOCK_WAIT", "KeyLocks", "second_lock_refused"]

# Seconds a task that holds one key's lock waits for another's. Two such tasks can wait for each
# other (a ReEncrypt from key A to key B holding A, one from B to A holding B, each finding the
# other key due for rotation): the wait that runs out fails its call, whose client retries, and
# the other call goes on. A task holding no lock closes no cycle: it waits as long as it takes
# unless the store bounds that too (`first_lock_wait`).
SECOND_LOCK_WAIT = 5.0


def second_lock_refused() -> errors.KmsError:
    """What a call gets when the wait for a second key's lock ran out (or the database broke a
    cycle of nodes' locks): retryable, as KMSInternalException is for AWS SDKs."""
    return errors.KMSInternalException(
        "The request waited too long for a key that another request was changing. You can retry the request.")


class KeyLocks:
    """One asyncio lock per name. A task (with what it awaits) that holds a name may take it
    again: a call that locked its key finds the same key again through `apply_due`."""

    def __init__(self, second_lock_wait: float | None = None,
                 first_lock_wait: tuple[float, Callable[[], errors.KmsError]] | None = None) -> None:
        """`first_lock_wait`, if given: how long a task holding no lock waits for one, and the
        error it gets after that (a store whose lock holders wait on a database that stopped
        answering queues its calls behind each other, each as long as the database's timeout)."""
        self._locks: WeakValueDictionary[Hashable, asyncio.Lock] = WeakValueDictionary()
        self._held: ContextVar[frozenset[Hashable]] = ContextVar(f"held-{id(self)}", default=frozenset())
        # Per name, the tasks in `hold` (holding it or waiting for it): a lock just released to a
        # waiter that has not run yet reads unlocked, and is not free (`hold_if_free`).
        self._wanted: dict[Hashable, int] = {}
        self._second_lock_wait = SECOND_LOCK_WAIT if second_lock_wait is None else second_lock_wait
        self._first_lock_wait = first_lock_wait

    def held(self, name: Hashable) -> bool:
        """Whether the running task holds `name` already."""
        return name in self._held.get()

    @asynccontextmanager
    async def hold(self, name: Hashable) -> AsyncIterator[None]:
        """Hold `name`; KMSInternalException if the task holds another name and `name` stays
        taken for longer than the second lock's wait (see SECOND_LOCK_WAIT)."""
        held = self._held.get()
        if name in held:
            yield
            return
        lock = self._locks.setdefault(name, asyncio.Lock())  # kept alive by this frame while held
        self._wanted[name] = self._wanted.get(name, 0) + 1
        try:
            await self._acquire(lock, second=bool(held))
            try:
                token = self._held.set(held | {name})
                try:
                    yield
                finally:
                    self._held.reset(token)
            finally:
                lock.release()
        finally:
            self._unwanted(name)

    def _unwanted(self, name: Hashable) -> None:
        if (left := self._wanted.pop(name) - 1) > 0:
            self._wanted[name] = left

    @asynccontextmanager
    async def hold_if_free(self, name: Hashable) -> AsyncIterator[bool]:
        """Hold `name` if no other task holds it (True), else hold nothing and wait for nothing
        (False): for work that may be left to the next try, and whose waiting could hold up more."""
        held = self._held.get()
        if name in held:
            yield True
            return
        lock = self._locks.setdefault(name, asyncio.Lock())
        if lock.locked() or self._wanted.get(name):  # held, or released to a waiter not yet run
            yield False
            return
        await lock.acquire()  # free, no one waits, and nothing awaits between the look and this: at once
        try:
            token = self._held.set(held | {name})
            try:
                yield True
            finally:
                self._held.reset(token)
        finally:
            lock.release()

    async def _acquire(self, lock: asyncio.Lock, *, second: bool) -> None:
        if second:
            wait, refused = self._second_lock_wait, second_lock_refused
        elif self._first_lock_wait is not None:
            wait, refused = self._first_lock_wait
        else:
            await lock.acquire()
            return
        try:
            async with asyncio.timeout(wait):
                await lock.acquire()
        except TimeoutError:
            raise refused() from None
