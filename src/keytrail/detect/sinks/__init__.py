"""Alarm hooks. Each is one `AlarmSink`; the `Dispatcher` keeps any of them from blocking or
crashing the pipeline (one bounded queue and one worker per sink, errors logged, overflow dropped
and counted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from keytrail.detect.alarms import Alarm

__all__ = ["AlarmSink", "DeliveryError", "Dispatcher"]

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A hook gave up on an alarm after its retries."""


@runtime_checkable
class AlarmSink(Protocol):
    """Where alarms go: a file, a broker, a webhook."""

    async def deliver(self, alarm: Alarm) -> None: ...


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class Dispatcher:
    """Fans alarms out to sinks without ever waiting for one."""

    def __init__(self, sinks: Sequence[AlarmSink], queue_size: int = 10_000) -> None:
        self.sinks = list(sinks)
        self.dropped = 0
        self.failed = 0
        self._queues: list[asyncio.Queue[Alarm]] = [asyncio.Queue(queue_size) for _ in self.sinks]
        self._workers = [
            asyncio.create_task(self._work(sink, queue), name=f"alarm-sink-{i}")
            for i, (sink, queue) in enumerate(zip(self.sinks, self._queues, strict=True))
        ]

    def publish(self, alarm: Alarm) -> None:
        """Queue the alarm for every sink; a full queue drops it for that sink (logged)."""
        for sink, queue in zip(self.sinks, self._queues, strict=True):
            try:
                queue.put_nowait(alarm)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning(
                    "alarm queue of %s is full; dropped alarm %s", type(sink).__name__, alarm.alarm_id
                )

    async def _work(self, sink: AlarmSink, queue: asyncio.Queue[Alarm]) -> None:
        while True:
            alarm = await queue.get()
            try:
                await sink.deliver(alarm)
            except Exception:  # a hook must never take the detector down
                self.failed += 1
                log.exception("alarm sink %s failed on %s", type(sink).__name__, alarm.alarm_id)
            finally:
                queue.task_done()

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the workers and close the sinks."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for sink in self.sinks:
            closer = getattr(sink, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing alarm sink %s failed", type(sink).__name__)
