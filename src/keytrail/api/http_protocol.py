"""uvicorn's httptools protocol, with each response leaving in one write instead of two.

An ASGI app answers with two messages (`http.response.start`, `http.response.body`), and uvicorn
writes each to the transport at once: two `send` system calls and two TCP segments per answer.
A loopback write is dear (measured with `serve --no-audit` under wrk: joined, an Encrypt costs
the server ~25 µs less CPU, about a fifth), so the writes made within one step of the event loop
are held and written together by a callback scheduled for right after that step. A head with no body
after it (HEAD, `100 Continue`) leaves then too, without waiting for anything else.

With a durable audit trail an answer is instead written as soon as it is complete
(`answering_at_once`): each one completes when its group commit's fsync returns, in the loop pass
that also starts the requests read meanwhile, and held to the end of that pass it waited behind
them (~0.7 ms under wrk -c16, its client idle all the while). Written at once, the audited node
served Encrypt +0.2 to +4.8 % req/s under wrk -c16 (four runs of 6–8 interleaved rounds), and its
open-loop p99 at 7,000 req/s was 6.4 against 7.1 ms. Answers that complete in the pass that read
their request (audit off) are better held: written one by one, each woke the client alone, and the
node with audit off served 11 % fewer.

A request must also arrive whole within `REQUEST_SECONDS` of its first byte: uvicorn times out idle
connections between requests, not a client that sends its headers or body a byte now and then,
which would hold its connection and request task forever (slowloris). And its URL and headers
must fit in `HEAD_BYTES`: uvicorn keeps every header it is sent, so one client streaming headers
fast filled the server's memory (200 MB of headers: 200 MB more resident). The bytes are counted
per read while a head is arriving, not per header: a Python call per header cost every request
2–4 µs. A chunked body's trailer section, after its last chunk, is bounded alike (`_trailing`):
httptools joins a field from every read it spans (bytes += bytes) whether or not anyone keeps it,
so one trailer field streamed after `0\r\n` grew the node by its size, joined in quadratic time on
the loop (64 MB, the most read of a body already refused, unauthenticated: ~95 MB and 3 s of
CPU; eight such connections 490 MB and a 24 s wait for every other client).

A connection must also send its first request within uvicorn's keep-alive timeout (as it must each
next one): uvicorn arms that timer only after a response, so a connection that never sent a byte
was held forever, each one a file descriptor until the node had none left. And while requests
pipelined on a connection wait their turn, no more of it is read: uvicorn read on after every
answer, so one client pipelining large bodies queued hundreds of MB of them.

An answer must also leave within `REQUEST_SECONDS` once the connection stops taking it: a client
that never reads kept its connection, and the answer held for it, for ever (closing waits for the
held bytes to go out).

And the connections held at once are bounded (`limited_to`): each is a file descriptor, and a
node out of them could not open its audit spool's next segment or digest, its key store or its
consumers' files. At the bound, a new connection takes the place of the one that has waited longest
for a request to arrive whole (`unserved`: idle, a request's head or body still arriving, a TLS
handshake not done), which is closed; only when every connection has a request running is the new
one closed as soon as it is accepted. Slow clients (slowloris: a byte of a head every few seconds)
held the whole bound until their 60 s ran out and came back: 44 such connections of a node limited
to 44 refused every other client. Over TLS a connection counts from its accept too, its handshake
included (api/tls_handshake.py). Each
connection closed so, before a request on it was served, is counted by its reason
(`counting_refusals`, `REFUSAL_REASONS`) for /metrics: the log says only one a minute. So is each
request the protocol refuses itself, never handed to the app (`REQUEST_REFUSAL_REASONS`: a 408, 431
or 400 of its own, and the 417, 501 and 505 of api/request_head.py, counted as malformed_http; the
app counts its 413 in the same counter), by its answer's reason: a client that never got to the KMS
app left no trace an operator could see. Counted as it is refused, not
per request served.

A client that closes its sending side once its requests are sent (a TCP half-close) still reads:
those requests are answered, then the connection closes (`eof_received`). uvicorn took the
half-close for the client gone and closed at once, so each such call was carried out, and
audited, but its answer thrown away.

A request asking to switch to HTTP/2 (`Connection: Upgrade`, `Upgrade: h2c`: Java's HttpClient
sends it on the first request of each http:// connection, as curl --http2 and Ktor do) is served
over HTTP/1.1, its Upgrade ignored (RFC 9110 §7.8 lets a server do so): httptools ends such a
request at its headers and leaves its body unread (httptools#124), so the body, and whatever
follows it, is read on by a parser of its own (`_read_on_as_http1`). Any other switch (CONNECT, a
WebSocket) is refused.

And an answer sent before its request's body is read (413 for a body over the limit) on a
connection that then closes waits for the rest of that body, read and thrown away, up to
`DRAIN_BYTES` and within `REQUEST_SECONDS`: closed with the body still arriving, the connection
was reset, and a client still sending (http.client, and every client that writes its whole body
before it reads) saw `Connection reset by peer` instead of the answer.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import sys
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any, Protocol

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from keytrail.api.request_head import MALFORMED, HeadChecks, Refusal, asks_for_h2c, last_answer, parser_refusal

__all__ = ["REFUSAL_REASONS", "REQUEST_REFUSAL_REASONS", "TLS_EXTENSION", "ClientNoiseFilter",
           "CoalescingHttpToolsProtocol", "connection_limit", "plain_http_on_tls"]

log = logging.getLogger(__name__)

TLS_EXTENSION = "keytrail.tls"  # {"tlsVersion": "TLSv1.3", "cipherSuite": "TLS_AES_128_GCM_SHA256"}
# Generous for a KMS request (a few KB, 300 KB at most) on any link; the SDKs' read timeout is 60 s.
REQUEST_SECONDS = 60.0
# An SDK's KMS request has a URL of one byte and about ten headers of some 2 KB in all.
HEAD_BYTES = 64 * 1024
# The longest URL httptools.parse_url splits (its offsets are 16 bits); uvicorn parses each one.
_PARSED_URL_BYTES = 0xFFFF
# The most of a refused body read and thrown away so that its client gets the answer: a fraction
# of a second of one core on loopback; past it the connection is closed, and may be reset.
DRAIN_BYTES = 64 * 1024 * 1024
# File descriptors a node keeps for itself whatever its clients do: key store, audit segments and
# digests, the consumers' state files, Kafka and MQTT sockets, its children's pipes (~40 in use).
RESERVED_DESCRIPTORS = 256
_REFUSAL_LOG_SECONDS = 60.0  # one warning a minute while connections are refused, not one each
# Why serve closed a connection before serving a request on it: the bound reached at its accept;
# over TLS, a handshake that failed (no common version or cipher, a reset) or did not end within
# its time (HANDSHAKE_SECONDS, a ClientHello never sent included), or plain HTTP sent instead.
REFUSAL_REASONS = ("connection_limit", "tls_handshake_failed", "tls_handshake_timeout", "plain_http_on_tls")
# Why a request was refused before the app carried it out, by its answer: 408, 431, 400 (by the
# protocol, below; 417, 501 and 505 too, as malformed_http: api/request_head.py), 413 and the
# ThrottlingException of bodies arriving past the bytes they may hold together (by the app, which
# reads the body: api/app.py).
REQUEST_REFUSAL_REASONS = ("request_timeout", "headers_too_large", "malformed_http", "body_too_large",
                           "protocol_upgrade", "large_bodies_throttled")


class ClientNoiseFilter(logging.Filter):
    """Lets each of uvicorn's warnings about what a client sent (bytes that are not HTTP, an upgrade
    it does not serve) through once a minute: one line a request let any client, unauthenticated,
    write the log as fast as it sent, and push the node's own lines past journald's rate limit."""

    NOISE = frozenset({
        "Invalid HTTP request received.", "Unsupported upgrade request.",
        "No supported WebSocket library detected. Please use \"pip install 'uvicorn[standard]'\", "
        "or install 'websockets' or 'wsproto' manually.",
    })

    def __init__(self, seconds: float = _REFUSAL_LOG_SECONDS) -> None:
        super().__init__()
        self.seconds = seconds
        self._logged_at: dict[str, float] = {}  # by message: NOISE's few

    @classmethod
    def attach(cls, logger: logging.Logger) -> None:
        """Filter `logger`'s records, once however many servers a process makes (tests, a serve
        restarted in-process): one filter added per server piled up on the one logger."""
        if not any(isinstance(known, cls) for known in logger.filters):
            logger.addFilter(cls())

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message not in self.NOISE:
            return True
        if _refusing_in_a_callback():  # a 431 or an upgrade refused, counted (and not logged) as the others are
            return False
        now = time.monotonic()
        if now - self._logged_at.get(message, -self.seconds) < self.seconds:
            return False
        self._logged_at[message] = now
        return True


def _refusing_in_a_callback() -> bool:
    """Whether uvicorn's "Invalid HTTP request received." is logged for a head too large (or one
    refused as it ended: _HeadRefused, alike), which it is when the head ends in the read it
    began in: on_headers_complete's _HeadTooLarge stops the parser,
    and uvicorn logs that line while handling the parser's error (httptools sets the callback's
    exception as that error's __context__), before send_400_response answers 431. Said so, a 431
    was misnamed as HTTP that could not be read, and took that line's one slot a minute: a client
    sending large heads hid every malformed request from the log."""
    error = sys.exc_info()[1]
    return error is not None and isinstance(error.__context__, _HeadTooLarge | _HeadRefused)


def connection_limit() -> int:
    """The most connections `serve` holds at once: its file descriptor limit less those it keeps."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(soft - RESERVED_DESCRIPTORS, 16)


def _stamped(answer: bytes) -> bytes:
    """`answer` with a request id of its own, as the app's answers have: an SDK shows it with the
    error, and a question about a refused call starts from it. Added as it is sent, not built into
    the answers above: each refusal needs its own."""
    status, _, rest = answer.partition(b"\r\n")
    return b"%s\r\nx-amzn-requestid: %s\r\n%s" % (status, str(uuid.uuid4()).encode(), rest)


class _HeadTooLarge(Exception):
    """Raised from the parser's callback to end the read of a request whose head is too large."""


class _HeadRefused(Exception):
    """Raised from the parser's callback to end the read of a request refused for its head
    (api/request_head.py's `HeadChecks`): one asking to switch to a protocol other than HTTP/2,
    naming two hosts, in an HTTP version other than 1.x, or framed in a way keytrail cannot read."""


def _framing_head(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A request head carrying only `headers`' body framing (Content-Length, Transfer-Encoding), so
    that a fresh parser reads the bytes that follow as that request's body."""
    framing = b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers
                       if name in (b"content-length", b"transfer-encoding"))
    return b"POST / HTTP/1.1\r\n%s\r\n" % framing


class _ReadingOn:
    """The callbacks of the parser that reads on after the head of a request asking for h2c: the
    protocol's own, but those of the framing head (`_framing_head`) fed to it first, which belong
    to no request. (httptools takes a protocol's callbacks once, when the parser is made.)"""

    def __init__(self, protocol: CoalescingHttpToolsProtocol) -> None:
        self._protocol = protocol
        self._framing = True  # the framing head is being read: its callbacks are dropped
        self.on_body = protocol.on_body
        self.on_chunk_header = protocol.on_chunk_header
        self.on_chunk_complete = protocol.on_chunk_complete
        self.on_message_complete = protocol.on_message_complete

    def on_message_begin(self) -> None:
        if not self._framing:
            self._protocol.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self._framing:
            self._protocol.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._framing:
            self._protocol.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._framing:
            self._framing = False  # the body, and every request after it, are the client's
            return
        self._protocol.on_headers_complete()


def _head_size(url: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    """The bytes of a request's URL and headers as sent, near enough: each header line is its name,
    ": ", its value and CRLF."""
    return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)


_HEAD_TOO_LARGE = Refusal(last_answer(b"431 Request Header Fields Too Large", "RequestHeaderFieldsTooLarge",
                                      f"The request's URL and headers exceed {HEAD_BYTES} bytes."),
                          "headers_too_large")
_TRAILER_TOO_LARGE = Refusal(last_answer(b"431 Request Header Fields Too Large", "RequestHeaderFieldsTooLarge",
                                         f"The request's trailer fields exceed {HEAD_BYTES} bytes."),
                             "headers_too_large")
# A request still arriving on the connection closed to make room for a new one at the bound: its
# client was the slowest, and an SDK retries a ThrottlingException.
_MADE_WAY = last_answer(b"400 Bad Request", "ThrottlingException",
                        "The node is at its connection limit and this request was the slowest to arrive; "
                        "send it again.")
_OVERDUE = Refusal(last_answer(b"408 Request Timeout", "RequestTimeoutException",
                               "The request did not arrive whole in time."), "request_timeout")
_PLAIN_HTTP_ON_TLS = last_answer(
    b"400 Bad Request", "SerializationException",
    "The request was sent as plain HTTP to a port that serves HTTPS: use an https:// endpoint URL.")
_STOPPING = last_answer(b"500 Internal Server Error", "KMSInternalException",
                        "The server is shutting down; the request was not carried out. Retry it.")


def plain_http_on_tls() -> bytes:
    """The answer to a plain HTTP request on a port that serves HTTPS (api/tls_handshake.py)."""
    return _stamped(_PLAIN_HTTP_ON_TLS)


class _CoalescingTransport(asyncio.Transport):
    """A transport that holds the writes of one loop step and hands them on as one."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop,
                 lingers: Callable[[], bool] = lambda: False) -> None:
        super().__init__()
        self._transport = transport
        self._loop = loop
        self._held: list[bytes | bytearray | memoryview] = []
        self._lingers = lingers  # True: the protocol closes later, once the request body is read

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        """Hand on what is held now, rather than at the end of the loop step."""
        held, self._held = self._held, []
        # A connection the peer dropped in the meantime takes no more data (writing would raise).
        if held and not self._transport.is_closing():
            self._transport.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()  # what was written before close() still goes out, as on any transport
        if not self._lingers():
            self._transport.close()

    def abort(self) -> None:
        self._held.clear()
        self._transport.abort()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(data) for data in self._held)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)


class _QueueFirstFlow(FlowControl):
    """uvicorn's flow control, except that reading stays paused while pipelined requests are
    queued: uvicorn resumes it after each answer and at each read of a body, so a client sending
    faster than it is answered had the server read and hold everything it sent."""

    def __init__(self, transport: asyncio.Transport, queued: deque[Any]) -> None:
        super().__init__(transport)
        self._queued = queued

    def resume_reading(self) -> None:
        if not self._queued:  # the last queued request started: its own body may still be arriving
            super().resume_reading()


def _tls_session(transport: asyncio.Transport) -> dict[object, object] | None:  # ASGI's extension type
    """The TLS version and cipher suite a connection negotiated (OpenSSL's names, as CloudTrail's
    tlsDetails gives them); None over plain TCP. The handshake is over before `connection_made`."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return {"tlsVersion": ssl_object.version() or "", "cipherSuite": cipher[0] if cipher else ""}


class Unserved(Protocol):
    """A connection that waits for a request to arrive whole (or for its TLS handshake): it may be
    closed to make room at the connection bound."""

    def make_way(self) -> None:
        """Close this connection for a new one (counted as a connection_limit refusal)."""


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's `httptools` protocol over a transport that joins the writes of one loop step.
    Each request's scope also carries its connection's TLS session (`TLS_EXTENSION`), which
    uvicorn does not pass on."""

    request_seconds = REQUEST_SECONDS
    max_connections: int | None = None  # None: no bound (see `limited_to`)
    # With a bound, its server's connections waiting for a request to arrive whole (or for their TLS
    # handshake), the one waiting longest first: the first closed to make room at the bound.
    # Ordered by when each began to wait, so each change is O(1), not a search of every connection.
    unserved: OrderedDict[Unserved, None] | None = None
    # Counted against the bound, and let in, before `connection_made` (TLS: at its accept, by
    # TlsHandshake): not checked again, as connections refused meanwhile still fill the count.
    admitted = False
    _refusals_logged_at = -_REFUSAL_LOG_SECONDS
    # By REFUSAL_REASONS and REQUEST_REFUSAL_REASONS (see `counting_refusals`); None: not counted.
    refusals: Counter[str] | None = None

    answers_at_once = False  # see `answering_at_once`

    @classmethod
    def limited_to(cls, max_connections: int) -> type[CoalescingHttpToolsProtocol]:
        """This protocol, holding at most `max_connections` connections at once."""
        return type(cls.__name__, (cls,), {"max_connections": max_connections, "unserved": OrderedDict()})

    @classmethod
    def answering_at_once(cls) -> type[CoalescingHttpToolsProtocol]:
        """This protocol, writing each answer as soon as it is complete rather than at the end of
        the loop step (for a node whose answers wait on the audit trail: the module docstring)."""
        return type(cls.__name__, (cls,), {"answers_at_once": True})

    @classmethod
    def counting_refusals(cls, refusals: Counter[str]) -> type[CoalescingHttpToolsProtocol]:
        """This protocol, counting each connection it (or TlsHandshake) refuses, and each request it
        refuses itself, in `refusals`."""
        return type(cls.__name__, (cls,), {"refusals": refusals})

    def count_refusal(self, reason: str) -> None:
        """One more connection closed, or request refused, for `reason` (one of REFUSAL_REASONS or
        REQUEST_REFUSAL_REASONS)."""
        if self.refusals is not None:
            self.refusals[reason] += 1

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._tls = _tls_session(transport)
        self._begun = 0  # requests begun on this connection
        self._arriving = 0  # the number of the one begun and not yet whole; 0: none
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = False  # a request's URL and headers are arriving
        self._head_bytes = 0  # read since that request began, before the read that ends its head
        # Of those, what its first read held besides the URL and headers parsed by then: perhaps the
        # end of the request before it (pipelined, a body), so not counted while the head arrives.
        # (What the parser holds of a header not yet ended is counted from the next read on.)
        self._maybe_before_head = 0
        self._read_bytes = 0  # of the read being parsed
        self._head_overflowed = False  # a head found past HEAD_BYTES as it ended (on_headers_complete)
        self._head_refusal: Refusal | None = None  # of a head refused as it ended (on_headers_complete)
        self._head_checks = HeadChecks()
        # A chunk's size line was read and no data of it since: what follows is that chunk's data,
        # or the trailer section if it was the last (httptools does not say which). The reads
        # begun so are counted, and chunk data, which ends it, starts the count again.
        self._trailing = False
        self._trailer_bytes = 0
        self._stalled: asyncio.TimerHandle | None = None  # armed while the client takes no more of an answer
        self._close_after_answer = False  # shutting down: the running request is answered, then it closes
        self._sent_all = False  # the client closed its sending side (eof_received): it closes after the answers
        self._last: Refusal | None = None  # of what follows the running request, sent after its answer
        self._draining = False  # answered and closing: the rest of its request's body is read and dropped
        self._drained = 0  # bytes of it read meanwhile
        self._coalescing = _CoalescingTransport(transport, self.loop, self._lingers)
        super().connection_made(self._coalescing)
        if not self.admitted and self.refused(self.transport):
            return
        self.waits()
        self.flow = _QueueFirstFlow(self.transport, self.pipeline)
        # The first request has the keep-alive timeout to begin, as every later one has.
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def pause_writing(self) -> None:
        """The client stopped taking what is written: it has `request_seconds` to take it again."""
        super().pause_writing()
        if self._stalled is None:
            self._stalled = self.loop.call_later(self.request_seconds, self._not_reading)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_stalled()

    def _not_reading(self) -> None:
        """Drop a connection whose client took none of its answer in time: a close would wait for
        the held bytes to go out, and so hold them and the connection for ever."""
        self._stalled = None
        self.transport.abort()

    def _cancel_stalled(self) -> None:
        if self._stalled is not None:
            self._stalled.cancel()
            self._stalled = None

    def send_400_response(self, msg: str) -> None:
        """A request the HTTP parser cannot read: answered as every other bad request is, in AWS
        JSON (uvicorn answers plain text), and the connection closed. A URL too long for httptools
        to split (`_PARSED_URL_BYTES`) is a head past `HEAD_BYTES` that came in one read, so not
        counted while arriving: refused as the too large head it is, not as unreadable HTTP."""
        # `url` is set at each request's first byte; `_head_overflowed` by on_headers_complete.
        too_long = self._head_overflowed or len(getattr(self, "url", b"")) > _PARSED_URL_BYTES
        self._refuse_next(self._head_refusal or (_HEAD_TOO_LARGE if too_long else MALFORMED))

    def _refuse_next(self, refusal: Refusal) -> None:
        """Answer a request that will not be carried out with `refusal` and close the connection;
        after the answers of the requests before it if they still run (written now, the client
        would take it for theirs). Counted once, when it is decided."""
        if self._last is None and not self.transport.is_closing():
            self.count_refusal(refusal.reason)
        self._answer_next(refusal)

    def _answer_next(self, refusal: Refusal) -> None:
        """`_refuse_next` without counting: also for a refusal held until the answers before it."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and self.pipeline and self.pipeline[0][0] is cycle:
            self.pipeline.popleft()  # the refused request's body broke off while it was queued: never started
        elif cycle is None or cycle.more_body or cycle.response_complete:
            # None runs before it (a task waiting for the refused request's body is told the client is gone).
            if not self.transport.is_closing():
                self.transport.write(_stamped(refusal.answer))
            self.transport.close()
            return
        self._last = self._last or refusal
        self.flow.pause_reading()  # nothing more of this connection is served
        self._arriving, self._in_head = 0, False  # nothing more arrives to time out or count

    def refused(self, transport: asyncio.BaseTransport) -> bool:
        """Whether `transport`, a connection past `max_connections`, is closed at once, its file
        descriptor with it (counted); True if so. It is let in instead when another connection
        waits for a request (`unserved`): the one waiting longest is closed for it."""
        if self.max_connections is None or len(self.connections) <= self.max_connections:
            return False
        if self.unserved:
            self._log_at_limit("closing the connections that wait longest for a request to make room")
            self.unserved.popitem(last=False)[0].make_way()
            return False
        self._log_at_limit("refusing new connections")
        self.count_refusal("connection_limit")
        transport.close()
        return True

    def _log_at_limit(self, doing: str) -> None:
        """One warning a minute while the bound is reached, not one per connection."""
        now = time.monotonic()
        if now - CoalescingHttpToolsProtocol._refusals_logged_at >= _REFUSAL_LOG_SECONDS:
            CoalescingHttpToolsProtocol._refusals_logged_at = now
            log.warning("%s: %d are open, the most this node holds (its file descriptor limit less %d it keeps "
                        "for itself)", doing, self.max_connections, RESERVED_DESCRIPTORS)

    def waits(self) -> None:
        """This connection waits for a request to arrive whole from now, if it does not already."""
        if self.unserved is not None and self not in self.unserved:
            self.unserved[self] = None

    def _serves(self) -> None:
        """This connection has a request to run: it is not closed to make room."""
        if self.unserved is not None:
            self.unserved.pop(self, None)

    def make_way(self) -> None:
        """Close this connection, the one that has waited longest for a request, for a new one at
        the bound: a request arriving on it is answered that it was the slowest (a ThrottlingException,
        which SDKs retry), and is not carried out; an idle one just closes."""
        if self.transport.is_closing():  # leaving already (refused, answered and closing): it frees its place
            return
        self.count_refusal("connection_limit")
        if self._arriving and not self._draining:
            self.transport.write(_stamped(_MADE_WAY))
        self._draining = True  # already answered: the close is not put off to read the body on (`_lingers`)
        self.transport.close()  # a request task waiting for the body is told the client is gone

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._serves()  # it no longer waits
        self._unset_keepalive_if_required()  # uvicorn leaves it armed when the connection failed
        if self._deadline is not None:  # it holds the protocol, and with it the requests queued
            self._deadline.cancel()
            self._deadline = None
        self._arriving = 0
        self._cancel_stalled()

    def eof_received(self) -> bool:  # type: ignore[override]  # uvicorn's says None; asyncio reads a bool
        """The client closed its sending side (a TCP half-close: `shutdown(SHUT_WR)`, `nc -N`,
        socat's default) after requests that arrived whole: they are answered, then the connection
        closes, as the client sends no more; it still reads. uvicorn took the half-close for the
        client gone, so asyncio closed the connection: each such call was carried out, and
        audited, but its answer thrown away. A request still arriving can never end, and a
        connection with nothing to answer has no more use: both close now, as before. Over TLS
        the TLS layer closes the connection whatever is answered here (TlsHandshake)."""
        cycle = self.cycle
        answering = cycle is not None and not cycle.response_complete
        if self._tls is not None or self._arriving or self._in_head or not answering:
            return False  # closed: a request waiting for its body is told the client is gone
        self._sent_all = True
        return True

    def data_received(self, data: bytes) -> None:
        self._read_bytes = len(data)
        if self._trailing:
            self._trailer_bytes += len(data)
        # uvicorn's data_received, but for an upgrade: only a request asking for h2c gets that far
        # (on_headers_complete refuses any other), and what follows its head is read on as HTTP/1.1.
        self._unset_keepalive_if_required()
        rest = None
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._unreadable(error)
        except httptools.HttpParserUpgrade as upgrade:
            rest = data[upgrade.args[0]:]
        # Outside the except, so that a refusal's error does not take the upgrade as its context;
        # in a loop, not recursively, however many h2c requests a client pipelines in one read.
        while rest is not None:
            rest = self._read_on_as_http1(rest)
        # Only a request still incomplete after this data arms a timer: the usual one, whole in one
        # segment, costs a comparison.
        if self._arriving:
            if self._deadline is None:
                self._arm_deadline()
            if self._draining:
                self._drop(len(data))
        if self._in_head:
            if not self._head_bytes:  # it began in this read, which may end the request before it
                self._maybe_before_head = len(data) - _head_size(self.url, self.headers)
            self._head_bytes += len(data)
            if self._head_bytes - self._maybe_before_head > HEAD_BYTES and not self.transport.is_closing():
                self._refuse_next(_HEAD_TOO_LARGE)  # no task started: its headers never ended
        elif self._trailing and self._trailer_bytes > HEAD_BYTES and not self.transport.is_closing():
            self._refuse_trailer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0
        self._begun += 1
        self._arriving = self._begun
        if self._tls is not None:
            self.scope["extensions"] = {TLS_EXTENSION: self._tls}

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field of a chunked body: never merged into the headers (RFC 9110 §6.5.1)
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        # A head that ends in the read it began in (or in a later one) is not counted while
        # arriving: measured here, only when the reads could have held more than HEAD_BYTES of it,
        # so the same request is refused however TCP cut it.
        if self._head_bytes + self._read_bytes > HEAD_BYTES and _head_size(self.url, self.headers) > HEAD_BYTES:
            self._head_overflowed = True
            raise _HeadTooLarge  # httptools stops reading; uvicorn's send_400_response refuses it
        version = self.parser.get_http_version()
        # httptools' upgrade is CONNECT or Connection: Upgrade; one asking for h2c alone is served.
        refused_upgrade = self.parser.should_upgrade() and not asks_for_h2c(self.parser.get_method(), self.headers)
        self._head_refusal = self._head_checks.refusal(refused_upgrade, self.headers, version, self.url)
        if self._head_refusal is not None:  # before the app runs
            raise _HeadRefused
        self._in_head = False
        if version == "1.0":
            # RFC 9110 §10.1.1: a server MUST ignore a 100-continue expectation in an HTTP/1.0
            # request. uvicorn answered it `HTTP/1.1 100 Continue`, which an HTTP/1.0 client,
            # knowing no interim answers, read as the answer itself.
            self.expect_100_continue = False
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._trailing = False  # chunk data: the body's, bounded by the app
        super().on_body(body)

    def on_chunk_header(self) -> None:
        self._trailing, self._trailer_bytes = True, 0

    def on_chunk_complete(self) -> None:  # a chunk's data, or the trailer section, ended
        self._trailing = False

    def _refuse_trailer(self) -> None:
        """Refuse a request whose trailer section passed HEAD_BYTES, counted from the read after the
        one it began in (which holds at most one read more), as a head past it is refused. A request
        answered already (a 413 or a refusal before authentication, whose body is read on and
        dropped) is not answered again: its connection closes, as past DRAIN_BYTES."""
        self._trailing = False
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            self._draining = True  # so that the close is not put off to read on (`_lingers`)
            self.transport.close()
            return
        self._refuse_next(_TRAILER_TOO_LARGE)

    def _unreadable(self, error: httptools.HttpParserError) -> None:
        """uvicorn's answer to bytes the parser cannot read (its send_400_response, ours below), but
        for an HTTP version it cannot read, answered as one keytrail does not serve (505)."""
        self._head_refusal = self._head_refusal or parser_refusal(error)
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)

    def _read_on_as_http1(self, rest: bytes) -> bytes | None:
        """Serve the request asking for h2c as HTTP/1.1: httptools ended it at its head (its
        on_message_complete ran, with no body) and reads no more of the connection. The request is
        whole only once its body is, so that end is undone (its task has not run yet: this is the
        read that ended its head), and a fresh parser reads on from where the body begins, `rest`
        (the rest of this read), told the body's framing first (read as the client's bytes are, so
        that framing it cannot read is refused as theirs would be). Returns what follows the head of
        a next request asking for h2c in `rest`, if one does."""
        cycle = self.cycle
        assert cycle is not None  # the request's own, made by on_headers_complete
        cycle.more_body = True
        cycle.message_event.clear()
        self._arriving = self._begun
        self.parser = httptools.HttpRequestParser(_ReadingOn(self))
        framed = _framing_head(self.headers) + rest
        try:
            self.parser.feed_data(framed)
        except httptools.HttpParserError as error:
            self._unreadable(error)
        except httptools.HttpParserUpgrade as upgrade:
            return framed[upgrade.args[0]:]
        return None

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._arriving = 0
        self._serves()
        if self._draining:  # the refused body is read whole: nothing unread is left to reset the connection
            self._end_drain()

    def _lingers(self) -> bool:
        """Whether a close asked now waits for the rest of the request body, as it does once, for a
        request answered (and its connection closing: `connection: close`) while its body arrives.
        Closed now, the body's next bytes would find the socket closed and reset the connection,
        and a client still sending would see that, not the answer."""
        cycle = self.cycle
        if self._draining or not self._arriving or self._in_head or cycle is None:
            return False
        if not cycle.response_complete or cycle.keep_alive:
            return False
        self._draining = True
        cycle.body = bytearray()  # what arrived of it before the answer: nobody reads it now, so it holds no memory
        self.flow.resume_reading()  # paused while the body filled uvicorn's buffer before the answer
        return True

    def _drop(self, size: int) -> None:
        """`size` more bytes of the refused body were read (and dropped by uvicorn): past
        `DRAIN_BYTES`, close without waiting for the rest."""
        self._drained += size
        if self._drained > DRAIN_BYTES:
            self.transport.close()

    def _end_drain(self) -> None:
        """Close the connection the refused request's answer closed. A request pipelined behind it
        (parsed from the same read) must not start: there is no one left to answer it. Its cycle
        queues behind one that never completes, as behind any request still running."""
        assert self.cycle is not None
        self.cycle.response_complete = False
        self.transport.close()

    def shutdown(self) -> None:
        """Graceful shutdown (SIGTERM): a request still arriving is refused at once, not carried out
        (the SDKs retry a KMSInternalException); uvicorn would wait for its client until its shutdown
        timeout, then cancel the request task: a plain-text 500 and a traceback in the log. With
        requests queued behind a running one, the running one is answered, then the connection
        closes: the queued ones never start (the refusal would go out as the running one's answer)."""
        running_before = self._in_head and self.cycle is not None and not self.cycle.response_complete
        if self.pipeline or running_before:
            self.pipeline.clear()
            self._close_after_answer = True
            self._arriving, self._in_head = 0, False  # its deadline, if armed, finds nothing to time out
            self.flow.pause_reading()
            return
        if self._arriving and (self.cycle is None or not self.cycle.response_started):
            self.transport.write(_stamped(_STOPPING))
            self.transport.close()  # a request task waiting for the body is told the client is gone
            return
        super().shutdown()

    def on_response_complete(self) -> None:
        if self.answers_at_once:
            self._coalescing.flush()
        if self._close_after_answer:  # shutting down, the queued requests dropped: nothing more to serve
            self.transport.close()
            return
        if self._last is not None and not self.pipeline:  # the last request before the one refused
            last, self._last = self._last, None
            self._answer_next(last)  # counted when it was refused
            return
        queued = bool(self.pipeline)
        super().on_response_complete()  # starts the next queued request
        if self._sent_all and not queued:  # the client sends nothing more: its last answer is written
            self.transport.close()
            return
        if not queued and not self.transport.is_closing():
            self.waits()  # idle, or its next request arriving: nothing runs on it
        if queued and not self.pipeline and self._arriving and self._deadline is not None:
            # The last one queued starts and its connection is read again: the rest of its body has
            # its whole time from now, not what is left of a deadline that ran while it waited.
            self._deadline.cancel()
            self._arm_deadline()

    def _arm_deadline(self) -> None:
        """The request arriving now has `request_seconds` from now to arrive whole."""
        self._deadline = self.loop.call_later(self.request_seconds, self._overdue, self._arriving)

    def _overdue(self, request: int) -> None:
        """The deadline of request number `request`: answer 408 and close if it is still arriving."""
        self._deadline = None
        if self.transport.is_closing():  # its connection is ending: nothing more to wait for
            return
        if self._arriving != request:
            if self._arriving:  # a later request is arriving: it gets a deadline of its own
                self._arm_deadline()
            return
        if self.pipeline:  # queued behind a running request, its reading paused by this server, not its client
            self._arm_deadline()
            return
        if self._in_head:  # no task of its own: refused after the answers of the requests before it
            self._refuse_next(_OVERDUE)
            return
        if self.cycle is None or not self.cycle.response_started:  # the app may have answered already
            self.count_refusal("request_timeout")
            self.transport.write(_stamped(_OVERDUE.answer))
        self.transport.close()  # a request task waiting for the body is told the client is gone
