"""The detector as a running service: feed events, tick, close. Used in-process by `keytrail serve`
and by the standalone `keytrail detect --kafka`.

    runner = DetectorRunner.open(data_dir, hooks=HooksConfig(mqtt="mqtt://127.0.0.1:1883"), clock=clock)
    await runner.feed(records)      # CloudTrail dicts, in order
    await runner.feed_events(events)  # or events already read (`avro_events`)
    await runner.tick()             # time rules as of the clock (else the last event's time)
    await runner.close()            # deliver queued alarms and their latest counts
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from keytrail.clock import Clock
from keytrail.detect.alarms import Alarm
from keytrail.detect.engine import Detector
from keytrail.detect.events import KmsEvent
from keytrail.detect.hooks import HooksConfig, build_sinks
from keytrail.detect.rules import RuleSet
from keytrail.detect.sinks import AlarmSink, Dispatcher
from keytrail.detect.sinks.jsonl import read_alarms

__all__ = ["CHUNK", "DetectorRunner"]

log = logging.getLogger(__name__)

# Events processed between yields to the event loop: read from Avro rows and judged, ~8-15 µs each
# under load, so a chunk holds the serving loop for well under a millisecond however big the batch.
CHUNK = 50


class DetectorRunner:
    """Runs a Detector and hands what it announces to the hooks, never waiting on them."""

    def __init__(
        self, detector: Detector, sinks: Sequence[AlarmSink], delivered: Mapping[str, Alarm] | None = None
    ) -> None:
        self.detector = detector
        self.dispatcher = Dispatcher(sinks)
        # Alarms already in alarms.jsonl (an earlier run over the same events) are not re-sent.
        self._delivered = {a.alarm_id: (a.severity.rank, a.count) for a in (delivered or {}).values()}

    @classmethod
    def open(
        cls,
        data_dir: Path,
        *,
        hooks: HooksConfig | None = None,
        rules: RuleSet | None = None,
        clock: Clock | None = None,
    ) -> DetectorRunner:
        """A runner writing `<data_dir>/alarms.jsonl` plus the configured hooks (call inside the loop)."""
        delivered = read_alarms(data_dir / "alarms.jsonl")
        return cls(Detector(rules, clock), build_sinks(data_dir, hooks or HooksConfig()), delivered)

    async def feed(self, records: Iterable[Mapping[str, Any]]) -> list[Alarm]:
        """Process CloudTrail records; returns (and delivers) the alarms raised or escalated."""
        batch = list(records)
        announced: list[Alarm] = []
        for start in range(0, len(batch), CHUNK):
            announced += self._publish(self.detector.process(batch[start : start + CHUNK]))
            await asyncio.sleep(0)
        return announced

    async def feed_events(self, events: Sequence[KmsEvent]) -> list[Alarm]:
        """`feed` for events already read; returns (and delivers) the alarms raised or escalated."""
        announced: list[Alarm] = []
        for start in range(0, len(events), CHUNK):
            announced += self._publish(self.detector.process_events(events[start : start + CHUNK]))
            await asyncio.sleep(0)
        return announced

    async def tick(self, now: datetime | None = None) -> list[Alarm]:
        """Time-based rules and the latest counts of open alarms, delivered; closed alarms let go."""
        announced = self._publish(self.detector.tick(now))
        self.detector.forget_closed(now)
        return announced

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

    async def run(self, batches: AsyncIterator[list[dict[str, Any]]], tick_every: float = 5.0) -> None:
        """Feed batches from a source until it ends or is cancelled; tick every `tick_every` seconds."""
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + tick_every
        async for batch in batches:
            await self.feed(batch)
            if loop.time() >= next_tick:
                await self.tick()
                next_tick = loop.time() + tick_every

    def _publish(self, alarms: list[Alarm]) -> list[Alarm]:
        fresh = [a for a in alarms if self._delivered.get(a.alarm_id, (-1, 0)) < (a.severity.rank, a.count)]
        for alarm in fresh:
            self._delivered[alarm.alarm_id] = (alarm.severity.rank, alarm.count)
            self.dispatcher.publish(alarm)
        return fresh
