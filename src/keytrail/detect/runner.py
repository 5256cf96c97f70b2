"""The detector as a running service: feed events, tick, close. Used by `keytrail serve`'s detector
child (cli/sidecar.py; in-process with --dev-clock) and by the standalone `keytrail detect --kafka`.

    runner = DetectorRunner.open(data_dir, hooks=HooksConfig(mqtt="mqtt://127.0.0.1:1883"), clock=clock)
    await runner.feed(records)      # CloudTrail dicts, in order
    await runner.feed_events(events)  # or events already read (`avro_events`)
    await runner.feed_values(values)  # or the audit topic's values
    await runner.tick()             # time rules as of the clock (else the last event's time)
    await runner.close()            # deliver queued alarms and their latest counts
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from keytrail.audit.imported import origin_runs
from keytrail.clock import Clock
from keytrail.detect.alarms import Alarm
from keytrail.detect.checks.permissive import OrganizationOf, no_organization
from keytrail.detect.engine import Detector
from keytrail.detect.events import KmsEvent
from keytrail.detect.hooks import HooksConfig, build_sinks, outbox_paths
from keytrail.detect.rules import RuleSet
from keytrail.detect.sinks import AlarmSink, Dispatcher
from keytrail.detect.sinks.jsonl import read_alarms
from keytrail.detect.sinks.outbox import Outbox, warn_of_stale
from keytrail.detect.sources import Decoder, ValueBatch, default_decoder, is_avro

if TYPE_CHECKING:
    from keytrail.detect.avro_events import AvroRow

__all__ = ["CHUNK", "DetectorRunner", "batch_guard"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# Events processed between yields to the event loop: read from Avro rows and judged, ~8-15 µs each
# under load, so a chunk holds the serving loop for well under a millisecond however big the batch.
CHUNK = 50


class DetectorRunner:
    """Runs a Detector and hands what it announces to the hooks, never waiting on them."""

    def __init__(
        self,
        detector: Detector,
        sinks: Sequence[AlarmSink],
        delivered: Mapping[str, Alarm] | None = None,
        outboxes: Sequence[Outbox | None] = (),
    ) -> None:
        self.detector = detector
        self.dispatcher = Dispatcher(sinks, outboxes=outboxes)
        earlier = (delivered or {}).values()
        # The state delivered of each alarm (severity rank, count), so none goes out twice: of the
        # alarms the detector holds, and of those in alarms.jsonl (an earlier run over the same
        # events) that the replay after this start may raise again. Nothing else: `_let_go`.
        self._delivered = {a.alarm_id: (a.severity.rank, a.count) for a in earlier}
        self._unreplayed = {a.alarm_id: a.last_seen for a in earlier}  # not raised again yet, by lastSeen
        detector.book.resume(earlier)  # an alarm whose first events retention deleted keeps its id
        self._replayed = False
        self._decode: Decoder | None = None  # made on first use: imports the Avro codec
        # Records of the source not yet judged, per partition, as of the last batch judged (`run`).
        self.lag: dict[str, int] = {}

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        hooks: HooksConfig | None = None,
        rules: RuleSet | None = None,
        clock: Clock | None = None,
        organization_of: OrganizationOf = no_organization,
    ) -> DetectorRunner:
        """A runner writing `<data_dir>/alarms.jsonl` plus the configured hooks (call inside the loop);
        `organization_of`: the accounts' organizations (permissive-key trusts a key's own)."""
        hooks = hooks or HooksConfig()
        delivered = read_alarms(data_dir / "alarms.jsonl")
        # What alarms.jsonl holds is not announced again: what a hook had not been given of it
        # when the previous run ended (killed, or the hook down) comes from the hook's outbox.
        paths = outbox_paths(data_dir, hooks)
        warn_of_stale(data_dir, [path for path in paths if path is not None])
        outboxes = [Outbox(path) if path is not None else None for path in paths]
        return cls(Detector(rules, clock, organization_of), build_sinks(data_dir, hooks), delivered, outboxes)

    async def feed(self, records: Iterable[Mapping[str, Any]], *, imported: bool = False) -> list[Alarm]:
        """Process CloudTrail records; returns (and delivers) the alarms raised or escalated.
        `imported`: history `keytrail audit import` added (`Detector.process_events`)."""
        return await self._in_chunks(list(records), lambda chunk: self.detector.process(chunk, imported=imported))

    async def feed_events(self, events: Sequence[KmsEvent]) -> list[Alarm]:
        """`feed` for events already read; returns (and delivers) the alarms raised or escalated."""
        return await self._in_chunks(events, self.detector.process_events)

    async def _in_chunks(self, items: Sequence[T], judge: Callable[[Sequence[T]], list[Alarm]]) -> list[Alarm]:
        """`judge` over `items` a CHUNK at a time, yielding to the loop between chunks; what it
        raised or escalated, delivered."""
        announced: list[Alarm] = []
        for start in range(0, len(items), CHUNK):
            announced += self._publish(judge(items[start : start + CHUNK]))
            await asyncio.sleep(0)
        return announced

    async def tick(self, now: datetime | None = None, *, behind: bool = False) -> list[Alarm]:
        """Time-based rules and the latest counts of open alarms, delivered; closed alarms let go.
        `behind`: the source holds events not judged yet (a backlog, a slower partition), which may
        belong to alarms whose window has closed by the clock but not by the stream: let go of,
        such an alarm would page again as a new one at its next event."""
        announced = self._publish(self.detector.tick(now))
        closing = self._closing_time(now, behind)
        self.detector.forget_closed(closing)
        self._let_go(closing)
        return announced

    def _closing_time(self, now: datetime | None, behind: bool) -> datetime | None:
        """The time windows are judged closed as of: the detector's moment, or while the source is
        behind, the latest event judged where that is earlier."""
        moment, latest = self.detector.moment(now), self.detector.last_event_time
        if behind and moment is not None and latest is not None:
            return min(moment, latest)
        return moment

    def caught_up(self) -> None:
        """The source's past has been read (the replay after a start is over): from the next tick
        on, the alarms of alarms.jsonl it did not raise again are no longer remembered."""
        self._replayed = True

    def delivered_ranks(self) -> dict[str, int]:
        """The severity rank delivered of each alarm the runner remembers (at its start, those of
        alarms.jsonl): what `AlarmTally.remember` takes."""
        return {alarm_id: rank for alarm_id, (rank, _) in self._delivered.items()}

    def remembered(self) -> int:
        """How many alarms' delivered state the runner keeps (to send no state twice)."""
        return len(self._delivered)

    def _let_go(self, moment: datetime | None) -> None:
        """Forget what was delivered of alarms that cannot be announced again: those the detector
        let go of (a later finding in their slot starts another alarm), and once the replay is over,
        the alarms of alarms.jsonl it has not raised again by this tick's time (time rules raise
        theirs at a tick): their events are past the source's retention, or their rule changed."""
        if self._replayed and moment is not None:
            self._unreplayed = {alarm_id: seen for alarm_id, seen in self._unreplayed.items() if seen > moment}
        book = self.detector.book
        self._delivered = {alarm_id: state for alarm_id, state in self._delivered.items()
                           if book.holds(alarm_id) or alarm_id in self._unreplayed}

    def alarms(self) -> list[Alarm]:
        return self.detector.alarms()

    async def close(self) -> None:
        """Deliver the latest state of updated alarms, drain the hooks, close them."""
        self._publish(self.detector.book.pending())
        await self.dispatcher.close()

    async def __aenter__(self) -> DetectorRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def feed_values(self, values: Sequence[bytes], *, imported: bool = False,
                          from_event_log: bool = False) -> list[Alarm]:
        """`feed` for audit topic values, in order: runs of Avro values through the columnar reader
        serve's detector child uses (a quarter of the CPU of decoding each value to a CloudTrail
        dict: bench/pipeline_sources.py), JSON records, and Avro it cannot read, through the
        record decoder, which skips what it cannot read either. Serve's detector child reads its
        event log's values here too: one damaged value costs that value, not its batch.
        `imported`: history `keytrail audit import` added (`Detector.process_events`).
        `from_event_log`: values of the embedded log (`decode.read_writer_columns`)."""
        announced: list[Alarm] = []
        for avro, run in itertools.groupby(values, key=is_avro):
            same_kind = list(run)
            rows = await _columnar_rows(same_kind, from_event_log) if avro else None
            if rows is None:  # in a worker thread: one by one, a batch of 4,000 takes ~75 ms
                announced += await self.feed(await asyncio.to_thread(self._decoder(), same_kind), imported=imported)
            else:
                announced += await self._feed_rows(rows, imported)
        return announced

    async def _feed_rows(self, rows: Sequence[AvroRow], imported: bool) -> list[Alarm]:
        """The events of rows a CHUNK at a time: building them holds the loop ~2 µs each."""
        from keytrail.detect.avro_events import events_of

        return await self._in_chunks(
            rows, lambda chunk: self.detector.process_events(events_of(chunk), imported=imported))

    async def run(self, batches: AsyncIterator[ValueBatch], tick_every: float = 5.0,
                  announce: Callable[[list[Alarm]], None] | None = None) -> None:
        """Feed batches of audit topic values (`feed_values`) until the source ends or is cancelled;
        tick every `tick_every` seconds once the source has caught up; hand what each batch and tick
        raised or escalated to `announce`. A batch a rule fails on is logged and passed over."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + tick_every
        caught_up = False
        announce = announce or (lambda alarms: None)
        async for batch in batches:
            with batch_guard(batch.where):
                for values, imported in origin_runs(batch.values, batch.imported):
                    announce(await self.feed_values(values, imported=imported))
                # Until then the detector replays the past: a tick as of the latest event read judged
                # keys on part of their history (unused-key for a key whose later uses were unread).
                if batch.caught_up and not caught_up:
                    caught_up = True
                    self.caught_up()
                if caught_up and loop.time() >= next_tick:
                    next_tick = loop.time() + tick_every
                    announce(await self.tick(behind=any(batch.lag.values())))
            self.lag = dict(batch.lag)  # judged, or passed over

    def _decoder(self) -> Decoder:
        if self._decode is None:
            self._decode = default_decoder()
        return self._decode

    def _publish(self, alarms: list[Alarm]) -> list[Alarm]:
        for alarm in alarms:  # raised again: the book holds it now
            self._unreplayed.pop(alarm.alarm_id, None)
        fresh = [a for a in alarms if self._delivered.get(a.alarm_id, (-1, 0)) < (a.severity.rank, a.count)]
        for alarm in fresh:
            self._delivered[alarm.alarm_id] = (alarm.severity.rank, alarm.count)
            self.dispatcher.publish(alarm)
        return fresh


@contextlib.contextmanager
def batch_guard(batch: str) -> Iterator[None]:
    """Around one batch of a live detector: a rule raising on an odd event costs that batch, not
    the process (serve's detector and `detect --kafka` alike). One log line names the batch; the
    traceback is logged at DEBUG."""
    try:
        yield
    except Exception as exc:
        log.error("detector failed on %s, passed over: %s: %s", batch, type(exc).__name__, exc)
        log.debug("detector failure on %s", batch, exc_info=True)


async def _columnar_rows(values: list[bytes], from_event_log: bool) -> list[AvroRow] | None:
    """The rows of Avro values through the columnar reader, or None when it cannot read them all
    (the record decoder then finds and skips the bad ones and keeps the rest)."""
    import polars as pl

    from keytrail.detect.avro_events import avro_rows  # polars: not for the offline CloudTrail path

    try:
        return await avro_rows(values, from_event_log=from_event_log)
    # Whatever a foreign or damaged value makes the reader raise, its panics included: polars'
    # PanicException is a BaseException, which went through to end the detector.
    except (Exception, pl.exceptions.PanicException) as exc:
        log.warning("audit values the columnar reader cannot read (%s): decoding them one by one", exc)
        return None
