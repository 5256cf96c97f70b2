"""serve's HTTP server: over TLS, every connection counts against its bound from its accept, and a
handshake that never ends is dropped; and the servers of one process share one log filter. On
asyncio's loop and on uvloop (serve's), whose TLS is code of its own."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from keytrail.api.http_protocol import ClientNoiseFilter
from keytrail.cli import http_server
from keytrail.cli.http_server import HttpServer
from keytrail.cli.tls import self_signed_certificate
from keytrail.config import ServeSettings
from tests.support.waits import eventually

REQUEST = b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n"
Run = Callable[[Coroutine[Any, Any, None]], None]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    return uvloop.run if request.param == "uvloop" else asyncio.run


async def _not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})


@contextlib.asynccontextmanager
async def _tls_server(directory: Path, monkeypatch: pytest.MonkeyPatch,
                      refusals: Counter[str] | None = None) -> AsyncIterator[tuple[int, ssl.SSLContext]]:
    """An HttpServer over TLS holding at most two connections: its port, and a client's context."""
    monkeypatch.setattr(http_server, "connection_limit", lambda: 2)
    cert, key = self_signed_certificate(directory, "127.0.0.1")
    sock = socket.create_server(("127.0.0.1", 0))
    settings = ServeSettings(data_dir=directory, port=sock.getsockname()[1], tls_self_signed=True)
    server = HttpServer(_not_found, settings, {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}, refusals)
    server.load()
    serving = asyncio.get_running_loop().create_task(server.serve([sock]))
    await eventually(lambda: server._server.started, what="uvicorn listening")
    try:
        yield sock.getsockname()[1], ssl.create_default_context(cafile=str(cert))
    finally:
        server.request_stop()
        await asyncio.wait_for(serving, 10)


async def _https_answer(port: int, context: ssl.SSLContext) -> bytes:
    """The start of the answer to a GET on a new TLS connection; b"" if the server closed it first."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    except (ConnectionError, ssl.SSLError):  # closed during the handshake
        return b""
    try:
        writer.write(REQUEST)
        return await asyncio.wait_for(reader.read(12), 5)
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        writer.close()


def test_a_tls_connection_counts_against_the_bound_from_its_accept_before_its_handshake(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted only once their handshakes ended, connections that never began one took every file
    # descriptor. Counted from their accept, one waiting longest for its handshake makes way for a third.
    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]  # no ClientHello, ever
            await asyncio.sleep(0.1)
            assert await _https_answer(port, context) == b"HTTP/1.1 404"  # a third, in the first one's place
            assert await asyncio.wait_for(stalled[0][0].read(-1), 3) == b""  # dropped, its handshake not begun
            stalled[0][1].close()
            stalled[1][1].write(b"\x16\x03\x01")  # still held: a write finds it open
            await asyncio.sleep(0.1)
            assert not stalled[1][0].at_eof()
            stalled[1][1].close()

    run(case())


def test_a_tls_handshake_that_never_ends_is_dropped_after_the_handshake_timeout(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keytrail.api.tls_handshake import TlsHandshake

    monkeypatch.setattr(TlsHandshake, "handshake_seconds", 0.3)

    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
            assert await asyncio.wait_for(reader.read(-1), 3) == b""  # closed by the server
            writer.close()
            for _ in range(3):  # and the place it held is free again
                assert await _https_answer(port, context) == b"HTTP/1.1 404"

    run(case())


def test_a_tls_connection_is_served_request_after_request_and_a_stop_drops_a_handshake(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
            for _ in range(3):
                writer.write(REQUEST)
                assert (await asyncio.wait_for(reader.readuntil(b"{}"), 5)).startswith(b"HTTP/1.1 404 ")
            writer.close()
            stalled_reader, stalled = await asyncio.open_connection("127.0.0.1", port)
        # The server stopped without waiting for the handshake (its 10 s): it closed the connection.
        assert await asyncio.wait_for(stalled_reader.read(-1), 1) == b""
        stalled.close()

    run(case())


def test_each_connection_refused_is_counted_by_its_reason(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Refused connections were closed with one log line a minute at most, and no count in /metrics.
    from keytrail.api.tls_handshake import TlsHandshake

    monkeypatch.setattr(TlsHandshake, "handshake_seconds", 0.5)
    refusals: Counter[str] = Counter()

    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch, refusals) as (port, context):
            stalled = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]  # no ClientHello, ever
            await asyncio.sleep(0.1)
            assert await _https_answer(port, context) == b"HTTP/1.1 404"  # a third, in the first one's place
            for reader, writer in stalled:  # the first dropped for it, the second at its handshake's end
                assert await asyncio.wait_for(reader.read(-1), 3) == b""
                writer.close()
            assert await _sent_raw(port, REQUEST) == b"HTTP/1.1 400"  # plain HTTP on the TLS port
            assert await _sent_raw(port, b"\x16\x03\x01\x00\x04junk") == b""  # no ClientHello TLS can read
            await eventually(lambda: refusals["tls_handshake_failed"] == 1, what="the failed handshake counted")
            assert await _https_answer(port, context) == b"HTTP/1.1 404"  # served: not counted

    run(case())
    assert refusals == {"connection_limit": 1, "tls_handshake_timeout": 1, "plain_http_on_tls": 1,
                        "tls_handshake_failed": 1}


async def _sent_raw(port: int, data: bytes) -> bytes:
    """The start of what the server answers `data` sent on a new TCP connection, until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(12), 5)
    except ConnectionError:
        return b""
    finally:
        writer.close()


def test_the_servers_of_one_process_share_one_client_noise_filter(tmp_path: Path) -> None:
    logger = logging.getLogger("uvicorn.error")
    for _ in range(3):
        HttpServer(_not_found, ServeSettings(data_dir=tmp_path), {})
    assert [type(known) for known in logger.filters].count(ClientNoiseFilter) == 1


def test_a_node_with_the_audit_trail_writes_each_answer_at_once_and_one_without_holds_it(tmp_path: Path) -> None:
    # Audited answers complete when their group commit returns, behind the requests read meanwhile
    # (api/http_protocol.py says what each choice measured).
    audited = HttpServer(_not_found, ServeSettings(data_dir=tmp_path), {})
    unaudited = HttpServer(_not_found, ServeSettings(data_dir=tmp_path, audit=False), {})
    assert audited._server.config.http.answers_at_once  # type: ignore[union-attr]
    assert not unaudited._server.config.http.answers_at_once  # type: ignore[union-attr]


def test_a_tls_connection_admitted_at_its_accept_is_served_once_its_handshake_ends(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Counted again as its handshake ended, it was closed when connections refused at their accept
    # (closed, and gone from the count only a loop step later) filled the count meanwhile: under a
    # flood at the bound, uvloop's server finished most handshakes it admitted, then dropped them.
    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            outcomes = await asyncio.gather(*[_served_or_refused(port, context) for _ in range(60)])
            assert "dropped after its handshake" not in outcomes
            assert "served" in outcomes and "refused" in outcomes

    run(case())


async def _served_or_refused(port: int, context: ssl.SSLContext) -> str:
    """What became of a TLS connection: refused before its handshake ended, served, or dropped
    after its handshake without an answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=context), 5)
    except (ConnectionError, ssl.SSLError):
        return "refused"
    try:
        writer.write(REQUEST)
        answer = await asyncio.wait_for(reader.read(12), 5)
        await asyncio.sleep(0.2)  # held a while, as a client's connection is
    except (ConnectionError, ssl.SSLError):
        answer = b""
    finally:
        writer.close()
    return "served" if answer == b"HTTP/1.1 404" else "dropped after its handshake"


def _requests_with_the_last_handshake_message(port: int, context: ssl.SSLContext, requests: bytes) -> bytes:
    """A TLS 1.3 client that sends `requests` in the segment of its Finished message (before the
    server's HTTP protocol can have the connection), then reads the answers until they pause."""
    inbound, outbound = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(inbound, outbound, server_hostname="127.0.0.1")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                sock.sendall(outbound.read())
                inbound.write(sock.recv(65536))
        tls.write(requests)
        sock.sendall(outbound.read())
        answers = b""
        sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while data := sock.recv(65536):
                inbound.write(data)
                with contextlib.suppress(ssl.SSLWantReadError):
                    while chunk := tls.read(65536):
                        answers += chunk
        return answers


def test_requests_sent_with_the_last_handshake_message_are_each_answered(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # They reach the TLS layer before the HTTP protocol has the connection (asyncio's loop), and are
    # handed to it with the connection.
    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            answers = await asyncio.get_running_loop().run_in_executor(
                None, _requests_with_the_last_handshake_message, port, context, REQUEST * 2)
            assert answers.count(b"HTTP/1.1 404 ") == 2

    run(case())


def test_plain_http_sent_to_the_tls_port_is_answered_in_plain_http_saying_to_call_https(
        run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The handshake failed on it and the connection closed without a word: curl said "Empty reply
    # from server", and the aws CLI retried for 14 s, then "Connection was closed before we received
    # a valid response", neither saying that the endpoint URL should be https://.
    async def case() -> None:
        async with _tls_server(tmp_path, monkeypatch) as (port, context):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            answer = await asyncio.wait_for(reader.read(-1), 5)  # and closed
            writer.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"connection: close" in head
            assert b"x-amzn-requestid: " in head
            assert json.loads(body) == {"__type": "SerializationException", "message": (
                "The request was sent as plain HTTP to a port that serves HTTPS: use an https:// endpoint URL.")}
            assert await _https_answer(port, context) == b"HTTP/1.1 404"  # TLS clients are served as ever

    run(case())
