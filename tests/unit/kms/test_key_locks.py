"""KeyLocks.hold_if_free: what the HSM's upkeep tries before it settles a custom key store, so that it
neither waits on a Connect or Disconnect at work nor settles a store one is changing."""

from __future__ import annotations

import asyncio

from keytrail.kms.locks import KeyLocks


async def test_a_free_name_is_held_until_exit_and_freed_after() -> None:
    locks = KeyLocks()
    async with locks.hold_if_free("stores") as free:
        assert free and locks.held("stores")
    assert not locks.held("stores")
    async with locks.hold("stores"):  # not left taken
        pass


async def test_a_name_another_task_holds_is_not_free_and_nothing_waits() -> None:
    locks, holding, done = KeyLocks(), asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with locks.hold("stores"):
            holding.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    async with locks.hold_if_free("stores") as free:
        assert not free and not locks.held("stores")
    done.set()
    await task
    async with locks.hold_if_free("stores") as free:
        assert free


async def test_a_name_the_task_holds_already_is_free_to_it() -> None:
    locks = KeyLocks()
    async with locks.hold("stores"), locks.hold_if_free("stores") as free:
        assert free
    assert not locks.held("stores")
