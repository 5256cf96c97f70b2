"""TLS for the HTTP server, each connection counted against its bound from its accept.

asyncio's TLS server (`create_server(ssl=…)`, which uvicorn uses) hands a connection to the HTTP
protocol only once its TLS handshake is over, so until then it was not among the connections the
bound (`CoalescingHttpToolsProtocol.limited_to`) counts, though it held a file descriptor: clients
that opened TLS connections and never finished their handshakes could take every descriptor the
node had (asyncio gave each handshake 60 s). Here the server accepts plain TCP, and each connection
is counted from its accept in uvicorn's set of connections (which the bound counts and a stopping
server closes), makes its handshake (`loop.start_tls`) within `HANDSHAKE_SECONDS`, and is then
handed to the HTTP protocol, counted as one connection throughout.

A client that sends plain HTTP to the port (an endpoint URL of http:// for https://) is answered
in plain HTTP that it should call https://, and its connection closed: the handshake failed on
its request and closed the connection without a word, which curl reported as an empty reply and
the SDKs retried, then reported as a connection closed.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any, cast

import uvicorn
from uvicorn.server import ServerState

from keytrail.api.http_protocol import CoalescingHttpToolsProtocol, plain_http_on_tls

__all__ = ["HANDSHAKE_SECONDS", "SHUTDOWN_SECONDS", "TlsHandshake"]

# A handshake is one or two round trips: ten seconds leaves room for a lossy link's retransmissions
# and holds a descriptor a sixth as long as asyncio's 60 s default did.
HANDSHAKE_SECONDS = 10.0
# How long a closing connection waits for the client's close_notify before it is dropped. asyncio's
# (and uvloop's) 30 s held every idle keep-alive client's connection that long once closed: a SIGTERM
# waited out uvicorn's 20 s graceful timeout for an SDK's idle pool (plain HTTP stops at once). The
# reply is one record, a round trip; a client that sends none loses nothing by the drop.
SHUTDOWN_SECONDS = 2.0
# What a connection's first byte is: a TLS record begins with its type (22, a handshake: the
# ClientHello), an HTTP/1.1 request with its method, in capitals (RFC 9110: GET, POST, …).
_HTTP_METHOD_LETTERS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class TlsHandshake(asyncio.Protocol):
    """A connection from its accept to the end of its TLS handshake; then its HTTP protocol's.
    Use `serving` for the class to give uvicorn as its protocol."""

    http_protocol: type[CoalescingHttpToolsProtocol]
    context: ssl.SSLContext
    handshake_seconds = HANDSHAKE_SECONDS

    @classmethod
    def serving(cls, http_protocol: type[CoalescingHttpToolsProtocol], context: ssl.SSLContext) -> type[TlsHandshake]:
        """The protocol of a server that speaks `http_protocol` over TLS with `context`."""
        return type(cls.__name__, (cls,), {"http_protocol": http_protocol, "context": context})

    def __init__(self, config: uvicorn.Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:  # uvicorn's arguments to its protocols
        self._http = self.http_protocol(config=config, server_state=server_state, app_state=app_state, _loop=_loop)
        self._connections: set[Any] = server_state.connections
        self._transport: asyncio.Transport | None = None
        self._handshake: asyncio.Task[None] | None = None
        # What the client sent before the TLS layer was put on its connection (its ClientHello:
        # uvloop reads a connection as soon as it is made); None once it is there.
        self._raw: list[bytes] | None = []
        self._first_bytes: asyncio.Future[None] | None = None  # set once the client has sent some
        # What the client sent between the handshake's end and the hand-over (TLS 1.3 clients send
        # their request with their last handshake message), and whether it then closed its side.
        self._early: list[bytes] = []
        self._eof = False
        self._handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a stream's (uvloop's derives from none of asyncio's)
        self._transport = transport
        self._connections.add(self)
        if not self._http.refused(transport):
            self._first_bytes = self._http.loop.create_future()
            self._handshake = self._http.loop.create_task(self._secure(transport))
            self._waits(True)

    async def _secure(self, transport: asyncio.Transport) -> None:
        """Once the client's first bytes are in, make the handshake, then hand the connection over;
        it is closed if they are plain HTTP (answered so), or if the handshake fails or does not end
        within `handshake_seconds` of the accept (start_tls closes it)."""
        loop = self._http.loop
        deadline = loop.time() + self.handshake_seconds
        try:
            raw = await self._client_hello(transport)
            if not raw:
                return
            # runs once start_tls has put its TLS layer on the connection, before it reads on
            loop.call_soon(_replay, transport, raw)
            secure = await loop.start_tls(transport, self, self.context, server_side=True,
                                          ssl_handshake_timeout=max(deadline - loop.time(), 0.001),
                                          ssl_shutdown_timeout=SHUTDOWN_SECONDS)
        except OSError:  # ssl.SSLError, the timeout, a reset: the client's doing, uvicorn's server logged none either
            self._http.count_refusal("tls_handshake_timeout" if loop.time() >= deadline else "tls_handshake_failed")
            return
        finally:
            self._connections.discard(self)  # the HTTP protocol counts it from here, or it is closed
            self._waits(False)
        if secure is not None and not secure.is_closing():  # None: closed (shutdown) as the handshake ended
            self._hand_over(secure)

    async def _client_hello(self, transport: asyncio.Transport) -> bytes:
        """What the client sent first (its ClientHello, or the start of it); b"" when it sent
        nothing in time (the connection dropped) or plain HTTP (answered, and closed)."""
        assert self._first_bytes is not None
        try:
            await asyncio.wait_for(self._first_bytes, self.handshake_seconds)
        except TimeoutError:
            self._http.count_refusal("tls_handshake_timeout")
            transport.abort()
            return b""
        raw, self._raw = b"".join(self._raw or ()), None
        if raw[0] in _HTTP_METHOD_LETTERS:
            self._http.count_refusal("plain_http_on_tls")
            transport.write(plain_http_on_tls())
            transport.close()
            return b""
        return raw

    def _hand_over(self, secure: asyncio.Transport) -> None:
        secure.set_protocol(self._http)
        self._handed_over = True
        # Let in at its accept: a check now would count connections refused since, which are
        # closed but leave the count only a loop step later, and drop one whose handshake is done.
        self._http.admitted = True
        self._http.connection_made(secure)
        if self._early:
            early, self._early = b"".join(self._early), []
            self._http.data_received(early)
        if self._eof:
            self._http.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._raw is not None:
            self._raw.append(data)
            if self._transport is not None:  # until the handshake begins: the ClientHello, no more
                self._transport.pause_reading()
            if self._first_bytes is not None and not self._first_bytes.done():
                self._first_bytes.set_result(None)
            return
        if self._handed_over:
            self._http.data_received(data)
        else:
            self._early.append(data)

    def eof_received(self) -> bool | None:
        if self._handed_over:
            self._http.eof_received()
        else:
            self._eof = True
        return None  # the TLS layer closes the connection, as it does under uvicorn's protocol alone

    def connection_lost(self, exc: Exception | None) -> None:
        """The TLS layer may tell this protocol after the hand-over (it was scheduled before): the
        HTTP protocol's then. Before it, the handshake ends with the connection."""
        if self._handed_over:
            self._http.connection_lost(exc)
            return
        self._connections.discard(self)
        self._waits(False)
        if self._handshake is not None:
            self._handshake.cancel()  # which may not have begun, and must not hand a closed connection over

    def _waits(self, waiting: bool) -> None:
        """Whether this connection, its handshake not done, is among those closed first to make room
        at the connection bound (the HTTP protocol's `unserved`)."""
        unserved = self._http.unserved  # the bound's, shared by the server's connections
        if unserved is None:
            return
        if waiting:
            unserved[self] = None
        else:
            unserved.pop(self, None)

    def make_way(self) -> None:
        """Drop this connection, its handshake not done, for a new one at the connection bound."""
        self._http.count_refusal("connection_limit")
        self.shutdown()

    def shutdown(self) -> None:
        """The server stops (uvicorn calls this on every connection it counts): a handshake is not
        waited for, its connection is dropped."""
        if self._handshake is not None:
            self._handshake.cancel()
        if self._transport is not None:  # the task cancelled before its first step would never close it
            self._transport.abort()


def _replay(transport: asyncio.Transport, data: bytes) -> None:
    """Give the TLS layer start_tls put on `transport` what the client sent before it was there.
    It is a buffered protocol (asyncio's and uvloop's alike), fed as its transport would feed it;
    the bytes wait in its input until its handshake begins, which comes before it reads on."""
    tls = transport.get_protocol()
    if not hasattr(tls, "buffer_updated"):  # closed before start_tls began: nothing to hand over
        return
    layer = cast(asyncio.BufferedProtocol, tls)
    view = memoryview(data)
    while view:
        buffer = memoryview(layer.get_buffer(len(view)))
        size = min(len(buffer), len(view))
        buffer[:size] = view[:size]
        layer.buffer_updated(size)
        view = view[size:]
