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
from keytrail.detect.sinks.outbox import Outbox

__all__ = ["AlarmSink", "DeliveryError", "Dispatcher", "retry_waits"]

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A hook gave up on an alarm after its retries."""


def retry_waits(attempts: int, backoff: float) -> list[float | None]:
    """The hooks' retry schedule: what to wait after each failed attempt of a delivery tried
    `attempts` times, `backoff` doubled each time (0.5, 1, 2, 4 s by default), and None after
    the last, which gives up at once (waiting then would only hold the alarms queued behind)."""
    return [backoff * 2 ** (attempt - 1) if attempt < attempts else None for attempt in range(1, attempts + 1)]


@runtime_checkable
class AlarmSink(Protocol):
    """Where alarms go: a file, a broker, a webhook."""

    async def deliver(self, alarm: Alarm) -> None: ...


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class Dispatcher:
    """Fans alarms out to sinks without ever waiting for one. A sink given an `Outbox` (same
    position in `outboxes`, None for none) first gets what the outbox says it is still owed, and
    has each alarm recorded there until it is done with it."""

    def __init__(
        self, sinks: Sequence[AlarmSink], queue_size: int = 10_000, outboxes: Sequence[Outbox | None] = ()
    ) -> None:
        self.sinks = list(sinks)
        self.dropped = 0
        self.failed = 0
        self._outboxes = [*outboxes, *[None] * (len(self.sinks) - len(outboxes))]
        self._queues: list[asyncio.Queue[Alarm]] = [asyncio.Queue(queue_size) for _ in self.sinks]
        self._in_delivery = [False] * len(self.sinks)
        for index, outbox in enumerate(self._outboxes):
            for alarm in outbox.owed if outbox is not None else ():
                self._put(index, alarm, record=False)  # the outbox lists them already
        self._workers = [asyncio.create_task(self._work(i), name=f"alarm-sink-{i}") for i in range(len(self.sinks))]

    def publish(self, alarm: Alarm) -> None:
        """Queue the alarm for every sink; a full queue drops it for that sink (logged)."""
        for index in range(len(self.sinks)):
            self._put(index, alarm)

    def _put(self, index: int, alarm: Alarm, *, record: bool = True) -> None:
        try:
            self._queues[index].put_nowait(alarm)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("alarm queue of %s is full; dropped alarm %s", type(self.sinks[index]).__name__,
                        alarm.alarm_id)
            return
        outbox = self._outboxes[index]
        if outbox is not None and record:
            outbox.queued(alarm)

    async def _work(self, index: int) -> None:
        sink, queue, outbox = self.sinks[index], self._queues[index], self._outboxes[index]
        while True:
            alarm = await queue.get()
            self._in_delivery[index] = True
            try:
                await sink.deliver(alarm)
            except Exception:  # a hook must never take the detector down
                self.failed += 1
                log.exception("alarm sink %s failed on %s", type(sink).__name__, alarm.alarm_id)
            finally:
                self._in_delivery[index] = False
                queue.task_done()
            # Not when cancelled mid-delivery (the close's drain cut off): still owed, sent at the next start.
            if outbox is not None:
                outbox.handled(alarm, drained=queue.empty())

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the workers and close the sinks."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(q.join() for q in self._queues)), timeout)
        self._log_undelivered(timeout)
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for outbox in self._outboxes:
            if outbox is not None:
                outbox.close()
        for sink in self.sinks:
            closer = getattr(sink, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing alarm sink %s failed", type(sink).__name__)

    def _log_undelivered(self, timeout: float) -> None:
        """One line counting, per hook, the alarms the drain left (queued, or in a delivery that
        is cut off): closing drops them, or a hook's outbox keeps them for the next start, and
        either must not go unsaid."""
        left = [
            (type(sink).__name__ + (" (kept for the next start)" if outbox is not None else ""), queue.qsize() + busy)
            for sink, queue, busy, outbox in zip(self.sinks, self._queues, self._in_delivery, self._outboxes,
                                                 strict=True)
        ]
        if lost := [f"{name} {count}" for name, count in left if count]:
            total = sum(count for _, count in left)
            log.warning("%d alarm(s) not delivered when the hooks closed after %gs: %s", total, timeout,
                        ", ".join(lost))
