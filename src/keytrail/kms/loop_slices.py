"""Long sweeps over many keys on the event loop, a slice at a time.

A loop over thousands of keys that never waits on anything is one step of the event loop: every
call waits until it ends. Between two slices the loop runs the calls that came in meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

__all__ = ["in_slices"]

T = TypeVar("T")


async def in_slices(items: list[T], size: int) -> AsyncIterator[list[T]]:
    """`items`, `size` at a time, letting the event loop's other work run between two slices."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield items[start:start + size]
