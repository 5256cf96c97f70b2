"""Bounded waits for a condition that other tasks, threads or processes make true.

A bare `while not condition: sleep(...)` turns a regression into a test run that hangs (until
pytest-timeout's 300 s kill, which names no condition); these fail the test after `timeout`,
saying what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

__all__ = ["eventually", "eventually_blocking"]


async def eventually(condition: Callable[[], object], *, what: str, timeout: float = 30.0,
                     interval: float = 0.01) -> None:
    """Poll `condition` (on the event loop, between sleeps of `interval`) until it is truthy;
    fail the test if it is not after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def eventually_blocking(condition: Callable[[], object], *, what: str, timeout: float = 30.0,
                        interval: float = 0.05) -> None:
    """`eventually` for a test that is not a coroutine (its condition made true by threads or
    processes): blocks the calling thread between polls."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
