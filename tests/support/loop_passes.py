"""Counting the event loop's passes while a test's code runs, to tell whether a long piece of
work lets the loop's other work run between its slices or holds the loop from start to end."""

from __future__ import annotations

import asyncio
from types import TracebackType


class LoopPasses:
    """`async with LoopPasses() as passes:` runs a task that counts a pass each time the loop lets
    it run (`passes.count`), until the block ends."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopPasses:
        self._task = asyncio.create_task(self._counting())
        await asyncio.sleep(0)  # counting from the first pass on
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _counting(self) -> None:
        while True:
            self.count += 1
            await asyncio.sleep(0)
