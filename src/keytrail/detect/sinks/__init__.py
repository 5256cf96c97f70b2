"""Alarm hooks. Each is one `AlarmSink`; the `Dispatcher` keeps any of them from blocking or
crashing the pipeline (one queue and one worker per sink, errors logged; a hook's queue is bounded,
its overflow dropped and counted, while alarms.jsonl's takes every alarm), and holds a hook's
alarms while it is down (`HookDown`) instead of spending each alarm's attempts on it, unless the
hook takes the alarms behind the one it fails on."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from keytrail.detect.alarms import Alarm
from keytrail.detect.sinks.attempts import Attempts, Failure, retry_waits
from keytrail.detect.sinks.outbox import Outbox

__all__ = ["AlarmSink", "Attempts", "DeliveryError", "Dispatcher", "Failure", "HookDown", "retry_waits"]

log = logging.getLogger(__name__)

# A hook down for its head alarm's attempts and this many probes has each further failed probe
# followed by a try of the alarms behind the head, the first LOOK_AHEAD of them: one taken shows a
# hook that is up and fails on that one alarm only (`Dispatcher._deliver`). With the default
# schedules this is about 15 s after the head was first tried.
SEND_AHEAD_AFTER = 3
LOOK_AHEAD = 3
# The head is given up on once it has failed, with the hook reached, this many times, each time
# right after the hook took another alarm behind it: one such failure alone is what a receiver
# flapping behind a load balancer (a rolling restart, every other request a 503) gives a good alarm.
# With the default schedules a head the hook chokes on is given up on about 30 s after its first try.
STRIKES = 2
# The close's drain stops waiting for a hook that keeps its alarms in an outbox once it has taken
# none for this long: one that is not yet known to be down (its first delivery still inside its
# attempts against a broker that never answers) would otherwise hold the stop for the whole drain,
# and what it is owed goes out at the next start. A hook that is up takes an alarm in far less.
DRAIN_STALLED_SECONDS = 3.0


class DeliveryError(RuntimeError):
    """A hook gave up on an alarm after its retries."""


class HookDown(DeliveryError):
    """The hook is out of reach (connection refused, timeout, no broker, a 503): the alarm was not
    refused, and the dispatcher keeps it, and those behind it, until the hook is back. `reached`:
    the hook was reached and failed on this delivery (a webhook's 503, a broker hanging up on the
    publish), which may be about this alarm only: the alarms behind it are then worth a try."""

    def __init__(self, message: str, *, reached: bool = False) -> None:
        super().__init__(message)
        self.reached = reached


@runtime_checkable
class AlarmSink(Protocol):
    """Where alarms go: a file, a broker, a webhook. A sink may also have a `name` (how log lines
    call it: its kind and address, never a credential; else its class's name) and `never_drops`
    (True for the record, alarms.jsonl: its queue has no bound)."""

    async def deliver(self, alarm: Alarm) -> None: ...


class _DeadLettering(Protocol):
    def add(self, alarm: Alarm, error: str, attempts: int) -> None: ...


class _HookQueue(asyncio.Queue[Alarm]):
    """A hook's queue, whose first alarms can be looked at without taking them."""

    def _init(self, maxsize: int) -> None:  # asyncio.Queue's own store, as its subclasses make theirs
        self._queue: collections.deque[Alarm] = collections.deque()

    def peek(self, count: int) -> list[Alarm]:
        return list(itertools.islice(self._queue, count))


class Dispatcher:
    """Fans alarms out to sinks without ever waiting for one. A sink given an `Outbox` (same
    position in `outboxes`, None for none) first gets what the outbox says it is still owed, and
    has each alarm recorded there until it is done with it. In such a hook's queue, as in its
    outbox, a later state of an alarm still waiting takes the earlier one's place: the bound counts
    alarms, not updates (an open alarm's count changes at every tick, and during an outage its
    updates would take the room of new alarms). alarms.jsonl, the record, gets every state: a sink
    that `never_drops` has a queue without bound, since one tick may announce more alarms than a
    hook's queue holds (unused-key over 10,000 idle keys) and the extras never reached the file.
    The queue holds references: to the alarms the detector holds anyway during a burst (8 bytes
    each, 0.8 MB for 100,000), to states of their own only while the file cannot be written
    (a full disk: about 1 to 3 KB each, 100 to 300 MB for 100,000 updates waiting)."""

    def __init__(
        self, sinks: Sequence[AlarmSink], queue_size: int = 10_000, outboxes: Sequence[Outbox | None] = (),
        pause: tuple[float, float] = (1.0, 30.0), send_ahead_after: int = SEND_AHEAD_AFTER,
    ) -> None:
        self.sinks = list(sinks)
        self.dropped = 0
        self.failed = 0
        self.pause = pause  # first and longest wait between probes of a hook that is down
        self.send_ahead_after = send_ahead_after  # probes of the head before the alarms behind it are tried
        self._outboxes = [*outboxes, *[None] * (len(self.sinks) - len(outboxes))]
        self._names = [_name(sink) for sink in self.sinks]
        self._queues = [_HookQueue(0 if getattr(sink, "never_drops", False) else queue_size) for sink in self.sinks]
        # Of each hook, the state (`_progress`) of the alarms it took ahead of the head, by alarmId:
        # passed over when their turn comes.
        self._ahead: list[dict[str, tuple[int, int]]] = [{} for _ in self.sinks]
        # Of a hook with an outbox, the latest state of each alarm in its queue, delivered in its place.
        self._latest: list[dict[str, Alarm] | None] = [{} if box is not None else None for box in self._outboxes]
        self._in_delivery: list[str | None] = [None] * len(self.sinks)  # the alarmId each hook is trying
        self._handled = [0] * len(self.sinks)  # alarms each hook is done with: a drain that sees none stalls
        self._down_since: list[float | None] = [None] * len(self.sinks)
        self._down = [asyncio.Event() for _ in self.sinks]  # set while the hook is down (`_down_since`)
        self._dropping = [0] * len(self.sinks)  # drops of the current overflow, logged when it ends (`_has_room`)
        for index, outbox in enumerate(self._outboxes):
            for alarm in outbox.owed if outbox is not None else ():
                self._put(index, alarm, record=False)  # the outbox lists them already
        self._workers = [asyncio.create_task(self._work(i), name=f"alarm-sink-{i}") for i in range(len(self.sinks))]

    def publish(self, alarm: Alarm) -> None:
        """Queue the alarm for every sink; a full queue drops it for that sink (logged)."""
        for index in range(len(self.sinks)):
            self._put(index, alarm)

    def _put(self, index: int, alarm: Alarm, *, record: bool = True) -> None:
        name, latest = self._names[index], self._latest[index]
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
        self._record(index, alarm, record)

    def _record(self, index: int, alarm: Alarm, record: bool) -> None:
        outbox = self._outboxes[index]
        if outbox is not None and record:
            outbox.queued(alarm)

    def _has_room(self, index: int) -> None:
        """The hook's worker took an alarm off its full queue: the overflow ends, and its count is
        said now, not at the next alarm queued (after a tick's burst, none may come)."""
        dropped, self._dropping[index] = self._dropping[index], 0
        if dropped:
            log.warning("alarm queue of %s has room again: %d alarm(s) dropped", self._names[index], dropped)

    async def _work(self, index: int) -> None:
        queue, outbox = self._queues[index], self._outboxes[index]
        while True:
            alarm = await queue.get()
            self._has_room(index)
            if (latest := self._latest[index]) is not None:
                alarm = latest.pop(alarm.alarm_id, alarm)
            self._in_delivery[index] = alarm.alarm_id
            done = alarm  # the state the hook is done with: a later one if it went out in this one's place
            try:
                if not self._taken_ahead(index, alarm):
                    done = await self._deliver(index, alarm)
            except Exception:  # a hook must never take the detector down
                self.failed += 1
                log.exception("alarm sink %s failed on %s", self._names[index], alarm.alarm_id)
            finally:
                self._in_delivery[index] = None
                self._handled[index] += 1
                queue.task_done()
            # Not when cancelled mid-delivery (the close's drain cut off): still owed, sent at the next start.
            if outbox is not None:
                outbox.handled(done, drained=queue.empty())

    def _taken_ahead(self, index: int, alarm: Alarm) -> bool:
        """Whether the hook took this state of the alarm (or a later one) ahead of its turn."""
        sent = self._ahead[index].pop(alarm.alarm_id, None)
        return sent is not None and _progress(alarm) <= sent

    async def _deliver(self, index: int, alarm: Alarm) -> Alarm:
        """Deliver the alarm, or let the hook give up on it, in its latest state (`_newest`): the
        state it is done with, which the outbox records as handled. While the hook is down, probe it with
        this alarm after a pause growing to `pause[1]`: the alarms behind it wait their turn in order.
        From the `send_ahead_after`th probe on, a probe that reached the hook and failed is followed
        by a try of the alarms behind it (`_send_ahead`): if the hook takes one, it is up, and it is
        this alarm it fails on (a receiver answering 503 to that payload, a broker hanging up on
        it), which would otherwise hold every later alarm for as long as it does. It is tried once
        more at once; failing again with the hook reached is a strike, and the next alarm behind is
        tried at once (no probe's pause: a head the hook chokes on is out of the way `STRIKES`
        rounds later). At `STRIKES` strikes it is given up on (`_give_up`): one alone is what a
        receiver flapping in a rolling restart gives a good alarm. A failure out of reach clears
        the strikes. A hook really down takes none of them: nothing is given up, and the order is
        kept."""
        pause, probes, taken, strikes = self.pause[0], 0, None, 0
        while True:
            alarm = self._newest(index, alarm)
            try:
                await self.sinks[index].deliver(alarm)
                break
            except HookDown as exc:
                if taken is not None and exc.reached:
                    strikes += 1
                    if strikes >= STRIKES:
                        await self._give_up(index, alarm, exc, taken, probes, strikes)
                        return alarm
                elif not exc.reached:
                    strikes = 0  # out of reach: down after all, for every alarm; the evidence starts again
                taken = None
                self._went_down(index, exc)
                if exc.reached and (probes >= self.send_ahead_after or strikes) and (
                        taken := await self._send_ahead(index, alarm)) is not None:
                    continue  # it takes alarms: this one again at once (it may have come back just now)
            except Exception:
                self._came_back(index)  # it answered, if only to refuse this alarm
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, self.pause[1])
            probes += 1
        self._came_back(index)
        return alarm

    def _newest(self, index: int, head: Alarm) -> Alarm:
        """The head in its latest state: one queued while the hook was down (a tick's count, an
        escalation) goes out in its place, and its own turn is passed over unless a later state
        comes meanwhile. Probed with the state it was taken in, the head reached a hook that came
        back stale, and again in its latest state at that one's turn."""
        latest = self._latest[index]
        newer = latest.get(head.alarm_id) if latest is not None else None
        if newer is None or _progress(newer) <= _progress(head):
            return head
        self._ahead[index][head.alarm_id] = _progress(newer)  # as an alarm taken ahead of its turn
        return newer

    async def _send_ahead(self, index: int, head: Alarm) -> Alarm | None:
        """Try the first LOOK_AHEAD alarms behind the head (other alarms than the head, in their
        latest state) until the hook takes one: that one (recorded, so that it is passed over when
        its turn comes), or None if the hook failed on each as being down."""
        latest, ahead, outbox = self._latest[index], self._ahead[index], self._outboxes[index]
        for queued in self._queues[index].peek(LOOK_AHEAD):
            alarm = latest.get(queued.alarm_id, queued) if latest is not None else queued
            if alarm.alarm_id == head.alarm_id or alarm.alarm_id in ahead:
                continue
            try:
                await self.sinks[index].deliver(alarm)
            except HookDown:
                continue
            except Exception:  # it answered, refusing this one (and gave it up): the hook is up all the same
                self.failed += 1
                log.exception("alarm sink %s failed on %s", self._names[index], alarm.alarm_id)
            ahead[alarm.alarm_id] = _progress(alarm)
            if outbox is not None:  # taken: a node stopped before its turn must not send it again at the next start
                outbox.handled(alarm, drained=False)
            return alarm
        return None

    async def _give_up(self, index: int, alarm: Alarm, exc: HookDown, taken: Alarm, probes: int,
                       strikes: int) -> None:
        """The hook took `taken`, behind `alarm`, and still fails on `alarm` as if it were down:
        treat it as refused (dead-lettered where the hook has a dead-letter file), so the alarms
        behind it go out."""
        sink, self._down_since[index] = self.sinks[index], None  # it is up: it takes other alarms
        self._down[index].clear()
        name, attempts = self._names[index], getattr(sink, "attempts", 1)
        self.failed += 1
        log.error("alarm hook %s took alarm %s but keeps failing on alarm %s as if it were down (%s): alarm %s is "
                  "given up on so that the alarms behind it go out", name, taken.alarm_id, alarm.alarm_id, exc,
                  alarm.alarm_id)
        letters: _DeadLettering | None = getattr(sink, "dead_letters", None)
        if letters is not None:
            error = f"answered as down while it took alarm {taken.alarm_id}: {exc}"
            try:
                await asyncio.to_thread(letters.add, alarm, error, (1 + strikes) * attempts + probes)
            except OSError as write_error:  # a full disk: the line above still names it
                log.error("cannot dead-letter alarm %s of %s (%s)", alarm.alarm_id, name, write_error)

    def _went_down(self, index: int, exc: HookDown) -> None:
        if self._down_since[index] is None:
            self._down_since[index] = asyncio.get_running_loop().time()
            self._down[index].set()
            log.error("alarm hook %s is down (%s): its alarms wait in its queue (%d of at most %d)%s and go out "
                      "in order once it is back; probing it every %g s at most", self._names[index],
                      exc, self._queues[index].qsize() + 1, self._queues[index].maxsize,
                      " and its outbox" if self._outboxes[index] is not None else "", self.pause[1])

    def _came_back(self, index: int) -> None:
        since, self._down_since[index] = self._down_since[index], None
        self._down[index].clear()
        if since is not None:
            log.warning("alarm hook %s is back after %.0f s down; %d alarm(s) waiting",
                        self._names[index], asyncio.get_running_loop().time() - since,
                        self._queues[index].qsize())

    async def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the workers and close the sinks."""
        started = asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(self._drained(i) for i in range(len(self.sinks)))), timeout)
        self._log_undelivered(asyncio.get_running_loop().time() - started)
        self._log_dropped_until_closed()
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for outbox in self._outboxes:
            if outbox is not None:
                outbox.close()
        for sink, name in zip(self.sinks, self._names, strict=True):
            closer = getattr(sink, "aclose", None)
            if closer is not None:
                try:
                    await closer()
                except Exception:
                    log.exception("closing alarm sink %s failed", name)

    async def _drained(self, index: int) -> None:
        """Until the hook took what is queued for it, or, if it keeps its alarms in an outbox, is down
        or has taken none for DRAIN_STALLED_SECONDS: probed every few seconds at most, a hook in an
        outage would only hold the stop for the whole drain, and what it is owed goes out at the
        next start anyway."""
        kept = self._outboxes[index] is not None
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._queues[index].join())]
        if kept:
            waits.append(asyncio.ensure_future(self._down[index].wait()))
        try:
            handled = self._handled[index]
            while not (await asyncio.wait(waits, timeout=DRAIN_STALLED_SECONDS if kept else None,
                                          return_when=asyncio.FIRST_COMPLETED))[0]:
                if self._handled[index] == handled:
                    return  # stalled
                handled = self._handled[index]
        finally:
            for wait in waits:
                wait.cancel()

    def _log_undelivered(self, waited: float) -> None:
        """One line counting, per hook, the alarms the drain left (queued, or in a delivery that
        is cut off): closing drops them, or a hook's outbox keeps them for the next start, and
        either must not go unsaid."""
        left = [
            (name + _state(down is not None, outbox is not None), _alarms_left(queue, busy))
            for name, queue, busy, outbox, down in zip(self._names, self._queues, self._in_delivery, self._outboxes,
                                                       self._down_since, strict=True)
        ]
        if lost := [f"{name} {count}" for name, count in left if count]:
            total = sum(count for _, count in left)
            log.warning("%d alarm(s) not delivered when the hooks closed after %.0fs: %s", total, waited,
                        ", ".join(lost))

    def _log_dropped_until_closed(self) -> None:
        """The count of an overflow still going on at the close (a hook down, its queue full until
        the end), which no alarm taken off its queue will say any more."""
        for index, dropped in enumerate(self._dropping):
            if dropped:
                log.warning("alarm queue of %s was full until the hooks closed: %d alarm(s) dropped",
                            self._names[index], dropped)
                self._dropping[index] = 0


def _name(sink: AlarmSink) -> str:
    """How log lines call a sink: its `name`, else its class's (a sink of the tests)."""
    name = getattr(sink, "name", None)
    return name if isinstance(name, str) and name else type(sink).__name__


def _alarms_left(queue: _HookQueue, in_delivery: str | None) -> int:
    """The alarms a hook was left owing: a later state of the alarm in delivery waits in the queue
    behind it (the head is not replaced while it is tried), and is the same alarm, as the outbox
    and the next start count it."""
    left = {alarm.alarm_id for alarm in queue.peek(queue.qsize())}
    return len(left | {in_delivery} if in_delivery is not None else left)


def _state(down: bool, kept: bool) -> str:
    """What the close's warning says of a hook's undelivered alarms."""
    said = [*(["down"] if down else []), *(["kept for the next start"] if kept else [])]
    return f" ({'; '.join(said)})" if said else ""


def _progress(alarm: Alarm) -> tuple[int, int]:
    """How far an alarm's state has come: severity only rises, and the count with it."""
    return alarm.severity.rank, alarm.count
