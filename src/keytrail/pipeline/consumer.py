"""The metrics consumer as one object: `keytrail serve` runs it in its consumer child (cli/sidecar.py;
in-process with --dev-clock), `keytrail consume` alone."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keytrail.pipeline.parquet import ExportCutShort, export_tables, remove_stale_temp_files, stale_days
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.prometheus import MetricsExposition
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner, RunStats, Source
from keytrail.transport.segment_log import event_log_dir

__all__ = ["ConsumerSettings", "MetricsConsumer", "event_log_dir"]

log = logging.getLogger(__name__)

# How long an export may go on once the consumer is told to stop: the export at the stop writes a
# few days' tables in well under this, but one pricing years of quiet days (a dev clock moved a
# century ahead: 36,500 cost tables) held SIGTERM for over a minute. The rest waits for the next
# start, which finds its days' usage tables older than the state (parquet.stale_days).
STOP_EXPORT_SECONDS = 5.0


@dataclass(frozen=True)
class ConsumerSettings:
    """Where to read from and where to keep state. Without `kafka_bootstrap`: the embedded log."""

    data_dir: Path
    kafka_bootstrap: str | None = None
    group_id: str = "keytrail-metrics"  # one consumer group per consumer kind
    follow: bool = True  # keep polling the embedded log for new events
    idle_seconds: float | None = None  # Kafka: stop after this long without records
    export_seconds: float | None = 30.0  # rewrite the Parquet tables at most this often; None: never
    dedup_capacity: int = 1_000_000  # eventIDs remembered per partition (at least half of them)
    max_records: int = 10_000
    # Embedded log: after a partial batch, let the live log's records gather this long. Polars'
    # fixed cost per batch made ~900-event batches (0.2 s at 4,500 calls/s) cost 12 µs of CPU
    # per event against 5 µs for 1 s batches; metrics then lag the calls by about a second more.
    gather_seconds: float = 1.0
    checkpoint_records: int = 100_000  # persist state + offsets at least this often (and every 2 s)
    prices: PriceTable = field(default_factory=PriceTable)


class MetricsConsumer:
    """Runs one Source into the data dir's state, exports Parquet, answers queries."""

    def __init__(self, settings: ConsumerSettings, source: Source | None = None,
                 on_held: Callable[[int | None], None] = lambda offset: None) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        # Following the embedded log: the offset it is held at in front of a record it cannot read
        # (StallWatch), for /metrics; `on_held` hears it too (serve's consumer child tells serve).
        self.held_at: int | None = None
        self._on_held = on_held
        self.source = source or self._default_source()
        self.store = MetricsStore(settings.data_dir)
        self.runner = self._new_runner()
        self._exported = time.monotonic()
        self._stop_seen: float | None = None  # monotonic time an export first saw the stop
        self.exposition = MetricsExposition(self.store, settings.prices)

    def _default_source(self) -> Source:
        s = self.settings
        if s.kafka_bootstrap:
            from keytrail.pipeline.kafka_source import KafkaSource

            return KafkaSource(
                s.kafka_bootstrap,
                group_id=s.group_id,
                max_records=s.max_records,
                idle_seconds=s.idle_seconds,
                stop=self.stop_event,
            )
        from keytrail.pipeline.segment_source import SegmentLogSource

        return SegmentLogSource(
            event_log_dir(s.data_dir),
            max_records=s.max_records,
            follow=s.follow,
            gather_seconds=s.gather_seconds,
            stop=self.stop_event,
            counted=lambda partition, value: self.runner.counted(partition, value),
            on_held=self._held,
        )

    def _held(self, offset: int | None) -> None:
        self.held_at = offset
        self._on_held(offset)

    def _new_runner(self) -> Runner:
        runner = Runner(
            state_dir(self.settings.data_dir),
            self.source,
            dedup_capacity=self.settings.dedup_capacity,
            checkpoint_records=self.settings.checkpoint_records,
            after_checkpoint=self._after_checkpoint,
            on_clock_step=lambda step: log.warning("%s", step.line()),
        )
        # Days a previous run checkpointed but did not export (it was killed, or failed) are
        # exported with this run's: they may see no new event to mark them again.
        if self.settings.export_seconds is not None:
            runner.dirty_days |= stale_days(self.settings.data_dir)
            remove_stale_temp_files(self.settings.data_dir)  # of such an export, killed as it wrote a table
        return runner

    def reopen(self) -> None:
        """After a run that failed (its state could not be written): start over from the state on
        disk, as a restarted process would; what the failed run had not checkpointed is read again."""
        self.runner = self._new_runner()
        if self.held_at is not None:  # the next run watches anew, and would not say that it reads on
            self._held(None)

    async def run(self) -> RunStats:
        """Consume until the source ends or `stop()`; then write the Parquet tables. A run that
        failed raises its own error: its export, tried all the same, fails too as a rule (the disk
        it found full), and its error took the place of the run's, which named the file."""
        try:
            stats = await self.runner.run()
        except BaseException:
            if self.settings.export_seconds is not None:
                try:
                    await asyncio.to_thread(self.export)
                except OSError as exc:
                    log.warning("the metrics tables were not written after the consumer failed: %s", exc)
            raise
        if self.settings.export_seconds is not None:
            await asyncio.to_thread(self.export)
        return stats

    def stop(self) -> None:
        self.stop_event.set()

    def export(self) -> None:
        """Write the Parquet tables of the days changed since the last export; one still running
        STOP_EXPORT_SECONDS after a stop is cut short, and the next start finishes it."""
        days, self.runner.dirty_days = self.runner.dirty_days, set()
        if days:
            try:
                export_tables(self.settings.data_dir, days, self.settings.prices, self._stop_waited)
            except ExportCutShort as cut:
                self.runner.dirty_days |= days
                log.warning("the metrics export was cut short by the stop (%s): the next start writes the rest", cut)
        self._exported = time.monotonic()

    def _stop_waited(self) -> bool:
        """Whether a stop came STOP_EXPORT_SECONDS ago or more (the event is set by `stop()` or by
        whoever owns the consumer: serve's child sets it on SIGTERM)."""
        if not self.stop_event.is_set():
            return False
        if self._stop_seen is None:
            self._stop_seen = time.monotonic()
        return time.monotonic() - self._stop_seen >= STOP_EXPORT_SECONDS

    def _after_checkpoint(self) -> None:
        every = self.settings.export_seconds
        if every is not None and time.monotonic() - self._exported >= every:
            self.export()

    def last_usage(self, key_arn: str) -> dict[str, Any] | None:
        """For GetKeyLastUsage: see MetricsStore.last_usage."""
        return self.store.last_usage(key_arn)

    def render_prometheus(self, spool_depth: int | None = None) -> str:
        """The /metrics body, with this consumer's lag (see MetricsExposition)."""
        return self.exposition.render(self.runner.lag(), spool_depth)
