"""A Kafka-protocol proxy that forwards every request to a broker but can leave produce requests
carrying given bytes unanswered: a broker (or a gateway before it) that never acknowledges one
record while it takes the others, which no broker setting gives."""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

from tests.support.services import free_port

__all__ = ["PRODUCE", "KafkaProxy"]

PRODUCE = 0  # the Produce request's api_key


class KafkaProxy:
    """Relays 127.0.0.1:`port` to the broker on 127.0.0.1:`target`, one request frame at a time
    (int32 size, then api_key, api_version, correlation id). The broker must advertise this proxy's
    port (`kafka_broker(advertised_port=...)`), so that clients reach it only through the proxy."""

    def __init__(self, target: int, port: int | None = None) -> None:
        self.target = target
        self.port = port or free_port()
        self.held = 0  # produce requests held so far
        self._holding: bytes | None = None
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
            to_broker.write(size + frame)
            await to_broker.drain()

    def _holds(self, frame: bytes) -> bool:
        api_key = int.from_bytes(frame[:2], "big", signed=True)
        return api_key == PRODUCE and self._holding is not None and self._holding in frame


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
