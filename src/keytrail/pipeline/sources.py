"""Source adapters for CloudTrail record dicts: in memory, or read from CloudTrail log files."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from keytrail.owner_only import open_regular
from keytrail.pipeline.layout import CLOUDTRAIL_PARTITION
from keytrail.pipeline.runner import Batch, state_file
from keytrail.pipeline.state import PartitionState
from keytrail.transport.cloudtrail_logs import STDIN, ReadReport, iter_cloudtrail_records
from keytrail.transport.sized_batches import sized_batches

__all__ = ["BATCH_TEXT", "CloudTrailFilesSource", "RecordsSource"]

#: The most text the records of one batch read from CloudTrail files were read from, besides their
#: count (`max_records`): 10,000 records of AWS's usual ~1 KB are 11 MB of it, 10,000 of 200 KB
#: (requestParameters CloudTrail keeps up to 100 KB of, responseElements alike) were 2 GB.
BATCH_TEXT = 16 << 20


class RecordsSource:
    """Batches of a replayable sequence of CloudTrail record dicts (a report's files, tests):
    offsets are record positions, and a restart skips what the state covers. Records read from
    files are batched by the text they were read from too (`text_read`: their ReadReport's text)."""

    def __init__(
        self,
        records: Iterable[Mapping[str, Any]],
        *,
        partition: str = "records",
        max_records: int = 10_000,
        progress: Callable[[int], None] | None = None,
        text_read: Callable[[], int] = lambda: 0,
    ) -> None:
        self.records = records
        self.partition = partition
        self.max_records = max_records
        self.progress = progress
        self.text_read = text_read

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        iterator = iter(self.records)
        offset = 0
        for _ in islice(iterator, start_at(self.partition)):  # already covered by the state
            offset += 1
        for chunk in sized_batches(iterator, self.text_read, max_items=self.max_records, max_text=BATCH_TEXT):
            yield Batch(self.partition, range(offset, offset + len(chunk)), records=chunk)
            offset += len(chunk)
            if self.progress is not None:
                self.progress(len(chunk))

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        raise RuntimeError("records sources have a single owner: nothing can move their state on")


class CloudTrailFilesSource:
    """Batches of the KMS records of CloudTrail log files, for `keytrail consume --cloudtrail`.

    Offsets continue from the state's. A file whose every record a persisted checkpoint covers is
    listed in the partition's state file (by the SHA-256 of its bytes) and later runs
    pass it over, so consuming a synced bucket again reads only its new files: repeats would be
    dropped by eventID too, but a partition remembers only its recent eventIDs, far fewer than a
    bucket holds. A file whose listing a crash lost is read again; its records, the last counted,
    are among the remembered ones. A file that cannot be read to its end is never listed: the next run
    says so again (the records before its damage, read again, are among the remembered ones). A file's
    records are handed on a batch at a time, as they are read.
    Once `stop` is set it reads no further file: the records read so far are its last batch.
    """

    def __init__(
        self,
        files: Sequence[Path],
        state_dir: Path,
        *,
        partition: str = CLOUDTRAIL_PARTITION,
        max_records: int = 10_000,
        on_problem: Callable[[str], None] | None = None,
        progress: Callable[[int], None] | None = None,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.files = files
        self.state_file = state_file(state_dir, partition)
        self.partition = partition
        self.max_records = max_records
        self.on_problem = on_problem
        self.progress = progress
        self.stop = stop or asyncio.Event()
        self._ends: list[tuple[int, str]] = []  # (offset after a file's last record, its name), in order

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        offset = start_at(self.partition)  # the runner opens (creates) the state file
        read = ReadReport()  # the text of every file's records: each file's own report counts the rest
        records = self._records(offset, self._state(PartitionState.counted_files), read)
        # a batch at a time: a file may hold hundreds of MB of records
        for chunk in sized_batches(records, lambda: read.text, max_items=self.max_records, max_text=BATCH_TEXT):
            yield Batch(self.partition, range(offset, offset + len(chunk)), records=chunk)
            offset += len(chunk)

    def _records(self, offset: int, counted: Collection[str], read: ReadReport) -> Iterator[Mapping[str, Any]]:
        """The records of the files not counted yet, from `offset` on, their text added to
        `read.text`; the offset after each file's last record noted with its name (`commit`)."""
        for path in self.files:
            if self.stop.is_set():  # SIGTERM/SIGINT: a history of years would otherwise be read to its end
                break
            name = _identity(path)
            if name is None or name not in counted:
                report, before = ReadReport(), read.text
                for record in iter_cloudtrail_records([path], report=report, on_problem=self.on_problem):
                    read.text = before + report.text
                    offset += 1
                    yield record
                if name is not None and report.files + report.digests:
                    self._ends.append((offset, name))
            if self.progress is not None:
                self.progress(1)

    async def commit(self, batch: Batch) -> None:
        done = [name for end, name in self._ends if end <= batch.end]
        if done:
            self._state(lambda state: state.add_counted_files(done))
            del self._ends[: len(done)]

    async def rewind(self, partition: str, offset: int) -> None:
        raise RuntimeError("file sources have a single owner: nothing can move their state on")

    def _state(self, use: Callable[[PartitionState], Any]) -> Any:
        state = PartitionState(self.state_file)
        try:
            return use(state)
        finally:
            state.close()


def _identity(path: Path) -> str | None:
    """A log file as the state lists it: the SHA-256 of its bytes, so a file downloaded again or
    moved is still known and another file of the same name never is; None when it cannot be read
    (reading it for its records reports why), and for standard input (read once, for its records)."""
    if path == STDIN:
        return None
    try:
        with open(open_regular(path), "rb") as handle:  # a FIFO: not waited on (reading it says why)
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError:
        return None
