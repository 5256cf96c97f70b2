"""Following the embedded event log from an offset, and the live detector loop that reads it
(in `keytrail serve` under the dev clock, and in its detector child process otherwise)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from keytrail.audit.imported import ImportedSpans
from keytrail.audit.integrity import imported_offsets
from keytrail.audit.trail import audit_paths
from keytrail.detect.alarms import Alarm
from keytrail.detect.runner import DetectorRunner, batch_guard
from keytrail.detect.sources import UNJUDGED
from keytrail.log_lines import retention_gap
from keytrail.transport.segment_log import event_log_dir
from keytrail.transport.segment_reader import SegmentReader, StallWatch

__all__ = ["DETECTOR_TICK_SECONDS", "detect_live", "follow_event_log", "judged_up_to"]

log = logging.getLogger(__name__)

DETECTOR_TICK_SECONDS = 5.0
# The detector reads the live log in batches of up to DETECTOR_BATCH events, letting a partial
# batch's records gather DETECTOR_GATHER_SECONDS: each read and decode (polars) has a fixed cost.
# Beside `serve` under wrk -c16 (Encrypt, 8 interleaved rounds), 4,000 and 0.25 s against 500 and
# 0.1 s took the detector child from 12 to 9 µs of CPU per event, CPU the serving process then
# has on a 2-core machine; an alarm waits at most that much longer (the target is 2 s).
DETECTOR_BATCH = 4000
DETECTOR_GATHER_SECONDS = 0.25


async def follow_event_log(
    data_dir: Path, *, start: int = 0, batch: int = 500, idle_seconds: float = 0.1,
) -> AsyncIterator[tuple[list[bytes], int]]:
    """Yield the Avro values of the node's event log, oldest first, each batch with the offset
    after it, then wait for more. No values are yielded whenever the log is idle, so callers can
    do timed work.

    Reads run in a worker thread (each one lists the segment files and checks new frames'
    CRCs), so the serving event loop only hands over the values. The reader holds one segment's
    index at a time, so following a long-lived log keeps its memory flat."""
    async for values, offset, _ in _follow(data_dir, start, batch, idle_seconds):
        yield values, offset


async def _follow(data_dir: Path, start: int, batch: int, idle_seconds: float,
                  held: Callable[[int | None], None] = lambda offset: None,
                  ) -> AsyncIterator[tuple[list[bytes], int, list[range]]]:
    """`follow_event_log`, each batch also with the offsets its values were read at; `held` as
    StallWatch's `on_held`."""
    reader = SegmentReader(event_log_dir(data_dir))
    stall = StallWatch(reader.directory, "detector", "judged", held)
    offset, first_read = start, True
    while True:
        values, offset, gaps, spans, end = await asyncio.to_thread(_read_batch, reader, offset, batch)
        for gap in gaps:
            if not (first_read and gap.start == start):  # a replay begins at the oldest record kept: no news
                _say_passed_over(reader.directory, gap)
        first_read = False
        await stall.polled(offset, end, len(values))
        yield values, offset, spans
        if len(values) < batch:
            await asyncio.sleep(idle_seconds)  # let a live log gather a fuller batch


def _read_batch(reader: SegmentReader, offset: int,
                limit: int) -> tuple[list[bytes], int, list[range], list[range], int]:
    """Up to `limit` values from `offset` on, and the offset after them, read on into the next
    segment at the end of one: a batch comes short only at the log's end, which is what the
    detector takes it for (caught up, nothing waiting). A segment's end taken for the log's
    (every 64 MiB of a log replayed after a start) had it tick as of the wall clock mid-replay.
    Also the offsets passed over because retention deleted them before they were read, those
    the values were read at, and the log's end as the last read saw it."""
    values: list[bytes] = []
    gaps: list[range] = []
    spans: list[range] = []
    end = offset
    while len(values) < limit:
        first, payloads, end = reader.read(offset, limit - len(values))
        if not payloads:
            break
        if first > offset:
            gaps.append(range(offset, first))
        values += payloads
        offset = first + len(payloads)
        spans.append(range(first, offset))
        if offset >= end:
            break
    return values, offset, gaps, spans, end


def _say_passed_over(directory: Path, gap: range) -> None:
    """Retention deleted segments the detector had not read yet (it was stopped, or behind for longer
    than the node's reader grace, which does not wait for it): their calls were never judged, and
    an alarm they would have raised is missed. Said once, with how many, instead of in silence."""
    log.warning(retention_gap(f"the event log in {directory}", gap.start, gap.stop, "detector", UNJUDGED))


async def detect_live(data_dir: Path, runner: DetectorRunner, announce: Callable[[list[Alarm]], None],
                      judged: Callable[[int], None] = lambda offset: None, *, start: int = 0,
                      held: Callable[[int | None], None] = lambda offset: None) -> None:
    """Feed the detector every event of the log from `start` on, tick its time-based rules every few
    seconds, and hand each batch's raised or escalated alarms to `announce`, and the log's offset it
    has judged up to (for the detector's lag) to `judged`, and the offset it is held at in front of
    a record it cannot read (None once it reads on) to `held`; runs until cancelled. The history
    `keytrail audit import` added is told apart by the digests that sign it: its keys are judged as
    of its end."""
    loop = asyncio.get_running_loop()
    last_tick = loop.time()
    caught_up = False
    # Read once: an import cannot add to the log while this node holds it.
    imported = ImportedSpans(await asyncio.to_thread(imported_offsets, audit_paths(data_dir)[1]))
    async for values, offset, spans in _follow(data_dir, start, DETECTOR_BATCH, DETECTOR_GATHER_SECONDS, held):
        with batch_guard(f"a batch of {len(values)} values of the event log"):
            for run, from_import in imported.runs(values, spans):  # a damaged value costs itself, not its batch
                announce(await runner.feed_values(run, imported=from_import, from_event_log=True))
            # Until a batch comes short (the log's end) the detector is replaying the past after a
            # start: a tick as of the clock would judge keys on half their history (unused-key for
            # a key whose later use is still unread) and let go of alarms that later events of
            # their window would then raise anew.
            if len(values) < DETECTOR_BATCH and not caught_up:
                caught_up = True
                runner.caught_up()
            if caught_up and loop.time() - last_tick >= DETECTOR_TICK_SECONDS:
                announce(await runner.tick(behind=len(values) == DETECTOR_BATCH))  # a full batch: more waits
                last_tick = loop.time()
        judged(offset)  # judged, or passed over


async def judged_up_to(end: int, judged: Callable[[], int], seconds: float = DETECTOR_TICK_SECONDS) -> bool:
    """Wait until the live detector has judged the event log up to `end` (`judged`: the offset
    `detect_live` told last), at most `seconds`, after which its own loop ticks anyway; whether
    it has."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while judged() < end:
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True
