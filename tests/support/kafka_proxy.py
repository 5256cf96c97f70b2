"""A Kafka-protocol proxy that forwards every request to a broker but can leave produce requests
carrying given bytes unanswered: a broker (or a gateway before it) that never acknowledges one
record while it takes the others, which no broker setting gives. It can also make a partition's
log start later (`delete_below`), as Kafka's retention does: tansu's memory storage implements
neither retention nor DeleteRecords (it fails the request). And it can make the broker create no topic
on a client's behalf (`refuse_topic_creation`), as a Kafka broker with auto.create.topics.enable=false
does, which tansu has no setting for."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from aiokafka.protocol import fetch, metadata

from tests.support.services import free_port

__all__ = ["FETCH", "METADATA", "PRODUCE", "KafkaProxy"]

PRODUCE = 0  # the Produce request's api_key
FETCH = 1
METADATA = 3
_HEADER = 10  # api_key, api_version, correlation id, client id's length (request header v1)


class KafkaProxy:
    """Relays 127.0.0.1:`port` to the broker on 127.0.0.1:`target`, one request frame at a time
    (int32 size, then api_key, api_version, correlation id). The broker must advertise this proxy's
    port (`kafka_broker(advertised_port=...)`), so that clients reach it only through the proxy."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.held = 0  # produce requests held so far
        self._holding: bytes | None = None
        self._log_starts: dict[tuple[str, int], int] = {}  # (topic, partition) -> first offset fetched
        self.fetched_from_log_start = 0  # fetches from below a log start made from there so far
        self._creating_topics = True  # whether metadata requests may have the broker create topics
        self.creations_refused = 0  # metadata requests asking for a topic's creation refused so far
        self.largest_produce = 0  # bytes of the largest produce request forwarded so far
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._relays: set[asyncio.Task[None]] = set()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hold_produce(self, containing: bytes) -> None:
        """From now on, hold each produce request whose bytes contain `containing` (an alarmId: a
        record's value is not compressed): never forwarded, so never answered, and nothing after
        it on that connection either, as a broker answers a connection's requests in order."""
        self._holding = containing

    def delete_below(self, topic: str, partition: int, offset: int) -> None:
        """From now on the partition's log starts at `offset` for the clients: a fetch from below
        it reads from it, as a consumer of Kafka does once retention deleted the records below
        (its fetch answered out of range, it resets to the log's start, auto_offset_reset)."""
        self._log_starts[(topic, partition)] = offset

    def refuse_topic_creation(self) -> None:
        """From now on, a metadata request naming a topic the broker lacks does not have it made:
        the broker answers UNKNOWN_TOPIC_OR_PARTITION, as a Kafka broker with
        auto.create.topics.enable=false does (the request's allow_auto_topic_creation is set to
        false, which tansu honours). A topic is then made only by CreateTopics."""
        self._creating_topics = False

    async def __aenter__(self) -> KafkaProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):  # the relays see their connections end, and end
            writer.close()
        if self._relays:  # before the test's event loop closes, which would cancel them mid-read
            await asyncio.wait(self._relays, timeout=5)

    async def _relay(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        relay = asyncio.current_task()
        assert relay is not None
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        self._writers.add(to_client)
        try:
            broker, to_broker = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            to_client.close()
            return
        self._writers.add(to_broker)
        answers = asyncio.create_task(_pipe(broker, to_client))
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                await self._requests(client, to_broker)
        finally:
            for writer in (to_broker, to_client):
                writer.close()
                self._writers.discard(writer)
            answers.cancel()
            await asyncio.gather(answers, return_exceptions=True)

    async def _requests(self, client: asyncio.StreamReader, to_broker: asyncio.StreamWriter) -> None:
        """Forward the client's requests until it hangs up or one is held; after a held one, read
        and drop what the client sends until it hangs up (its request timeout closes it)."""
        while True:
            size = await client.readexactly(4)
            frame = await client.readexactly(int.from_bytes(size, "big", signed=True))
            if self._holds(frame):
                self.held += 1
                while await client.read(65536):
                    pass
                return
            if int.from_bytes(frame[:2], "big", signed=True) == PRODUCE:
                self.largest_produce = max(self.largest_produce, len(frame))
            frame = self._fetching_from_log_start(self._without_topic_creation(frame))
            to_broker.write(len(frame).to_bytes(4, "big", signed=True) + frame)
            await to_broker.drain()

    def _fetching_from_log_start(self, frame: bytes) -> bytes:
        """`frame`, a fetch of a partition below its log start (`delete_below`) made one from there."""
        if int.from_bytes(frame[:2], "big", signed=True) != FETCH or not self._log_starts:
            return frame
        version = int.from_bytes(frame[2:4], "big", signed=True)
        body = _HEADER + max(0, int.from_bytes(frame[8:_HEADER], "big", signed=True))
        kind = getattr(fetch, f"FetchRequest_v{version}")  # v0-v11: none flexible, all decoded alike
        request = kind.decode(frame[body:])
        topics = kind.SCHEMA.fields[kind.SCHEMA.names.index("topics")].array_of
        at = topics.fields[1].array_of.names.index("fetch_offset")
        request.topics = [(topic, [self._from_log_start(topic, list(part), at) for part in parts])
                          for topic, parts in request.topics]
        return frame[:body] + request.encode()

    def _without_topic_creation(self, frame: bytes) -> bytes:
        """`frame`, a metadata request allowing the broker to create topics, made one that does not
        (`refuse_topic_creation`)."""
        if self._creating_topics or int.from_bytes(frame[:2], "big", signed=True) != METADATA:
            return frame
        version = int.from_bytes(frame[2:4], "big", signed=True)
        body = _HEADER + max(0, int.from_bytes(frame[8:_HEADER], "big", signed=True))
        kind = getattr(metadata, f"MetadataRequest_v{version}")  # v0-v5: none flexible
        # Before v4 a request naming topics always allows their creation: none is sent by aiokafka,
        # which asks for v5, but a test must not pass on one unseen.
        assert "allow_auto_topic_creation" in kind.SCHEMA.names, f"metadata request v{version}"
        request = kind.decode(frame[body:])
        if request.allow_auto_topic_creation:
            request.allow_auto_topic_creation = False
            self.creations_refused += 1
        return frame[:body] + request.encode()

    def _from_log_start(self, topic: str, part: list[int], at: int) -> list[int]:
        start = self._log_starts.get((topic, part[0]), 0)
        if part[at] < start:
            part[at] = start
            self.fetched_from_log_start += 1
        return part

    def _holds(self, frame: bytes) -> bool:
        api_key = int.from_bytes(frame[:2], "big", signed=True)
        return api_key == PRODUCE and self._holding is not None and self._holding in frame


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
