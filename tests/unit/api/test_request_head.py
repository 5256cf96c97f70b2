"""Requests refused for their head before the app runs (api/request_head.py): HTTP versions other than
1.x, transfer codings other than chunked, unmet expectations, a target naming another host. Driven
over a real socket against a real uvicorn server running the HTTP protocol."""

from __future__ import annotations

import asyncio
import json
import socket
from collections import Counter
from typing import Any

import pytest
import uvicorn

from keytrail.api.http_protocol import CoalescingHttpToolsProtocol
from tests.support.asgi import whole_body
from tests.support.waits import eventually

Seen = list[tuple[str, str, bytes]]  # each request the app ran: method, target path, whole body


async def _serve(seen: Seen, refused: Counter[str]) -> tuple[uvicorn.Server, int]:
    """A real uvicorn server over the protocol, counting its refusals in `refused`; the app notes
    each request it runs in `seen` and answers 200 once it has the whole body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await whole_body(receive)
        if body is None:
            return
        seen.append((scope["method"], scope["path"], body))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    sock = socket.create_server(("127.0.0.1", 0))
    protocol = CoalescingHttpToolsProtocol.counting_refusals(refused)
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="critical", lifespan="off"))
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, what="uvicorn listening")
    return server, int(sock.getsockname()[1])


async def _exchange(port: int, sent: bytes) -> bytes:
    """Send `sent`, then read until the server closes (or 5 s pass: `<still open>` ends the text)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), 5.0)
    except TimeoutError:
        return await reader.read(65536) + b"<still open>"
    finally:
        writer.close()


CHUNKED_BODY = b"\r\n2\r\n{}\r\n0\r\n\r\n"
# What follows each request below on its connection: served if the connection were kept open.
NEXT = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"


@pytest.mark.parametrize(("sent", "status", "code"), [
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n" + CHUNKED_BODY,
     b"501 Not Implemented", "NotImplemented"),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\ntransfer-encoding: chunked\r\n" + CHUNKED_BODY,
     b"501 Not Implemented", "NotImplemented"),
    (b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, gzip\r\n" + CHUNKED_BODY,
     b"400 Bad Request", "SerializationException"),
    (b"POST / HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n" + CHUNKED_BODY,
     b"400 Bad Request", "SerializationException"),
    (b"POST / HTTP/2.0\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}", b"505 HTTP Version Not Supported",
     "HttpVersionNotSupported"),
    (b"POST / HTTP/3.0\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}", b"505 HTTP Version Not Supported",
     "HttpVersionNotSupported"),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"505 HTTP Version Not Supported", "HttpVersionNotSupported"),
    (b"GET /\r\n\r\n", b"505 HTTP Version Not Supported", "HttpVersionNotSupported"),
    (b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 200-ok\r\ncontent-length: 2\r\n\r\n{}",
     b"417 Expectation Failed", "ExpectationFailed"),
    (b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-continue, 200-ok\r\ncontent-length: 2\r\n\r\n{}",
     b"417 Expectation Failed", "ExpectationFailed"),
    (b"POST http://elsewhere.example/ HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}",
     b"400 Bad Request", "SerializationException"),
    (b"POST / HTTP/1.1\r\nhost: x, y\r\ncontent-length: 2\r\n\r\n{}", b"400 Bad Request", "SerializationException"),
    (b"POST / HTTP/1.1\r\nhost: user@x\r\ncontent-length: 2\r\n\r\n{}", b"400 Bad Request", "SerializationException"),
    (b"POST / HTTP/1.1\r\nhost: x/y\r\ncontent-length: 2\r\n\r\n{}", b"400 Bad Request", "SerializationException"),
], ids=["gzip-chunked", "coding-per-line", "chunked-not-last", "http-1.0-chunked", "http-2.0", "http-3.0",
        "h2-preface", "http-0.9", "unknown-expectation", "expectation-among-100-continue", "absolute-other-host",
        "host-list", "host-userinfo", "host-path"])
async def test_a_request_framed_or_addressed_as_keytrail_cannot_serve_is_refused_and_its_connection_closed(
        sent: bytes, status: bytes, code: str) -> None:
    """RFC 9112 §6.1 (501 for a transfer coding not understood, 400 and close when chunked is not
    last or the request is HTTP/1.0), RFC 9110 §15.6.6 (505), §10.1.1 (417), RFC 9112 §3.2.2 (the
    target's host overrides Host), §3.2 (a Host that is no host and port). Each was served before,
    the coding or expectation ignored, as HTTP/1.1, or addressed to the Host header's host; or, for
    the versions the parser cannot read, answered as unreadable HTTP."""
    server, port = await _serve(seen := [], refused := Counter())
    try:
        answer = await _exchange(port, sent + NEXT)
    finally:
        server.should_exit = True
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 " + status + b"\r\n") and b"connection: close" in head.split(b"\r\n"), answer
    assert json.loads(body)["__type"] == code  # one answer, then the connection closed
    assert seen == [] and refused == {"malformed_http": 1}  # neither it nor the one behind it ran


@pytest.mark.parametrize("sent", [
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked \r\n" + CHUNKED_BODY,  # names are case-insensitive
    b"POST http://X:80/ HTTP/1.1\r\nhost: x:80\r\ncontent-length: 2\r\n\r\n{}",  # the target's host is Host's
    b"POST / HTTP/1.1\r\nhost: x\r\nexpect: 100-Continue\r\ncontent-length: 2\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nhost: x\r\nexpect:\r\ncontent-length: 2\r\n\r\n{}",  # no expectation at all
    b"POST / HTTP/1.1\r\nhost: [::1]:4599\r\ncontent-length: 2\r\n\r\n{}",
], ids=["chunked", "absolute-same-host", "100-continue", "empty-expect", "ipv6-host"])
async def test_requests_rfc_9112_allows_are_served_and_keep_their_connection(sent: bytes) -> None:
    server, port = await _serve(seen := [], refused := Counter())
    try:
        answer = await _exchange(port, sent + NEXT.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
    finally:
        server.should_exit = True
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2, answer
    assert seen == [("POST", "/", b"{}"), ("POST", "/", b"{}")] and refused == {}


async def test_an_http_1_0_request_is_served_its_expectation_ignored() -> None:
    """Expect is HTTP/1.1's: an HTTP/1.0 request's is ignored (RFC 9110 §10.1.1), not refused."""
    server, port = await _serve(seen := [], refused := Counter())
    try:
        answer = await _exchange(port, b"POST / HTTP/1.0\r\nexpect: 200-ok\r\ncontent-length: 2\r\n\r\n{}")
    finally:
        server.should_exit = True
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and seen == [("POST", "/", b"{}")] and refused == {}


@pytest.mark.parametrize(("behind", "status"), [
    (b"POST / HTTP/2.0\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}", b"505 "),
    (b"POST / HTTP/1.1\r\nhost: x y\r\ncontent-length: 2\r\n\r\n{}", b"400 "),  # another Host than the first's
], ids=["version", "host"])
async def test_a_refusal_behind_a_served_request_comes_after_its_answer(behind: bytes, status: bytes) -> None:
    server, port = await _serve(seen := [], refused := Counter())
    try:
        answer = await _exchange(port, NEXT + behind)
    finally:
        server.should_exit = True
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\n\r\n{}HTTP/1.1 " + status in answer, answer
    assert seen == [("POST", "/", b"{}")] and refused == {"malformed_http": 1}
