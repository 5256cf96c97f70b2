"""Source adapter for CloudTrail record dicts: in memory, or read from CloudTrail log files."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from keytrail.pipeline.runner import Batch

__all__ = ["RecordsSource"]


class RecordsSource:
    """Batches of CloudTrail record dicts (offline files, tests).

    With `resume` (a replayable sequence), offsets are record positions and a restart skips
    what the state covers. Without it (log files that may differ from run to run), offsets
    continue from the state's and every record is read: repeats are dropped by eventID.
    """

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        partition: str = "records",
        max_records: int = 10_000,
        progress: Callable[[int], None] | None = None,
        resume: bool = True,
    ) -> None:
        self.records = records
        self.partition = partition
        self.max_records = max_records
        self.progress = progress
        self.resume = resume

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        start = start_at(self.partition)
        iterator = iter(self.records)
        offset = 0 if self.resume else start
        if self.resume:
            for _ in islice(iterator, start):  # already covered by the state
                offset += 1
        while chunk := list(islice(iterator, self.max_records)):
            yield Batch(self.partition, range(offset, offset + len(chunk)), records=chunk)
            offset += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        raise RuntimeError("records sources have a single owner: nothing can move their state on")
