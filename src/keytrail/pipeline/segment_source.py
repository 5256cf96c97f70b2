"""Source adapter for the embedded on-disk event log (`keytrail.transport.segment_log`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

from keytrail.audit.integrity import beside, imported_offsets
from keytrail.log_lines import retention_gap
from keytrail.pipeline.runner import UNCOUNTED, Batch
from keytrail.pipeline.state import SEGMENT_LOG_PARTITION
from keytrail.transport.frames import Payloads
from keytrail.transport.segment_reader import SegmentReader, StallWatch

__all__ = ["SEGMENT_LOG_PARTITION", "SegmentLogSource"]

log = logging.getLogger(__name__)


class SegmentLogSource:
    """Batches from the embedded on-disk event log (`keytrail.transport.segment_log`).

    The state file holds the offset: `commit` acknowledges nothing, it notes what the state covers
    (for the lag). With `follow` it polls for new records every `poll_seconds` until `stop` is set,
    and after a partial batch of the live log waits `gather_seconds` (default: `poll_seconds`) so
    the next batch is fuller; otherwise it ends at the log's end.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_records: int = 10_000,
        follow: bool = False,
        poll_seconds: float = 0.2,
        gather_seconds: float | None = None,
        stop: asyncio.Event | None = None,
        counted: Callable[[str, bytes], Awaitable[bool]] | None = None,
        on_held: Callable[[int | None], None] = lambda offset: None,
    ) -> None:
        self.directory = directory
        self.counted = counted  # Runner.counted: whether the state counted a record
        self.on_held = on_held  # StallWatch's, while following: the offset it is held at, None once it reads on
        self.max_records = max_records
        self.follow = follow
        self.poll_seconds = poll_seconds
        self.gather_seconds = poll_seconds if gather_seconds is None else gather_seconds
        self.stop = stop or asyncio.Event()
        self._offset = 0
        # The offset the persisted state covers (what the queries read): the runner commits a batch
        # once the state covering it is on disk.
        self._covered = 0
        self._end: int | None = None  # the log's end at the last read

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        reader = SegmentReader(self.directory)
        # Read once, as the detector reads them: an import cannot add to a log its node holds.
        imported = await asyncio.to_thread(imported_offsets, beside(self.directory))
        self._read_from(start_at(SEGMENT_LOG_PARTITION))
        # The log began again below the state's offset: the next batch says so.
        began_again = await self._replaced_below(reader)
        stall = StallWatch(self.directory, "consumer", "counted", self.on_held)
        while not self.stop.is_set():
            first, values, end = await asyncio.to_thread(reader.read, self._offset, self.max_records)
            self._end = end
            if self.follow:  # a one-off read ends at the damage, and `consume` names it
                await stall.polled(first + len(values) if values else self._offset, end, len(values))
            if end < self._offset:
                self._read_from_start(end)
                reader, began_again = SegmentReader(self.directory), True
                continue
            if not values:
                if not self.follow:
                    return
                await self._pause(self.poll_seconds)
                continue
            if first > self._offset:
                self._passed_over(first)
            yield self._batch(first, values, end, began_again, imported)
            began_again = False
            if self.follow and len(values) < self.max_records and self._offset >= end:
                # Following a live log: let records gather, so each batch's fixed cost (decode,
                # aggregate, state) is shared by many events instead of paid per few calls.
                await self._pause(self.gather_seconds)
        if self.follow:
            # Stopped (serve stops): the calls answered just before were in the log, unread, and
            # the state checkpointed without them; `keytrail usage` and cost after the stop missed
            # them until the next start. One more read takes them; one only, so that a consumer far
            # behind still stops at once.
            first, values, end = await asyncio.to_thread(reader.read, self._offset, self.max_records)
            if values and first == self._offset:
                yield self._batch(first, values, end, began_again, imported)

    def _batch(self, first: int, values: Payloads, end: int, began_again: bool, imported: Sequence[range]) -> Batch:
        """The batch of `values` read at `first` on, the log ending at `end`; the offset moves past it."""
        # Offsets within a read are consecutive (the log numbers its records one by one).
        self._offset = first + len(values)
        read = range(first, self._offset)
        return Batch(SEGMENT_LOG_PARTITION, read, values=values, source_end=end, began_again=began_again,
                     causal=_outside(read, imported))

    async def _replaced_below(self, reader: SegmentReader) -> bool:
        """Whether the record before the start offset is not one the state counted: the audit folder
        restored from a backup older than the metrics state, whose new records took the offsets of
        those counted after the backup. Read from the start offset on, the records below it were
        never counted. Read it from its start instead; those counted already are known by eventID."""
        if self.counted is None or self._offset == 0:
            return False
        first, values, _ = await asyncio.to_thread(reader.read, self._offset - 1, 1)
        if first != self._offset - 1 or not values or await self.counted(SEGMENT_LOG_PARTITION, values[0]):
            return False  # gone under retention, or the log ends below (see _read_from_start)
        log.warning("the event log in %s holds at offset %d a record this consumer did not count there: the audit "
                    "folder was restored from an older backup or replaced since; reading it from its start",
                    self.directory, self._offset - 1)
        self._read_from(0)
        return True

    def _read_from_start(self, end: int) -> None:
        """The log ends below the offset the state covers: mostly another trail than the one counted
        (the audit folder moved aside to start a new trail, as `keytrail serve` and `keytrail audit
        verify` advise when a trail cannot be signed on, or restored from an older backup), whose
        offsets name other records from 0 again. Read it from its start, as the Kafka source reads a
        partition that began again, instead of waiting, blind to every call, until it grows past the
        old trail's end. Records counted already (a torn tail cut back after a power loss, the same
        trail) are known by their eventIDs and not counted twice."""
        log.warning("the event log in %s ends at offset %d, below where this consumer reads (%d): a new trail "
                    "(the audit folder moved aside or restored) or one cut back; reading it from its start",
                    self.directory, end, self._offset)
        self._read_from(0)

    def _read_from(self, offset: int) -> None:
        """The log is read from `offset`, up to which the state covers it: the state's own offset, or
        the start of a log that began again (of which the state covers nothing)."""
        self._offset = self._covered = offset

    def _passed_over(self, first: int) -> None:
        """The log now begins above where this consumer reads: retention deleted segments it had not
        read yet (it was stopped, failing or behind for longer than the node's reader grace, which
        does not wait for it). Said once each time, with how many: their calls are in no figure."""
        log.warning(retention_gap(f"the event log in {self.directory}", self._offset, first, "consumer", UNCOUNTED))

    async def _pause(self, seconds: float) -> None:
        # Ends early on stop: shutting down need not wait out a gather.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    def lag(self) -> dict[str, int]:
        """Records not yet consumed, as of the last read (the log polled while idle, too): the log's
        end less the offset the persisted state covers, as serve's consumer child's lag. Records read
        but not yet checkpointed (up to 2 s of them) are not in the figures the queries read: they are
        lag too. Unlike a Kafka partition's messages, every record read is handed on in a batch (none
        is skipped as no audit event), so only a commit covers it."""
        return {} if self._end is None else {SEGMENT_LOG_PARTITION: max(0, self._end - self._covered)}

    async def commit(self, batch: Batch) -> None:
        # The state on disk covers `batch` now; unless it is of a trail read before the log began
        # again (the runner's checkpoint came after): the state covers nothing of the new one yet.
        if batch.end <= self._offset:
            self._covered = batch.end

    async def rewind(self, partition: str, offset: int) -> None:
        self._read_from(offset)  # to what the state on disk covers, on purpose: not a log that began again


def _outside(read: range, imported: Sequence[range]) -> list[range]:
    """The offsets of `read` that hold the node's own calls (in the order they happened), not the
    history `keytrail audit import` added (`imported`: in the order of its files' names)."""
    spans = [read]
    for span in imported:
        spans = [part for whole in spans for part in (range(whole.start, min(whole.stop, span.start)),
                                                      range(max(whole.start, span.stop), whole.stop)) if part]
    return spans
