"""Kafka over aiokafka: topic creation and an acknowledged, partitioned batch producer.

acks=all, no idempotence and no transactions (the test broker, tansu, supports neither, and
at-least-once delivery does not need them: consumers deduplicate by eventID).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import KafkaConnectionError, KafkaError, MessageSizeTooLargeError, RecordListTooLargeError
from aiokafka.partitioner import murmur2
from aiokafka.producer.message_accumulator import BatchBuilder

from keytrail.transport.kafka_security import (
    KafkaAccessRefused,
    KafkaSecurity,
    KafkaSecurityError,
    kafka_client_options,
    refusal,
)
from keytrail.transport.topic_settings import check_topic

__all__ = ["MAX_BATCH_BYTES", "BrokerLostRecords", "KafkaProducerLink", "NextOffsets", "RecordsTooLarge",
           "access_refused", "ensure_topic", "kafka_problem", "partition_for", "quiet_bootstrap",
           "read_again_where_log_ended_below", "told_refusals"]

log = logging.getLogger(__name__)

_TOPIC_EXISTS = 36
_YIELD_EVERY = 500  # records appended to batches between yields to the serving loop (~0.4 ms)
_ABANDON_SECONDS = 0.5  # a producer's stop after a cancelled send, at most
MAX_BATCH_BYTES = 256 << 10  # a record batch, at most (but one record larger): a topic may take less
_PARTITION_CACHE = 1 << 16  # key ARNs remembered with their partition (murmur2 costs ~11 µs a key)

Headers = list[tuple[str, bytes]]  # aiokafka takes a list, no other sequence
Message = tuple[bytes | None, bytes, Headers]  # key, value, headers


class BrokerLostRecords(RuntimeError):
    """The broker acknowledged records it cannot have kept: an offset went back, or the topic
    or partition is gone (a memory-storage broker that restarted empty). `stored`: the batch whose
    acknowledgements told it is on the broker all the same (its log began again with that batch),
    so it counts as sent; else it is to be sent again."""

    def __init__(self, message: str, *, stored: bool = False) -> None:
        super().__init__(message)
        self.stored = stored


class RecordsTooLarge(RuntimeError):
    """The broker refused a batch as larger than the topic takes (its max.message.bytes): refused
    again at every retry, unlike a broker out of reach."""


def kafka_problem(error: KafkaError) -> str:
    """What went wrong with Kafka, in words for the person who gave --kafka: aiokafka's text of a
    broker out of reach is a Python repr of its addresses (`[('127.0.0.1', 1, <AddressFamily…>)]`)."""
    if isinstance(error, KafkaAccessRefused):
        return str(error)
    if isinstance(error, KafkaConnectionError):
        return "no broker answered there (is it running, and is the address right?)"
    return str(error)


@contextlib.contextmanager
def quiet_bootstrap() -> Iterator[None]:
    """aiokafka logs each broker it fails to reach at ERROR, then raises KafkaConnectionError naming
    them all: while a client starts, leave the telling to whoever handles that error, which says
    why when the broker refused keytrail (`told_refusals`)."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its failed connects still reach `told_refusals`, kept there, not written
    try:
        with told_refusals(quiet=True):
            yield
    finally:
        logger.setLevel(level)


class _ConnectErrors(logging.Filter):
    """Keeps the error of each connection aiokafka's client failed to open, which it logs on the
    `aiokafka` logger (`Unable connect to "HOST:PORT": ERROR`) and then raises only as `Unable to
    bootstrap`; `quiet`: drops that logger's lines."""

    def __init__(self, *, quiet: bool) -> None:
        super().__init__()
        self.quiet = quiet
        self.errors: list[BaseException] = []

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.args[-1] if isinstance(record.args, tuple) and record.args else None
        if isinstance(error, BaseException):
            self.errors.append(error)
        return not self.quiet


@contextlib.contextmanager
def told_refusals(*, quiet: bool = False) -> Iterator[None]:
    """While a client starts: a broker that answered but would not let keytrail in (TLS, SASL)
    raises KafkaAccessRefused saying why, not `Unable to bootstrap` as if it were out of reach.
    `quiet`: aiokafka's own lines of the failed connects are not written."""
    heard = _ConnectErrors(quiet=quiet)
    client_logger = logging.getLogger("aiokafka")  # aiokafka.client's, not named after its module
    client_logger.addFilter(heard)
    try:
        yield
    except KafkaConnectionError as error:
        if isinstance(error, KafkaAccessRefused) or not (refused := _refusal(heard.errors)):
            raise
        raise refused from error
    except (KeyError, ValueError) as error:  # aiokafka's SCRAM on a refusal some brokers word differently
        if not (refused := _refusal([error])):
            raise
        raise refused from error
    finally:
        client_logger.removeFilter(heard)


def _refusal(errors: Sequence[BaseException]) -> KafkaAccessRefused | None:
    try:
        security = KafkaSecurity.from_environment()
    except KafkaSecurityError:  # the client could not have been built with them: not what failed here
        return None
    return refusal(errors, security)


async def access_refused(bootstrap: str, *, timeout_ms: int = 5_000) -> KafkaAccessRefused | None:
    """Whether the brokers of `bootstrap` refuse keytrail (TLS, SASL): one connection to each, until
    one lets it in (None). None too if none answered (out of reach, or silent past `timeout_ms`:
    the shipper waits for a broker down); a refusal does not pass by itself. A broker that takes
    a plain TCP connection but not keytrail's TLS hello within `timeout_ms` is a refusal: a plain
    listener reads the hello as the start of a huge request and waits for the rest, which the
    client would wait out for its whole request timeout (40 s) before saying so."""
    security = KafkaSecurity.from_environment()
    errors: list[BaseException] = []
    for host, port, _ in collect_hosts(bootstrap, randomize=False):
        try:
            conn = await create_conn(host, port, request_timeout_ms=timeout_ms, **security.client_options())
        except TimeoutError as error:
            if security.uses_tls and await _takes_tcp(host, port, timeout_ms):
                errors.append(error)  # there, but silent to TLS
            continue
        except (OSError, KafkaError, KeyError, ValueError) as error:  # KeyError, ValueError: SCRAM's
            errors.append(error)
            continue
        conn.close()
        return None
    return refusal(errors, security)


async def _takes_tcp(host: str, port: int, timeout_ms: int) -> bool:
    """Whether a plain TCP connection to host:port opens within `timeout_ms`: something listens."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_ms / 1000)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


async def ensure_topic(bootstrap: str, topic: str, partitions: int, replication_factor: int = 1, *,
                       timeout_ms: int = 10_000, whole: bool = False) -> dict[str, str]:
    """Create `topic` with `partitions`, each on `replication_factor` brokers, unless it exists.
    `whole`: the topic must keep every record written to it (the audit trail): TopicUnfit if its
    settings, an operator's or the broker's defaults, would lose them or refuse every write; a
    warning if it was there with fewer partitions or replicas than asked for; returns its settings
    as the broker told them (none without `whole`)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms, **kafka_client_options())
    try:
        with told_refusals():
            await admin.start()
        found = topic in await admin.list_topics()
        if not found:
            await _create(admin, topic, partitions, replication_factor)
        if whole:
            return await check_topic(admin, topic, partitions, replication_factor, found=found)
        return {}
    finally:
        await admin.close()


async def _create(admin: AIOKafkaAdminClient, topic: str, partitions: int, replication_factor: int) -> None:
    response = await admin.create_topics([NewTopic(topic, partitions, replication_factor)])
    for name, code, *rest in response.topic_errors:
        if code not in (0, _TOPIC_EXISTS):
            raise RuntimeError(f"cannot create Kafka topic {name}: error {code} {rest}")


def partition_for(key: bytes | None, partitions: Sequence[int]) -> int:
    """The partition Kafka's default partitioner gives `key` (murmur2, as the Java client and
    aiokafka do), so a key ARN always lands on the same partition. Key-less records (calls with
    neither key nor account, which the default partitioner scatters at random) take the first."""
    if key is None:
        return partitions[0]
    index: int = murmur2(key) & 0x7FFFFFFF
    return partitions[index % len(partitions)]


def _seen(future: asyncio.Future[Any]) -> None:
    """Mark a batch's failure as retrieved: a send cancelled by a stop (the shipper's, its broker
    gone) awaits it no more, and asyncio would log it with a traceback as never retrieved when the
    producer fails it. An awaiting send still gets the exception."""
    if not future.cancelled():
        future.exception()


NextOffsets = dict[tuple[str, int], int]  # (topic, partition): where its next acknowledgement must be


class KafkaProducerLink:
    """An aiokafka producer that sends keyed messages as one record batch per partition and
    returns only when the broker acknowledged every batch."""

    def __init__(self, bootstrap: str, *, request_timeout_ms: int = 10_000, next_offsets: NextOffsets | None = None,
                 max_batch_bytes: int = MAX_BATCH_BYTES) -> None:
        """`next_offsets`: where each partition's next acknowledgement must be, kept by the caller
        across links (a link made after an outage then still sees a broker that came back empty);
        this link's own if None. `max_batch_bytes`: the largest record batch the topic takes (its
        max.message.bytes, `batch_bytes`)."""
        self._producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False,
            max_batch_size=max_batch_bytes, request_timeout_ms=request_timeout_ms, **kafka_client_options(),
        )
        self._partitions: dict[str, list[int]] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}
        self._next_offset = {} if next_offsets is None else next_offsets

    async def __aenter__(self) -> KafkaProducerLink:
        try:
            with told_refusals():
                await self._producer.start()
        except BaseException:
            await self._producer.stop()  # what start opened before it failed
            raise
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if kind is asyncio.CancelledError:
            # A stop cancelled a send: aiokafka's stop flushes its batches first, which a broker gone
            # holds until they expire (10 s and more). Nobody awaits them now; their records stay
            # unacknowledged, for the next shipper.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._producer.stop(), _ABANDON_SECONDS)
            return
        await self._producer.stop()

    async def send_batch(self, topic: str, messages: Sequence[Message]) -> None:
        """Send (key, value, headers) messages, in order within each partition; return once all are
        acknowledged and the acknowledgements are plausible, else raise (BrokerLostRecords says
        whether the messages are stored nonetheless)."""
        batches = await self._build(topic, messages)
        try:
            acks = await asyncio.gather(*(self._send_partition(topic, p, builders) for p, builders in batches.items()))
        except (MessageSizeTooLargeError, RecordListTooLargeError) as error:
            raise RecordsTooLarge(type(error).__name__) from error
        await self._check_acks(topic, dict(zip(batches, acks, strict=True)))

    def _forget(self, topic: str) -> None:
        """Expect nothing of `topic`'s partitions: a loss is said once, the topic's log began again."""
        for known in [known for known in self._next_offset if known[0] == topic]:
            del self._next_offset[known]

    async def _build(self, topic: str, messages: Sequence[Message]) -> dict[int, list[BatchBuilder]]:
        """Closed record batches per partition (a partition gets more than one only past 256 KiB)."""
        partitions = await self._partitions_of(topic)
        batches: dict[int, list[BatchBuilder]] = {}
        for index, (key, value, headers) in enumerate(messages, 1):
            builders = batches.setdefault(self._partition(topic, key, partitions), [])
            if not builders or builders[-1].append(key=key, value=value, timestamp=None, headers=headers) is None:
                builders.append(self._new_batch(key, value, headers))
            if index % _YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a full round must not hold the serving loop for ms
        for builders in batches.values():
            builders[-1].close()  # closed: sent at once, no linger
        return batches

    def _new_batch(self, key: bytes | None, value: bytes, headers: Headers) -> BatchBuilder:
        builder = self._producer.create_batch()
        if builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
            raise ValueError(f"an audit record of {len(value)} bytes does not fit in a Kafka batch")
        return builder

    async def _partitions_of(self, topic: str) -> list[int]:
        if topic not in self._partitions:
            self._partitions[topic] = sorted(await self._producer.partitions_for(topic))
        return self._partitions[topic]

    def _partition(self, topic: str, key: bytes | None, partitions: list[int]) -> int:
        if key is None:
            return partition_for(None, partitions)
        found = self._partition_of.get((topic, key))
        if found is None:
            if len(self._partition_of) >= _PARTITION_CACHE:
                self._partition_of.clear()
            found = self._partition_of[(topic, key)] = partition_for(key, partitions)
        return found

    async def _send_partition(self, topic: str, partition: int, builders: list[BatchBuilder]) -> list[tuple[int, int]]:
        """(base offset, records) of each batch, acknowledged; batches of one partition queue in order."""
        pending = []
        for builder in builders:
            future = await self._producer.send_batch(builder, topic, partition=partition)
            future.add_done_callback(_seen)
            pending.append((future, builder.record_count()))
        return [((await future).offset, count) for future, count in pending]

    async def _check_acks(self, topic: str, acks: dict[int, list[tuple[int, int]]]) -> None:
        """Offsets only grow on a broker that kept its log. One that restarted empty acknowledges
        at offset 0 again (and drops what it has no topic or partition for): a partition acknowledged
        before (on this link or an earlier one sharing its `next_offsets`) that goes back is a loss;
        one first seen at 0 is checked against the broker. The batch that tells a loss is stored
        all the same when every partition acknowledged it at an offset, on a topic the broker has."""
        went_back, unseen, reached = self._compare(topic, acks)
        # The positions are taken only once checked: a check that fails otherwise (the broker gone
        # again) leaves the loss to be told at the next send.
        try:
            if unseen:
                await self._check_topic(topic, unseen)
        except BrokerLostRecords as missing:
            self._forget(topic)  # the broker dropped this batch: sent again, its acknowledgements start afresh
            if went_back is None:
                raise
            raise BrokerLostRecords(went_back) from missing
        if went_back is None:
            self._next_offset.update(reached)
            return
        stored = all(base >= 0 for batches in acks.values() for base, _ in batches)  # -1: no offset, not kept
        self._forget(topic)  # said once: what is expected of the old log is gone with it
        if stored:
            self._next_offset.update(reached)  # where the new log stands
        raise BrokerLostRecords(went_back, stored=stored)

    def _compare(self, topic: str, acks: dict[int, list[tuple[int, int]]]
                 ) -> tuple[str | None, list[int], NextOffsets]:
        """What the first partition that went back says (None if none did); the partitions to look
        for on the broker (those that went back, and those first seen at 0); where each partition's
        next acknowledgement must be, if the acknowledgements hold."""
        went_back: str | None = None
        unseen: set[int] = set()
        reached: NextOffsets = {}
        for partition, batches in acks.items():
            for base, count in batches:
                expected = reached.get((topic, partition), self._next_offset.get((topic, partition)))
                if base < 0 or (expected is not None and base < expected):
                    went_back = went_back or (f"{topic}[{partition}] acknowledged at offset {base}, "
                                              f"expected {expected} or more: the broker lost records")
                    unseen.add(partition)
                elif expected is None and base == 0:
                    unseen.add(partition)
                reached[(topic, partition)] = base + count
        return went_back, sorted(unseen), reached

    async def _check_topic(self, topic: str, partitions: list[int]) -> None:
        """Ask the broker (not the cached metadata) whether the topic has these partitions."""
        cluster = await self._producer.client.fetch_all_metadata()
        missing = set(partitions) - (cluster.partitions_for_topic(topic) or set())
        if missing:
            raise BrokerLostRecords(f"{topic} partitions {sorted(missing)} are missing on the broker")


async def read_again_where_log_ended_below(consumer: Any, reading: Mapping[Any, int], reader: str) -> dict[Any, int]:
    """The partitions whose log now ends below where `reader` reads them (`reading`), each sent back
    to its start, with where it ends. Their log began again (a broker that restarted empty or lost
    its disk, the topic created anew): tansu answers a fetch past the end with no records, not out
    of range, and the reader would wait there, blind to every call until the topic grew past its
    old end."""
    short = {part: end for part, at in reading.items() if (end := consumer.highwater(part)) is not None and end < at}
    for part, end in short.items():
        log.warning("%s-%d ends at offset %d, below where this %s reads (%d): the topic was created anew or its "
                    "broker lost the log; reading it from its start",
                    part.topic, part.partition, end, reader, reading[part])
        await consumer.seek_to_beginning(part)
    return short
