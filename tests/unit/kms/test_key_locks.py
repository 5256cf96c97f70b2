"""KeyLocks.hold_if_free: what the HSM's upkeep tries before it settles a custom key store, so that it
neither waits on a Connect or Disconnect at work nor settles a store one is changing; and the bounded
wait for a first lock, which the PostgreSQL store uses so that calls queued on a key do not wait out
each other's database timeouts."""

from __future__ import annotations

import asyncio

import pytest

from keytrail.kms import errors
from keytrail.kms.locks import KeyLocks


async def _held_until(locks: KeyLocks, name: str, done: asyncio.Event) -> asyncio.Task[None]:
    """A task that holds `name` until `done` is set, once it holds it."""
    holding = asyncio.Event()

    async def holder() -> None:
        async with locks.hold(name):
            holding.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    return task


async def test_a_free_name_is_held_until_exit_and_freed_after() -> None:
    locks = KeyLocks()
    async with locks.hold_if_free("stores") as free:
        assert free and locks.held("stores")
    assert not locks.held("stores")
    async with locks.hold("stores"):  # not left taken
        pass


async def test_a_name_another_task_holds_is_not_free_and_nothing_waits() -> None:
    locks, done = KeyLocks(), asyncio.Event()

    task = await _held_until(locks, "stores", done)
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


async def test_a_name_just_released_to_a_waiting_task_is_not_free() -> None:
    # The holder lets go while another task waits for the name: that task is woken but has not run
    # yet, so the lock reads unlocked. Trying the name then must answer False at once, not queue
    # behind the waiter (and its whole Connect) and answer True after it.
    locks, queued, inside, let_go = KeyLocks(), asyncio.Event(), asyncio.Event(), asyncio.Event()
    seen: list[bool] = []

    async def holder_then_try() -> None:
        async with locks.hold("stores"):
            await queued.wait()  # the waiter is in the lock's queue by then
        async with locks.hold_if_free("stores") as free:  # no await between the release and this try
            seen.append(free)

    async def waiter() -> None:
        queued.set()
        async with locks.hold("stores"):
            inside.set()
            await let_go.wait()

    tasks = [asyncio.create_task(holder_then_try()), asyncio.create_task(waiter())]
    await inside.wait()
    let_go.set()
    await asyncio.gather(*tasks)
    assert seen == [False]


async def test_a_bounded_first_wait_gives_the_store_s_error_and_leaves_the_name_usable() -> None:
    def timed_out() -> errors.KmsError:
        return errors.DependencyTimeoutException("The key store did not answer within 0.05 seconds.")

    locks, done = KeyLocks(first_lock_wait=(0.05, timed_out)), asyncio.Event()

    task = await _held_until(locks, "key", done)
    with pytest.raises(errors.DependencyTimeoutException, match="0.05 seconds"):
        async with locks.hold("key"):
            pass
    assert not locks.held("key")
    done.set()
    await task
    async with locks.hold_if_free("key") as free:  # the refused waiter left nothing queued
        assert free


async def test_without_a_bound_a_first_wait_lasts_as_long_as_the_holder() -> None:
    locks, done = KeyLocks(), asyncio.Event()
    entered: list[str] = []

    async def waiter() -> None:
        async with locks.hold("key"):
            entered.append("waiter")

    task = await _held_until(locks, "key", done)
    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.1)
    assert entered == []
    done.set()
    await asyncio.gather(task, waiting)
    assert entered == ["waiter"]
