"""Alarm hooks. Each is one `AlarmSink`; the `Dispatcher` keeps any of them from blocking or
crashing the pipeline (one bounded queue and one worker per sink, errors logged, overflow dropped
and counted), and holds a hook's alarms while it is down (`HookDown`) instead of spending each
alarm's attempts on it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from keytrail.detect.alarms import Alarm
from keytrail.detect.sinks.attempts import Attempts, Failure, retry_waits
from keytrail.detect.sinks.outbox import Outbox

__all__ = ["AlarmSink", "Attempts", "DeliveryError", "Dispatcher", "Failure", "HookDown", "retry_waits"]

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """A hook gave up on an alarm after its retries."""


class HookDown(DeliveryError):
    """The hook is out of reach (connection refused, timeout, no broker, a 503): the alarm was not
    refused, and the dispatcher keeps it, and those behind it, until the hook is back."""


@runtime_checkable
class AlarmSink(Protocol):
    """Where alarms go: a file, a broker, a webhook."""

    async def deliver(self, alarm: Alarm) -> None: ...


class _Closable(Protocol):
    async def aclose(self) -> None: ...


class Dispatcher:
    """Fans alarms out to sinks without ever waiting for one. A sink given an `Outbox` (same
    position in `outboxes`, None for none) first gets what the outbox says it is still owed, and
    has each alarm recorded there until it is done with it. In such a hook's queue, as in its
    outbox, a later state of an alarm still waiting takes the earlier one's place: the bound counts
    alarms, not updates (an open alarm's count changes at every tick, and during an outage its
    updates would take the room of new alarms). alarms.jsonl, the record, gets every state."""

    def __init__(
        self, sinks: Sequence[AlarmSink], queue_size: int = 10_000, outboxes: Sequence[Outbox | None] = (),
        pause: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        self.sinks = list(sinks)
        self.dropped = 0
        self.failed = 0
        self.pause = pause  # first and longest wait between probes of a hook that is down
        self._outboxes = [*outboxes, *[None] * (len(self.sinks) - len(outboxes))]
        self._queues: list[asyncio.Queue[Alarm]] = [asyncio.Queue(queue_size) for _ in self.sinks]
        # Of a hook with an outbox, the latest state of each alarm in its queue, delivered in its place.
        self._latest: list[dict[str, Alarm] | None] = [{} if box is not None else None for box in self._outboxes]
        self._in_delivery = [False] * len(self.sinks)
        self._down_since: list[float | None] = [None] * len(self.sinks)
        self._dropping = [0] * len(self.sinks)  # drops of the current overflow, logged when it ends
        for index, outbox in enumerate(self._outboxes):
            for alarm in outbox.owed if outbox is not None else ():
                self._put(index, alarm, record=False)  # the outbox lists them already
        self._workers = [asyncio.create_task(self._work(i), name=f"alarm-sink-{i}") for i in range(len(self.sinks))]

    def publish(self, alarm: Alarm) -> None:
        """Queue the alarm for every sink; a full queue drops it for that sink (logged)."""
        for index in range(len(self.sinks)):
            self._put(index, alarm)

    def _put(self, index: int, alarm: Alarm, *, record: bool = True) -> None:
        name, latest = type(self.sinks[index]).__name__, self._latest[index]
        if latest is not None and (held := latest.get(alarm.alarm_id)) is not None:
            if _progress(alarm) >= _progress(held):  # goes out in the earlier state's place
                latest[alarm.alarm_id] = alarm
                self._record(index, alarm, record)
            return
        try:
            self._queues[index].put_nowait(alarm)
        except asyncio.QueueFull:
            self.dropped += 1
            self._dropping[index] += 1
            if self._dropping[index] == 1:  # once per overflow: a hook down for hours would log each alarm
                log.warning("alarm queue of %s is full (%d); dropped alarm %s, and drops the next ones until it "
                            "has room", name, self._queues[index].maxsize, alarm.alarm_id)
            return
        if latest is not None:
            latest[alarm.alarm_id] = alarm
        if self._dropping[index]:
            log.warning("alarm queue of %s has room again: %d alarm(s) dropped", name, self._dropping[index])
            self._dropping[index] = 0
        self._record(index, alarm, record)

    def _record(self, index: int, alarm: Alarm, record: bool) -> None:
        outbox = self._outboxes[index]
        if outbox is not None and record:
            outbox.queued(alarm)

    async def _work(self, index: int) -> None:
        sink, queue, outbox = self.sinks[index], self._queues[index], self._outboxes[index]
        while True:
            alarm = await queue.get()
            if (latest := self._latest[index]) is not None:
                alarm = latest.pop(alarm.alarm_id, alarm)
            self._in_delivery[index] = True
            try:
                await self._deliver(index, alarm)
            except Exception:  # a hook must never take the detector down
                self.failed += 1
                log.exception("alarm sink %s failed on %s", type(sink).__name__, alarm.alarm_id)
            finally:
                self._in_delivery[index] = False
                queue.task_done()
            # Not when cancelled mid-delivery (the close's drain cut off): still owed, sent at the next start.
            if outbox is not None:
                outbox.handled(alarm, drained=queue.empty())

    async def _deliver(self, index: int, alarm: Alarm) -> None:
        """Deliver the alarm, or let the hook give up on it; while the hook is down, probe it with
        this alarm after a pause growing to `pause[1]`: the alarms behind it wait their turn in order."""
        pause = self.pause[0]
        while True:
            try:
                await self.sinks[index].deliver(alarm)
                break
            except HookDown as exc:
                self._went_down(index, exc)
            except Exception:
                self._came_back(index)  # it answered, if only to refuse this alarm
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.pause[1])
        self._came_back(index)

    def _went_down(self, index: int, exc: HookDown) -> None:
        if self._down_since[index] is None:
            self._down_since[index] = asyncio.get_running_loop().time()
            log.error("alarm hook %s is down (%s): its alarms wait in its queue (%d of at most %d)%s and go out "
                      "in order once it is back; probing it every %g s at most", type(self.sinks[index]).__name__,
                      exc, self._queues[index].qsize() + 1, self._queues[index].maxsize,
                      " and its outbox" if self._outboxes[index] is not None else "", self.pause[1])

    def _came_back(self, index: int) -> None:
        since, self._down_since[index] = self._down_since[index], None
        if since is not None:
            log.warning("alarm hook %s is back after %.0f s down; %d alarm(s) waiting",
                        type(self.sinks[index]).__name__, asyncio.get_running_loop().time() - since,
                        self._queues[index].qsize())

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
            (type(sink).__name__ + _state(down is not None, outbox is not None), queue.qsize() + busy)
            for sink, queue, busy, outbox, down in zip(self.sinks, self._queues, self._in_delivery, self._outboxes,
                                                       self._down_since, strict=True)
        ]
        if lost := [f"{name} {count}" for name, count in left if count]:
            total = sum(count for _, count in left)
            log.warning("%d alarm(s) not delivered when the hooks closed after %gs: %s", total, timeout,
                        ", ".join(lost))


def _state(down: bool, kept: bool) -> str:
    """What the close's warning says of a hook's undelivered alarms."""
    said = [*(["down"] if down else []), *(["kept for the next start"] if kept else [])]
    return f" ({'; '.join(said)})" if said else ""


def _progress(alarm: Alarm) -> tuple[int, int]:
    """How far an alarm's state has come: severity only rises, and the count with it."""
    return alarm.severity.rank, alarm.count
