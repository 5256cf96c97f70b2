"""The bounded waits of tests/support: a condition never met fails the test, naming what was awaited."""

from __future__ import annotations

import asyncio
import threading

import pytest

from tests.support.waits import eventually, eventually_blocking


async def test_eventually_returns_once_another_task_makes_the_condition_true() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, done.set)
    await eventually(done.is_set, what="the event", timeout=5)


async def test_eventually_fails_after_its_timeout_saying_what_it_waited_for() -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(AssertionError, match="timed out after 0.1 s waiting for the hook's third try"):
        await eventually(lambda: False, what="the hook's third try", timeout=0.1)
    assert asyncio.get_running_loop().time() - started < 2


def test_eventually_blocking_returns_once_a_thread_makes_the_condition_true() -> None:
    done = threading.Event()
    threading.Timer(0.05, done.set).start()
    eventually_blocking(done.is_set, what="the event", timeout=5)


def test_eventually_blocking_fails_after_its_timeout_saying_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match="timed out after 0.1 s waiting for 300 answered calls"):
        eventually_blocking(lambda: False, what="300 answered calls", timeout=0.1)
