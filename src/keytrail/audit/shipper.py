"""The shipper: spool records to Kafka topic `keytrail.audit.v1`, at least once.

It runs in its own process (audit/shipping.py), reading the event log from the shipped offset
(persisted in `<data-dir>/audit/shipped-offset`) up to the durable end the serving process tells
it. It sends each record keyed by its key ARN (account id for key-less calls), with the
`IMPORTED_HEADER` header when `keytrail audit import` added it, and advances the offset only after
the broker acknowledged. When the broker is down, records wait in the spool and
the shipper retries with backoff until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from keytrail.audit.imported import ImportedSpans
from keytrail.audit.integrity import beside, imported_offsets
from keytrail.audit.schema import message_key_bytes
from keytrail.owner_only import open_regular, write_bytes
from keytrail.transport.frames import framed_size
from keytrail.transport.kafka import (
    MAX_BATCH_BYTES,
    BrokerLostRecords,
    KafkaProducerLink,
    Message,
    NextOffsets,
    RecordsTooLarge,
    ensure_topic,
)
from keytrail.transport.segment_reader import SegmentReader, StallWatch
from keytrail.transport.topic_settings import TopicUnfit, batch_bytes
from keytrail.transport.topics import AUDIT_TOPIC, IMPORTED_HEADER

__all__ = ["AUDIT_TOPIC", "RecordTooLargeForBroker", "ShippedOffset", "Shipper"]

log = logging.getLogger(__name__)
_BATCH = 2000
# Pause after a partial round so the next one carries more records: each round has a fixed cost
# (an offset write in a worker thread, a produce request per partition and its acknowledgement)
# that per-commit rounds of a few records would pay hundreds of times a second. The spool, not
# Kafka, answers calls. Through `serve --kafka` under wrk -c16 (10-12 interleaved rounds each),
# 0.25 s against 0.05 s gave +12, +6 and +0 % audited Encrypt req/s (when the shipper still ran
# in the serving process). Records reach Kafka up to that much later.
LINGER_SECONDS = 0.25


# While a broker is down the shipper retries every 5 s: a warning at each retry wrote 720 lines an
# hour of one outage. It says so once, then once a minute while it lasts, as the drivers' lines
# are thinned (log_lines.py), and once when shipping resumes. A shipped offset it cannot write
# (a full disk) is said likewise.
PAUSE_REPEAT_SECONDS = 60.0
RETRY_SECONDS = (0.2, 5.0)  # the first wait before a retry, doubling up to the last


class _Outage:
    """The log lines of one outage: when it starts, at most one a minute while it lasts (at once
    when its reason changes), and when it ends."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: float | None = None  # when the outage began
        self._said = (0.0, "")  # when its last line was written, and the reason it gave
        self._retries = 0  # failed retries since that line

    def failed(self, exc: Exception) -> None:
        now, reason = self._clock(), str(exc)
        if self._since is None:
            self._since = now
            self._began(reason)
        elif reason != self._said[1] or now - self._said[0] >= PAUSE_REPEAT_SECONDS:
            self._lasts(now - self._since, self._retries + 1, reason)
        else:
            self._retries += 1
            return
        self._said, self._retries = (now, reason), 0

    def ended(self) -> None:
        if self._since is not None:
            self._ended(self._clock() - self._since)
            self._since = None

    def _began(self, reason: str) -> None:
        raise NotImplementedError

    def _lasts(self, seconds: float, retries: int, reason: str) -> None:
        raise NotImplementedError

    def _ended(self, seconds: float) -> None:
        raise NotImplementedError


class _Pause(_Outage):
    """The log lines of one outage of the broker."""

    def __init__(self, bootstrap: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.bootstrap = bootstrap

    def _began(self, reason: str) -> None:
        log.warning("audit shipping to %s paused: %s", self.bootstrap, reason)

    def _lasts(self, seconds: float, retries: int, reason: str) -> None:
        log.warning("audit shipping to %s paused for %.0f s (%d retries since the last line): %s",
                    self.bootstrap, seconds, retries, reason)

    def _ended(self, seconds: float) -> None:
        log.warning("audit shipping to %s resumed after %.0f s paused", self.bootstrap, seconds)


class _Stuck(_Outage):
    """The log lines of shipping stuck until an operator acts (a record larger than the topic takes,
    a topic set up to lose records or refuse every write): at ERROR, once a minute, not at each
    retry (every 5 s: 720 lines an hour), and once when shipping resumes."""

    def __init__(self, bootstrap: str, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.bootstrap = bootstrap

    def _began(self, reason: str) -> None:
        log.error("audit shipping to %s is stuck: %s", self.bootstrap, reason)

    def _lasts(self, seconds: float, retries: int, reason: str) -> None:
        log.error("audit shipping to %s is stuck for %.0f s (%d retries since the last line): %s",
                  self.bootstrap, seconds, retries, reason)

    def _ended(self, seconds: float) -> None:
        log.warning("audit shipping to %s resumed after %.0f s stuck", self.bootstrap, seconds)


class _OffsetUnwritten(_Outage):
    """The log lines of a shipped offset that cannot be written (a full disk)."""

    def __init__(self, path: Path, written: Callable[[], int], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(clock)
        self.path = path
        self._written = written  # the offset the file holds

    def _began(self, reason: str) -> None:
        log.warning("audit shipping cannot write %s: %s. Shipping goes on and retries the write; a restart before "
                    "then sends again the records from offset %d", self.path, reason, self._written())

    def _lasts(self, seconds: float, retries: int, reason: str) -> None:
        log.warning("audit shipping cannot write %s for %.0f s (%d retries since the last line): %s",
                    self.path, seconds, retries, reason)

    def _ended(self, seconds: float) -> None:
        log.warning("audit shipping wrote %s again after %.0f s", self.path, seconds)


class RecordTooLargeForBroker(RuntimeError):
    """The broker refuses a record as larger than its topic takes: shipping cannot pass it until
    the topic's max.message.bytes is raised (it retries, keeping every record)."""


def _too_large(error: Exception, first: int, values: Sequence[bytes]) -> RecordTooLargeForBroker:
    """Name the batch's largest record and what lets it through: a record refused for its size is
    refused at every retry, so shipping stops there for good (an imported CloudTrail record of
    several MB does it on a Kafka broker's default 1 MiB), while the log says only 'paused'."""
    size, index = max((len(value), index) for index, value in enumerate(values))
    return RecordTooLargeForBroker(
        f"the broker refuses a record as too large ({error}): the largest of offsets {first} to "
        f"{first + len(values) - 1} is offset {first + index}, {size} bytes. Shipping retries it and goes no "
        f"further until the topic's max.message.bytes (and the broker's message.max.bytes) take it; the records "
        f"wait in the event log")


class ShippedOffset:
    """The first offset not yet acknowledged by Kafka (`value`), kept in a small file (`advance`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.value = _read_offset(path)

    def advance(self, offset: int) -> None:
        """Persist a new shipped offset (atomic rename, not synced: a crash that loses it, or
        leaves it empty, only means resending)."""
        temporary = self.path.with_suffix(".tmp")
        temporary.unlink(missing_ok=True)  # one a crash left (or an older version made 0644) keeps its mode
        write_bytes(temporary, str(offset).encode())
        os.replace(temporary, self.path)
        self.value = offset


def _read_offset(path: Path) -> int:
    """The offset in the file; 0 when there is none, or when a crash left it empty or damaged.
    Opened without waiting, a regular file only (NotRegularFile): read as it came, a FIFO put in its
    place kept `serve`, `audit import` and `audit verify` waiting for a writer forever. An offset
    is a few digits: what is past the first 64 bytes is not read (the file may be grown to any size)."""
    try:
        with open(open_regular(path), "rb") as file:
            text = file.read(64).decode(errors="replace").strip()
    except FileNotFoundError:
        return 0
    if text.isascii() and text.isdigit():
        return int(text)
    log.warning("%s holds no offset (%r): shipping starts again from the oldest record kept; Kafka gets "
                "those records again and the consumers drop the repeats by eventID", path, text[:40])
    return 0


class _OffsetWriter:
    """Writes the shipped offset after each acknowledged batch. A write that fails (a full disk) is
    no broker failure: the offset is kept in memory, so what Kafka acknowledged is not sent again,
    and the write retried with backoff (a restart before it is written only means resending)."""

    def __init__(self, shipped: ShippedOffset, clock: Callable[[], float] = time.monotonic) -> None:
        self.shipped = shipped
        self.written = shipped.value  # the offset the file holds
        self._clock = clock
        self._delay = 0.0  # before the next retry; 0 while writes succeed
        self._retry_at = 0.0
        self._unwritten = _OffsetUnwritten(shipped.path, lambda: self.written, clock)

    async def acknowledged(self, offset: int) -> None:
        """Kafka acknowledged the records below `offset`: take it, and write it unless a retry waits."""
        self.shipped.value = offset
        await self.write(now=False)

    async def write(self, *, now: bool) -> None:
        """Write the offset if the file lags behind it, and a retry is due (`now`: whether due or not)."""
        offset = self.shipped.value
        if offset == self.written or (not now and self._clock() < self._retry_at):
            return
        try:
            await asyncio.to_thread(self.shipped.advance, offset)
        except OSError as exc:
            self._delay = min(max(self._delay * 2, RETRY_SECONDS[0]), RETRY_SECONDS[1])
            self._retry_at = self._clock() + self._delay
            self._unwritten.failed(exc)
            return
        self.written, self._delay = offset, 0.0
        self._unwritten.ended()


class Shipper:
    """Ships durable records from the event log to Kafka; see the module docstring."""

    def __init__(self, bootstrap: str, log_dir: Path, shipped: ShippedOffset, *, partitions: int,
                 durable_end: Callable[[], int], committed: asyncio.Event, replication_factor: int = 1,
                 on_shipped: Callable[[int, int], None] | None = None, topic: str = AUDIT_TOPIC,
                 on_held: Callable[[int | None], None] = lambda offset: None,
                 on_lost: Callable[[], None] = lambda: None) -> None:
        """`durable_end()`: the offset below which records are durable; `committed` is set when it
        moved; `on_shipped(offset, framed bytes)` after each acknowledged batch (the new shipped offset);
        `on_held(offset)` as it is held in front of a record it cannot read, `on_held(None)` as it reads on;
        `on_lost()` each time it finds the broker lost records it had acknowledged."""
        self.bootstrap = bootstrap
        self.log_dir = log_dir
        self.reader = SegmentReader(log_dir)  # one segment's index in memory, however long the log
        # Held at a damaged record, it shipped nothing more, in silence, until the
        # unshipped records reached the spool's cap and the node refused every call.
        self._stall = StallWatch(log_dir, "audit shipper", "shipped to Kafka", on_held)
        self.shipped = shipped
        self._offset = _OffsetWriter(shipped)
        # Where each partition's next acknowledgement must be, kept across links: a broker that
        # restarted empty while shipping was paused is met by a new link, which knew nothing to expect.
        self._next_offsets: NextOffsets = {}
        self.partitions = partitions
        self.replication_factor = replication_factor  # of the topic, if the shipper creates it
        self._on_lost = on_lost
        self.topic = topic
        self._durable_end = durable_end
        self._committed = committed
        self._on_shipped = on_shipped
        self._imported = ImportedSpans(())  # read at `run`: an import cannot add to a log its node holds
        self._stop = asyncio.Event()
        self._pause = _Pause(bootstrap)
        self._stuck = _Stuck(bootstrap)
        self.connected = False
        self.linger = LINGER_SECONDS

    async def run(self) -> None:
        """Ship until `stop`; reconnect with backoff whenever the broker fails."""
        delay = RETRY_SECONDS[0]
        self._imported = ImportedSpans(await asyncio.to_thread(imported_offsets, beside(self.log_dir)))
        # One attempt at least, stopped or not: a shipper child still starting as serve stopped it
        # found its stop already set and ended without trying, the durable records left unsaid.
        while True:
            try:
                configs = await ensure_topic(self.bootstrap, self.topic, self.partitions, self.replication_factor,
                                             whole=True)
                async with KafkaProducerLink(self.bootstrap, next_offsets=self._next_offsets,
                                             max_batch_bytes=batch_bytes(configs or {}, MAX_BATCH_BYTES)) as link:
                    self.connected, delay = True, RETRY_SECONDS[0]
                    await self._ship_forever(link)
            # Not passing by itself: an operator must act. A topic compacted, or refusing every write,
            # would lose the records shipped there.
            except (TopicUnfit, RecordTooLargeForBroker) as exc:
                self._stuck.failed(exc)
            except BrokerLostRecords as exc:  # the batch not stored either: sent again once the topic is made
                self._said_lost(exc)
            except Exception as exc:  # broker down or unreachable: keep the records, retry
                self._pause.failed(exc)
            self.connected = False
            if self._stop.is_set():
                await self._offset.write(now=True)  # a last try: else the next start sends those records again
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, RETRY_SECONDS[1])

    def _said_lost(self, exc: BrokerLostRecords) -> None:
        """Shipping goes on; what the broker lost is not sent again (said before the offset moves past
        the batch that told it)."""
        log.error("audit shipping to %s: %s. Records this node shipped before offset %d may be gone from "
                  "Kafka; to send them again, stop serve and write the first offset to resend into %s "
                  "(consumers drop repeats by eventID)", self.bootstrap, exc, self.shipped.value, self.shipped.path)
        self._on_lost()

    async def stop(self) -> None:
        """Ask `run` to finish after the batch in flight (it ships what is durable first)."""
        self._stop.set()
        self._committed.set()

    async def _ship_forever(self, link: KafkaProducerLink) -> None:
        while True:
            await self._offset.write(now=False)  # a retry, when one is due (idle, no batch tries it)
            shipped = await self._ship_once(link)
            self._pause.ended()  # a round went through: not on connecting alone, nor on the offset's write
            self._stuck.ended()
            if self._stop.is_set() and not shipped:
                return
            if 0 < shipped < _BATCH and not self._stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.linger)
            if not shipped:
                self._committed.clear()
                if self.shipped.value >= self._durable_end():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._committed.wait(), 1.0)

    async def _ship_once(self, link: KafkaProducerLink) -> int:
        """Ship the next durable records; returns how many."""
        start, end = self.shipped.value, self._durable_end()
        if start >= end:
            return 0
        first, values, _ = await asyncio.to_thread(self.reader.read, start, min(_BATCH, end - start))
        # From an offset retention deleted the log reads on from its first record kept, past `end`
        # too: records written but not yet durable must not reach Kafka, nor the offset.
        values = values[:max(0, end - first)]
        await self._stall.polled(first + len(values) if values else start, end, len(values))
        if not values:
            return 0
        # A broker that restarted empty (tansu memory storage) acknowledges writes to a topic it
        # no longer has and drops them: `send_batch` raises then, and `run` recreates the topic.
        # One that has the topic again stores the batch at offsets gone back: sent again, it was
        # on the topic twice (up to _BATCH records); its acknowledgement counts.
        try:
            await link.send_batch(self.topic, self._messages(first, values))
        except RecordsTooLarge as error:
            raise _too_large(error, first, values) from error
        except BrokerLostRecords as lost:
            if not lost.stored:
                raise
            self._said_lost(lost)
        after = first + len(values)
        await self._offset.acknowledged(after)
        if self._on_shipped is not None:
            self._on_shipped(after, framed_size(values))
        return len(values)

    def _messages(self, first: int, values: Sequence[bytes]) -> list[Message]:
        """The Kafka messages of the records read at `first` on."""
        holds = self._imported.holds
        return [(message_key_bytes(value) or None, value, [IMPORTED_HEADER] if holds(offset) else [])
                for offset, value in enumerate(values, first)]
