"""The coalescing transport under the HTTP protocol: one write per loop step, nothing lost or late."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import threading
import time
from collections import Counter
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from keytrail.api import http_protocol
from keytrail.api.http_protocol import HEAD_BYTES, CoalescingHttpToolsProtocol, _CoalescingTransport
from tests.support.asgi import whole_body
from tests.support.waits import eventually


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0


def _coalescing() -> tuple[_CoalescingTransport, FakeTransport]:
    inner = FakeTransport()
    return _CoalescingTransport(inner, asyncio.get_running_loop()), inner


async def test_a_response_head_and_body_leave_in_one_write_at_the_end_of_the_loop_step() -> None:
    transport, inner = _coalescing()
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert inner.writes == []
    assert transport.get_write_buffer_size() == 40
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"]


async def test_a_write_alone_in_its_step_still_leaves_before_the_next_step() -> None:
    transport, inner = _coalescing()
    transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    await asyncio.sleep(0)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0)
    assert inner.writes == [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"]


async def test_close_sends_what_was_written_before_it() -> None:
    transport, inner = _coalescing()
    transport.write(b"head")
    transport.write(b"body")
    transport.close()
    await asyncio.sleep(0)
    assert (inner.writes, inner.closed) == ([b"headbody"], True)


async def test_abort_drops_what_was_held() -> None:
    transport, inner = _coalescing()
    transport.write(b"head")
    transport.abort()
    await asyncio.sleep(0)
    assert (inner.writes, inner.aborted) == ([], True)


async def test_a_connection_lost_before_the_step_ends_takes_no_write() -> None:
    transport, inner = _coalescing()
    transport.write(b"head")
    inner.closed = True  # the peer went away; the real transport would raise on write
    await asyncio.sleep(0)
    assert inner.writes == []


# --- a request must arrive whole in time (slowloris) ---------------------------------------------

class _QuickDeadline(CoalescingHttpToolsProtocol):
    request_seconds = 0.3


async def _serve_echo(seen: list[str]) -> tuple[uvicorn.Server, int]:
    """A real uvicorn server over the protocol; the app answers 200 once it has the whole body and
    notes in `seen` how each request's body ended."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if await whole_body(receive) is None:
            seen.append("disconnect")
            return
        seen.append("whole")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=_QuickDeadline, log_level="critical", lifespan="off"))
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, what="uvicorn listening")
    return server, int(sock.getsockname()[1])


async def _exchange(port: int, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` (sleeping `pause` between them), then read until the server closes or 2 s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for index, part in enumerate(parts):
        if index:
            await asyncio.sleep(pause)
        writer.write(part)
        await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(-1), 2.0)
    except TimeoutError:
        return b"<still open>"
    finally:
        writer.close()


HEAD = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n"


async def test_a_request_whose_headers_never_end_gets_408_and_the_connection_closes() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        answer = await _exchange(port, HEAD)  # no blank line: the headers never end
        assert answer.startswith(b"HTTP/1.1 408 ") and b"RequestTimeoutException" in answer
        assert seen == []
    finally:
        server.should_exit = True


async def test_a_body_that_stops_coming_gets_408_and_the_request_is_not_carried_out() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        answer = await _exchange(port, HEAD + b"\r\n" + b"abc")  # 3 of 10 bytes
        assert answer.startswith(b"HTTP/1.1 408 ") and b"RequestTimeoutException" in answer
        await asyncio.sleep(0.05)
        assert seen == ["disconnect"]
    finally:
        server.should_exit = True


async def test_requests_that_arrive_whole_in_time_are_answered_and_keep_their_connection() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # The first request comes in two parts (a deadline is armed), whole well within it; the
        # connection then idles past that deadline and serves a second request.
        writer.write(HEAD + b"\r\nabcde")
        await asyncio.sleep(0.05)
        writer.write(b"fghij")
        first = await reader.readuntil(b"{}")
        await asyncio.sleep(0.5)
        writer.write(HEAD + b"\r\n0123456789")
        second = await reader.readuntil(b"{}")
        writer.close()
        assert first.startswith(b"HTTP/1.1 200 ") and second.startswith(b"HTTP/1.1 200 ")
        assert seen == ["whole", "whole"]
    finally:
        server.should_exit = True


# --- a request's URL and headers are bounded ------------------------------------------------------

def _filler(size: int, name: bytes = b"x-filler") -> bytes:
    return name + b": " + b"a" * size + b"\r\n"


async def test_headers_past_the_byte_limit_get_431_and_the_request_is_never_carried_out() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        # No end of headers needed; the parser hands a header on once the next one begins.
        oversized = HEAD + _filler(8000) * (HEAD_BYTES // 8000 + 2)
        answer = await _exchange(port, oversized)
        assert answer.startswith(b"HTTP/1.1 431 ") and b"RequestHeaderFieldsTooLarge" in answer
        assert answer.endswith(b"}")  # one answer, then the connection closed
        assert seen == []
    finally:
        server.should_exit = True


async def test_headers_past_the_byte_limit_get_431_however_the_reads_cut_them() -> None:
    """A head past HEAD_BYTES that ended within the read it began in, or in a read after one under
    the limit, was counted only while incomplete after a read: it reached the app (a 403 through
    serve), where the same bytes cut otherwise got 431."""
    server, port = await _serve_echo(seen := [])
    try:
        whole = HEAD + _filler(HEAD_BYTES + 1000) + b"\r\n0123456789"
        cut = HEAD_BYTES - 2000  # under the limit, then the rest of the head with its end
        for parts in ((whole,), (whole[:cut], whole[cut:])):
            answer = await _exchange(port, *parts, pause=0.2)
            assert answer.startswith(b"HTTP/1.1 431 ") and b"RequestHeaderFieldsTooLarge" in answer
            assert answer.endswith(b"}")  # one answer, then the connection closed
        assert seen == []
    finally:
        server.should_exit = True


async def test_a_head_begun_behind_a_large_body_in_the_same_read_is_not_refused_as_too_large() -> None:
    """The read a head began in was counted whole towards it: the body of the request before it
    (pipelined) made a small head that did not end in that read a 431."""
    server, port = await _serve_echo(seen := [])
    try:
        body = b"b" * (HEAD_BYTES + 10_000)
        first = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        second = HEAD + b"\r\n0123456789"
        answer = await _exchange(port, first + second[:20], second[20:] + b"GET / HTTP/1.1\r\nhost: x\r\n"
                                 b"connection: close\r\n\r\n", pause=0.2)
        assert answer.count(b"HTTP/1.1 200 ") == 3, answer
        assert seen == ["whole", "whole", "whole"]
    finally:
        server.should_exit = True


async def test_a_head_begun_behind_a_large_body_that_grows_past_the_limit_still_gets_431() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        body = b"b" * (HEAD_BYTES + 10_000)
        first = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        growing = _filler(8000) * (HEAD_BYTES // 8000 + 2)  # no end of headers
        answer = await _exchange(port, first + HEAD, growing, pause=0.2)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"}"), answer
        assert b"HTTP/1.1 431 " in answer and b"RequestHeaderFieldsTooLarge" in answer
        assert seen == ["whole"]
    finally:
        server.should_exit = True


async def test_each_request_on_a_connection_has_the_whole_budget_and_a_large_one_under_it_is_served() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        large = HEAD + _filler(HEAD_BYTES - 1000) + b"\r\n0123456789"  # near the limit, under it
        answers = []
        for _ in range(2):  # together over the limit: the count starts again with each request
            writer.write(large)
            answers.append(await reader.readuntil(b"{}"))
        writer.close()
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers)
        assert seen == ["whole", "whole"]
    finally:
        server.should_exit = True


# --- when an answer leaves ------------------------------------------------------------------------

async def _answer_read_before_the_step_ends(protocol: type[CoalescingHttpToolsProtocol], wait: float) -> bool:
    """Serve one request whose app, once its answer is sent, holds the loop step for up to `wait`
    seconds, until a client thread has read the answer: whether the client read it in that time."""
    received = threading.Event()
    read_in_step: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        read_in_step.append(received.wait(wait))  # blocks the loop: this step lasts until then

    def client(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            if connection.recv(4096).startswith(b"HTTP/1.1 200"):
                received.set()

    server, port = await _serve(app, protocol)
    try:
        await asyncio.to_thread(client, port)
    finally:
        server.should_exit = True
    return read_in_step == [True]


async def test_an_answer_is_held_to_the_end_of_its_loop_step_unless_the_protocol_answers_at_once() -> None:
    assert not await _answer_read_before_the_step_ends(CoalescingHttpToolsProtocol, wait=0.3)
    assert await _answer_read_before_the_step_ends(CoalescingHttpToolsProtocol.answering_at_once(), wait=10.0)


# --- what a connection may hold: time, and requests queued --------------------------------------

class _Counted(_QuickDeadline):
    """Notes the most requests any connection had queued behind the one being served."""

    most_queued = 0

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        _Counted.most_queued = max(_Counted.most_queued, len(self.pipeline))


async def _serve(app: Any, protocol: type[CoalescingHttpToolsProtocol] = _Counted,
                 **config: Any) -> tuple[uvicorn.Server, int]:
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=protocol, log_level="critical", lifespan="off", **config))
    asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    await eventually(lambda: server.started, what="uvicorn listening")
    return server, int(sock.getsockname()[1])


async def _not_found(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})


def _protocols_alive() -> list[object]:
    gc.collect()
    return [thing for thing in gc.get_objects() if isinstance(thing, _Counted)]


async def test_a_connection_that_never_sends_a_byte_is_closed_after_the_keep_alive_timeout() -> None:
    server, port = await _serve(_not_found, timeout_keep_alive=0.2)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(-1), 2.0) == b""  # closed by the server, no answer
        writer.close()
    finally:
        server.should_exit = True


async def test_a_connection_dropped_mid_request_leaves_nothing_behind_once_its_deadline_passes() -> None:
    server, port = await _serve(_not_found)
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(HEAD)  # a request begun: its deadline is armed
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
        await asyncio.sleep(2 * _QuickDeadline.request_seconds)  # the deadline kept re-arming itself
        assert _protocols_alive() == []
    finally:
        server.should_exit = True


async def _half_closed(port: int, sent: bytes) -> bytes:
    """Send `sent`, close the sending side (`shutdown(SHUT_WR)`), and read until the server closes
    or 2 s pass."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(sent)
    writer.write_eof()
    try:
        return await asyncio.wait_for(reader.read(-1), 2.0)
    except TimeoutError:
        return b"<still open>"
    finally:
        writer.close()


async def test_requests_sent_whole_before_a_half_close_are_answered_then_the_connection_closes() -> None:
    # The client sends no more but still reads (`nc -N`, socat): the half-close was taken for the
    # client gone, and each call was carried out with its answer thrown away.
    server, port = await _serve(_slow_echo)
    try:
        request = HEAD + b"\r\n0123456789"
        answer = await _half_closed(port, request + request)
        assert answer.count(b"HTTP/1.1 200 ") == 2 and answer.endswith(b"{}")  # then closed, not kept alive
    finally:
        server.should_exit = True


async def test_a_half_close_in_the_middle_of_a_body_closes_the_connection_and_nothing_runs() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        assert await _half_closed(port, HEAD + b"\r\nabc") == b""  # 3 of 10 bytes: the body can never end
        await eventually(lambda: seen == ["disconnect"], what="the request told its client is gone")
    finally:
        server.should_exit = True


async def test_an_http_1_0_request_expecting_100_continue_gets_its_answer_alone() -> None:
    # RFC 9110 §10.1.1: the expectation is ignored in HTTP/1.0; an interim `100 Continue` before
    # the answer is read by an HTTP/1.0 client as the answer itself.
    server, port = await _serve_echo(seen := [])
    try:
        head = b"POST / HTTP/1.0\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n"
        answer = await _exchange(port, head, b"0123456789", pause=0.05)
        assert answer.startswith(b"HTTP/1.1 200 ") and b"100 Continue" not in answer
        assert seen == ["whole"]
        head_1_1 = head.replace(b"HTTP/1.0", b"HTTP/1.1").replace(b"host: x", b"host: x\r\nconnection: close")
        http_1_1 = await _exchange(port, head_1_1, b"0123456789", pause=0.05)
        assert http_1_1.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")  # as before
    finally:
        server.should_exit = True


async def test_requests_pipelined_faster_than_they_are_answered_are_not_read_ahead() -> None:
    async def slow(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            while (await receive()).get("more_body"):
                pass
            await asyncio.sleep(0.005)
            await _not_found(scope, receive, send)

    server, port = await _serve(slow)
    _Counted.most_queued = 0
    try:
        body = b"x" * 20_000
        request = b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request * 100)  # 2 MB sent at once
        for _ in range(100):
            await asyncio.wait_for(reader.readuntil(b"{}"), 5.0)
        writer.close()
        # One read holds at most ~13 of them; uvicorn read on after every answer and queued all 100.
        assert 0 < _Counted.most_queued < 40
    finally:
        server.should_exit = True


async def test_a_connection_past_the_limit_is_closed_at_once_while_every_one_runs_a_request() -> None:
    release = asyncio.Event()

    async def held_until_released(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await release.wait()
            await _not_found(scope, receive, send)

    refusals: Counter[str] = Counter()
    server, port = await _serve(held_until_released, _Patient.limited_to(2).counting_refusals(refusals))
    request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    try:
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, held_writer in held:  # each runs a request: none may be closed for a newcomer
            held_writer.write(request)
        await eventually(lambda: len(server.server_state.tasks) == 2, what="both requests running")
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(reader.read(-1), 2.0) == b""  # closed, no answer
        writer.close()
        release.set()
        for held_reader, _ in held:  # the two held are answered
            assert (await asyncio.wait_for(held_reader.readuntil(b"{}"), 2.0)).startswith(b"HTTP/1.1 404 ")
        held[0][1].close()
        await asyncio.sleep(0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        assert (await asyncio.wait_for(reader.readuntil(b"{}"), 2.0)).startswith(b"HTTP/1.1 404 ")
        writer.close()
        held[1][1].close()
    finally:
        server.should_exit = True
    assert refusals == {"connection_limit": 1}


async def test_at_the_limit_a_new_connection_takes_the_place_of_the_one_waiting_longest_for_a_request() -> None:
    """Slow clients (a byte of a head now and then, slowloris) held every place until their
    deadline: past the limit every other client was refused. The one waiting longest now makes
    way: a request arriving on it is answered ThrottlingException (SDKs retry it), an idle one closes."""
    refusals: Counter[str] = Counter()
    server, port = await _serve(_not_found, _Patient.limited_to(3).counting_refusals(refusals))
    request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
    try:
        slow = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, slow_writer in slow:
            slow_writer.write(b"GET / HTTP/1.1\r\nho")  # and never more
        served = await asyncio.open_connection("127.0.0.1", port)  # served, then idle: it waits again
        served[1].write(request)
        assert (await asyncio.wait_for(served[0].readuntil(b"{}"), 2.0)).startswith(b"HTTP/1.1 404 ")
        newcomers = []  # each served, then idle: waiting for less long than those before it
        for newcomer in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            newcomers.append(writer)
            writer.write(request)
            assert (await asyncio.wait_for(reader.readuntil(b"{}"), 2.0)).startswith(b"HTTP/1.1 404 ")
            if newcomer < 2:  # the slow ones, oldest first, each answered and closed
                made_way = await asyncio.wait_for(slow[newcomer][0].read(-1), 2.0)
                head, _, body = made_way.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head
                assert json.loads(body)["__type"] == "ThrottlingException"
            else:  # then the one served and idle since: closed without a word
                assert await asyncio.wait_for(served[0].read(-1), 2.0) == b""
        for writer in newcomers:
            writer.close()
    finally:
        server.should_exit = True
    assert refusals == {"connection_limit": 3}


def test_the_connection_limit_keeps_descriptors_for_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol.resource, "getrlimit", lambda kind: (1024, 4096))
    assert http_protocol.connection_limit() == 1024 - http_protocol.RESERVED_DESCRIPTORS
    monkeypatch.setattr(http_protocol.resource, "getrlimit", lambda kind: (100, 100))
    assert http_protocol.connection_limit() == 16


async def test_a_url_too_long_for_the_parser_arriving_in_one_read_gets_431_not_400() -> None:
    """httptools cannot split a URL past 65,535 bytes: a head holding one, if it came in one read
    (not counted against HEAD_BYTES while arriving), was answered as unreadable HTTP."""
    server, port = await _serve(_not_found)
    try:
        answer = await _exchange(port, b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 431 ") and b"RequestHeaderFieldsTooLarge" in answer
    finally:
        server.should_exit = True


async def test_a_request_the_parser_cannot_read_gets_an_aws_json_400_and_the_connection_closes() -> None:
    server, port = await _serve(_not_found)
    try:
        for garbage in (b"\x00\x01\xff\r\n\r\n", b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: abc\r\n\r\n"):
            answer = await _exchange(port, garbage)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head
            assert json.loads(body) == {"__type": "SerializationException",
                                        "message": "The request is not valid HTTP/1.1."}
    finally:
        server.should_exit = True


H2C = (b"POST / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
       b"http2-settings: AAEAAEAAAAIAAAABAAMAAABkAAQBAAAAAAUAAEAA\r\n")  # what Java's HttpClient sends on http://


async def _serve_bodies(bodies: list[bytes], refused: Counter[str]) -> tuple[uvicorn.Server, int]:
    """A real uvicorn server over the protocol, counting refusals in `refused`; the app notes each request's
    whole body in `bodies` and answers it with its length."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await whole_body(receive)
        if body is None:
            return
        bodies.append(body)
        answer = str(len(body)).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    return await _serve(app, _Counted.counting_refusals(refused))


def _answers(stream: bytes) -> list[tuple[bytes, bytes]]:
    """The status lines and bodies of the answers read from a connection (bodies with content-length)."""
    answers = []
    while stream.startswith(b"HTTP/1.1 "):
        head, _, rest = stream.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        answers.append((head.split(b"\r\n")[0], rest[:length]))
        stream = rest[length:]
    assert stream == b"", stream
    return answers


@pytest.mark.parametrize(("framing", "body_parts"), [
    (b"content-length: 10\r\n", [b"0123456789"]),
    (b"content-length: 10\r\n", [b"0123", b"456789"]),  # the body split across reads
    (b"transfer-encoding: chunked\r\n", [b"4\r\n0123\r\n", b"6\r\n456789\r\n0\r\n\r\n"]),
], ids=["content-length", "split", "chunked"])
async def test_a_request_asking_to_switch_to_h2c_is_served_over_http_1_1_with_its_body(
        framing: bytes, body_parts: list[bytes]) -> None:
    """`curl --http2` on http:// (Java's HttpClient, Ktor too) sends `Connection: Upgrade, HTTP2-Settings`
    and `Upgrade: h2c`: httptools ended the request at its headers, so the app ran it with an
    empty body (a signed call failed its signature; under --dev-credentials a CreateKey ran with
    no parameters), and was then refused whole (400). RFC 9110 §7.8: the server may ignore the
    Upgrade, and answers in HTTP/1.1, as it would without it; a request pipelined behind is served."""
    server, port = await _serve_bodies(bodies := [], refused := Counter())
    try:
        pipelined = HEAD + b"\r\nabcdefghij"
        last = HEAD + b"connection: close\r\n\r\n"
        parts = [H2C + framing + b"\r\n", *body_parts[:-1], body_parts[-1] + pipelined + last]
        stream = await _exchange(port, *parts, b"klmnopqrst", pause=0.05)
        assert _answers(stream) == [(b"HTTP/1.1 200 OK", b"10")] * 3
        assert b"upgrade" not in stream.lower() and b" 101 " not in stream
        assert bodies == [b"0123456789", b"abcdefghij", b"klmnopqrst"]
        assert refused == {}
    finally:
        server.should_exit = True


async def test_a_request_asking_for_h2c_with_no_body_is_served_and_the_one_behind_it_too() -> None:
    server, port = await _serve_bodies(bodies := [], Counter())
    try:
        get = H2C.replace(b"POST", b"GET") + b"\r\n"
        stream = await _exchange(port, get + HEAD + b"connection: close\r\n\r\n0123456789")
        assert _answers(stream) == [(b"HTTP/1.1 200 OK", b"0"), (b"HTTP/1.1 200 OK", b"10")]
        assert bodies == [b"", b"0123456789"]
    finally:
        server.should_exit = True


async def test_h2c_requests_queued_behind_others_in_one_read_are_each_served_however_many() -> None:
    """Each h2c request restarts the parser after its head: a connection pipelining thousands in
    one read is read on in a loop (a recursion per request would hit Python's limit)."""
    server, port = await _serve_bodies(bodies := [], refused := Counter())
    try:
        h2c = H2C + b"content-length: 2\r\n\r\nab"
        stream = await _exchange(port, HEAD + b"\r\n0123456789" + h2c * 3000 + HEAD + b"connection: close\r\n\r\n"
                                 + b"0123456789")
        assert _answers(stream) == [(b"HTTP/1.1 200 OK", b"10")] + [(b"HTTP/1.1 200 OK", b"2")] * 3000 + [
            (b"HTTP/1.1 200 OK", b"10")]
        assert bodies == [b"0123456789"] + [b"ab"] * 3000 + [b"0123456789"] and refused == {}
    finally:
        server.should_exit = True


async def test_an_h2c_request_whose_body_stops_coming_gets_408_and_is_not_carried_out() -> None:
    server, port = await _serve_bodies(bodies := [], refused := Counter())
    try:
        answer = await _exchange(port, H2C + b"content-length: 10\r\n\r\n012")
        assert answer.startswith(b"HTTP/1.1 408 ") and bodies == []
        assert refused == {"request_timeout": 1}
    finally:
        server.should_exit = True


async def test_what_cannot_be_served_after_an_h2c_request_gets_400_after_its_answer() -> None:
    server, port = await _serve_bodies(bodies := [], refused := Counter())
    try:
        stream = await _exchange(port, H2C + b"content-length: 2\r\n\r\nab" + b"\x00\x01\xff\r\n\r\n")
        assert [status for status, _ in _answers(stream)] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
        assert bodies == [b"ab"] and refused == {"malformed_http": 1}
        stream = await _exchange(port, H2C + b"\r\n" + b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n\r\n")
        assert [status for status, _ in _answers(stream)] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
        assert refused == {"malformed_http": 1, "protocol_upgrade": 1}
    finally:
        server.should_exit = True


@pytest.mark.parametrize("request_head", [
    b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\n",
    b"GET / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\n",
    b"POST / HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: h2c, websocket\r\n",
    b"CONNECT x:443 HTTP/1.1\r\nhost: x:443\r\nconnection: Upgrade\r\nupgrade: h2c\r\n",
], ids=["connect", "websocket", "h2c-among-others", "connect-h2c"])
async def test_a_request_asking_to_switch_to_another_protocol_is_refused_before_the_app_runs(
        request_head: bytes) -> None:
    """keytrail has no protocol but HTTP/1.1 to switch to, and httptools would leave the body unread."""
    server, port = await _serve_bodies(bodies := [], refused := Counter())
    try:
        answer = await _exchange(port, request_head + b"content-length: 10\r\n\r\n0123456789" + HEAD + b"\r\n")
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 ") and b"connection: close" in head
        assert json.loads(body)["message"].startswith("keytrail serves HTTP/1.1 and switches to no other protocol")
        assert answer.count(b"x-amzn-requestid: ") == 1 and bodies == []  # neither it nor the one behind it was run
        assert refused == {"protocol_upgrade": 1}
    finally:
        server.should_exit = True


async def test_a_request_naming_two_hosts_is_refused_and_trailer_fields_never_join_the_headers() -> None:
    """RFC 9112 §3.2: more than one Host MUST be answered 400 (both signed, they were taken joined);
    RFC 9110 §6.5.1: a chunked body's trailer fields are not header fields (one arriving in the same
    read was added to them, where the app read the request's headers, User-Agent included)."""
    headers_seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers_seen.append(list(scope["headers"]))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})

    server, port = await _serve(app)
    try:
        for hosts in (b"host: x\r\nhost: y\r\n", b""):  # two, or none (RFC 9112 §3.2, both)
            answer = await _exchange(port, b"POST / HTTP/1.1\r\n" + hosts + b"content-length: 0\r\n\r\n")
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["message"] == (
                "The request must have exactly one Host header.")
        assert headers_seen == []
        chunked = (b"POST / HTTP/1.1\r\nhost: x\r\nuser-agent: real\r\ntransfer-encoding: chunked\r\n"
                   b"connection: close\r\n\r\n2\r\n{}\r\n0\r\nuser-agent: forged\r\n\r\n")
        assert (await _exchange(port, chunked)).startswith(b"HTTP/1.1 200 ")
        [seen] = headers_seen
        assert [value for name, value in seen if name == b"user-agent"] == [b"real"]
    finally:
        server.should_exit = True


async def test_the_protocols_own_refusals_carry_a_request_id_of_their_own_and_the_error_type() -> None:
    """As the app's answers do: an SDK shows the id and reads the type, and a support question
    starts from the id."""
    server, port = await _serve_echo([])
    try:
        answers = [await _exchange(port, b"\x00\x01\xff\r\n\r\n"), await _exchange(port, b"\x00\x01\xff\r\n\r\n"),
                   await _exchange(port, HEAD)]  # the last one's headers never end: 408
        heads = [answer.partition(b"\r\n\r\n")[0].split(b"\r\n") for answer in answers]
        ids = [line for head in heads for line in head if line.startswith(b"x-amzn-requestid: ")]
        assert len(set(ids)) == 3
        assert [head[0][:12] for head in heads] == [b"HTTP/1.1 400", b"HTTP/1.1 400", b"HTTP/1.1 408"]
        assert b"x-amzn-errortype: SerializationException" in heads[0]
        assert b"x-amzn-errortype: RequestTimeoutException" in heads[2]
    finally:
        server.should_exit = True


async def test_a_client_that_takes_none_of_a_large_answer_is_dropped_after_the_deadline() -> None:
    async def large(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            body = b"x" * 8_000_000  # more than the socket buffers take
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

    server, port = await _serve(large)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port))
        sock.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")  # and never read
        await asyncio.sleep(0.3 + 4 * _QuickDeadline.request_seconds)
        assert _protocols_alive() == []  # the connection and the answer held for it are gone
        sock.close()
    finally:
        server.should_exit = True


def test_uvicorn_warnings_about_what_clients_send_are_logged_once_a_minute() -> None:
    noise = http_protocol.ClientNoiseFilter()

    def record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, __file__, 1, message, None, None)

    assert [noise.filter(record("Invalid HTTP request received.")) for _ in range(1000)].count(True) == 1
    assert noise.filter(record("Unsupported upgrade request."))  # each message once
    assert all(noise.filter(record("Exception in ASGI application", logging.ERROR)) for _ in range(3))
    noise.seconds = 0.0  # a minute later
    assert noise.filter(record("Invalid HTTP request received."))


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_a_431_is_not_logged_as_invalid_http_nor_takes_the_400s_line() -> None:
    # A head past HEAD_BYTES that ends in the read it began in is stopped from on_headers_complete,
    # and uvicorn logged "Invalid HTTP request received." for it: a 431 named as unreadable HTTP,
    # which took that line's slot for a minute, so a malformed request after it left no line.
    config = uvicorn.Config(_not_found, http=CoalescingHttpToolsProtocol, lifespan="off", log_level="warning")
    config.load()
    logger, lines = logging.getLogger("uvicorn.error"), _Lines()
    kept = logger.filters[:], logger.level
    logger.filters[:] = [http_protocol.ClientNoiseFilter()]
    logger.setLevel(logging.WARNING)
    logger.addHandler(lines)
    answers: list[tuple[bytes, list[str]]] = []
    try:
        for request in (HEAD + _filler(HEAD_BYTES) + b"\r\n", b"\x00\x01\xff\r\n\r\n"):
            protocol = CoalescingHttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
            protocol.connection_made(transport := FakeTransport())
            protocol.data_received(request)  # whole in one read
            await asyncio.sleep(0)
            answers.append((b"".join(transport.writes).split(b"\r\n")[0], lines.lines[:]))
            protocol.connection_lost(None)
    finally:
        logger.removeHandler(lines)
        logger.filters[:], _ = kept
        logger.setLevel(kept[1])
    assert answers == [(b"HTTP/1.1 431 Request Header Fields Too Large", []),  # counted, as a 408 is
                       (b"HTTP/1.1 400 Bad Request", ["Invalid HTTP request received."])]


# --- a request queued behind another is not the client's delay ------------------------------------

async def _slow_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body, then answers 200 after twice the request deadline."""
    if scope["type"] == "http":
        while (await receive()).get("more_body"):
            pass
        await asyncio.sleep(2 * _QuickDeadline.request_seconds)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})


async def _pipelined_with_the_second_body_in_two_parts(port: int) -> tuple[asyncio.StreamReader, Any]:
    """Request one whole, then request two whose body's second half is sent once the server read the
    first: request two is queued, and its reading paused, while request one runs."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"\r\n0123456789" + HEAD + b"\r\nabcde")
    await asyncio.sleep(0.05)
    writer.write(b"fghij")
    return reader, writer


async def test_a_request_queued_behind_a_slow_one_is_not_timed_out_for_the_body_the_server_did_not_read() -> None:
    # Its deadline ran while the server held its reading paused: a 408 went out, as the first
    # request's answer, and the connection closed, though both requests had arrived in time.
    server, port = await _serve(_slow_echo)
    try:
        reader, writer = await _pipelined_with_the_second_body_in_two_parts(port)
        answers = [await asyncio.wait_for(reader.readuntil(b"{}"), 5.0) for _ in range(2)]
        writer.close()
        assert all(answer.startswith(b"HTTP/1.1 200 ") for answer in answers), answers
    finally:
        server.should_exit = True


async def test_sigterm_with_a_request_queued_answers_the_running_one_and_never_runs_the_queued_one() -> None:
    # The queued request was still arriving, so shutdown wrote 'The server is shutting down; the
    # request was not carried out. Retry it.' as the answer to the running one, which was carried out.
    seen: list[str] = []

    async def noted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append("started")
        await _slow_echo(scope, receive, send)

    server, port = await _serve(noted)
    reader, writer = await _pipelined_with_the_second_body_in_two_parts(port)
    server.should_exit = True
    answer = await asyncio.wait_for(reader.readuntil(b"}"), 5.0)  # then closed (with the unread body: reset)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"{}"), answer
    await asyncio.sleep(0.05)
    assert seen == ["started"]


@pytest.mark.parametrize(("behind", "status", "code"), [
    (b"\x00\x01\xff\r\n\r\n", b"400", b"SerializationException"),  # bytes that are not HTTP
    (HEAD + _filler(8000) * (HEAD_BYTES // 8000 + 2), b"431", b"RequestHeaderFieldsTooLarge"),
    (HEAD, b"408", b"RequestTimeoutException"),  # headers that never end
], ids=["not-http", "head-too-large", "head-never-ends"])
async def test_a_bad_request_behind_a_running_one_is_refused_after_its_answer(
    behind: bytes, status: bytes, code: bytes,
) -> None:
    # The refusal went out at once, as the running request's answer (carried out all the same).
    server, port = await _serve(_slow_echo)
    try:
        answer = await _exchange(port, HEAD + b"\r\n0123456789" + behind)
        first, _, second = answer.partition(b"{}")
        assert first.startswith(b"HTTP/1.1 200 "), answer
        assert second.startswith(b"HTTP/1.1 " + status + b" ") and code in second, answer
    finally:
        server.should_exit = True


async def test_a_chunked_body_that_breaks_off_is_answered_400_at_once_and_its_request_told_the_client_is_gone() -> None:
    server, port = await _serve_echo(seen := [])
    try:
        broken = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n"
        answer = await _exchange(port, broken)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"SerializationException" in answer, answer
        await asyncio.sleep(0.05)
        assert seen == ["disconnect"]
    finally:
        server.should_exit = True


async def test_sigterm_with_headers_arriving_behind_a_running_request_answers_it_first() -> None:
    server, port = await _serve(_slow_echo)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(HEAD + b"\r\n0123456789" + HEAD)  # the second request's headers never end
    await asyncio.sleep(0.05)
    server.should_exit = True
    answer = await asyncio.wait_for(reader.read(-1), 5.0)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"{}"), answer


class _Patient(CoalescingHttpToolsProtocol):
    """The deadline far off: these requests are whole in time, however busy the machine."""

    request_seconds = 30.0


_REFUSED: list[str] = []  # the path of each request _refusing got


async def _refusing(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 413 and closes before reading the body, as KmsApp does for a body over its limit;
    notes each request it gets."""
    if scope["type"] == "http":
        _REFUSED.append(scope["path"])
        body = b'{"__type":"SerializationException"}'
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-length", b"%d" % len(body)), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _send_whole_then_read(port: int, head: bytes, body_size: int, after: bytes = b"") -> bytes:
    """As http.client does: the whole request written before a byte of the answer is read; then
    everything read until the server closes. Raises ConnectionError if the connection is reset."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + b"content-length: %d\r\n\r\n" % body_size)
        chunk = b"x" * 65536
        for _ in range(body_size // len(chunk)):
            sock.sendall(chunk)
        sock.sendall(b"x" * (body_size % len(chunk)) + after)
        answer = b""
        while data := sock.recv(65536):
            answer += data
        return answer


@pytest.mark.parametrize("connection", [b"", b"connection: close\r\n"])
async def test_a_client_sending_its_whole_body_before_reading_gets_the_early_answer_not_a_reset(
        connection: bytes) -> None:
    # Closed at once, the connection was reset by the body's next bytes: http.client (which sends
    # `connection: close`) saw `Connection reset by peer` instead of the 413.
    server, port = await _serve(_refusing, _Patient)
    try:
        head = b"POST / HTTP/1.1\r\nhost: x\r\n" + connection
        answer = await asyncio.to_thread(_send_whole_then_read, port, head, 8_000_000)
        assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b'{"__type":"SerializationException"}')
    finally:
        server.should_exit = True


async def test_a_request_pipelined_behind_a_refused_body_is_never_carried_out() -> None:
    _REFUSED.clear()
    server, port = await _serve(_refusing, _Patient)
    try:
        behind = b"POST /behind HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}"
        answer = await asyncio.to_thread(_send_whole_then_read, port, b"POST / HTTP/1.1\r\nhost: x\r\n",
                                         1_000_000, behind)
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 413 ")
        assert _REFUSED == ["/"]
    finally:
        server.should_exit = True


async def test_a_refused_body_past_the_drain_bound_is_not_read_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_protocol, "DRAIN_BYTES", 100_000)
    server, port = await _serve(_refusing, _Patient)
    try:
        # 64 MB: far more than the socket buffers hold, so the client finds the connection closed
        with pytest.raises(ConnectionError):
            await asyncio.to_thread(_send_whole_then_read, port, b"POST / HTTP/1.1\r\nhost: x\r\n", 64_000_000)
    finally:
        server.should_exit = True


async def test_each_request_the_protocol_refuses_itself_is_counted_once_by_its_reason() -> None:
    # They never reached the app, so nothing an operator could see counted them.
    refusals: Counter[str] = Counter()
    server, port = await _serve(_slow_echo, _QuickDeadline.counting_refusals(refusals))
    try:
        served = await _exchange(port, HEAD + b"connection: close\r\n\r\n0123456789")
        assert served.startswith(b"HTTP/1.1 200 ")  # not counted
        assert refusals == {}
        sent = {
            b"408": [HEAD, HEAD + b"\r\nabc"],  # headers that never end, a body that stops coming
            b"431": [HEAD + _filler(8000) * (HEAD_BYTES // 8000 + 2),  # streamed; a URL in one read
                     b"POST /" + b"a" * 70_000 + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"],
            b"400": [b"\x00\x01\xff\r\n\r\n",
                     b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nabcde\r\nzz\r\n",
                     HEAD + b"\r\n0123456789" + b"\x00\x01\xff\r\n\r\n"],  # refused behind a running request
        }
        for status, requests in sent.items():
            for request in requests:
                answer = await _exchange(port, request)
                assert answer.count(b"HTTP/1.1 " + status + b" ") == 1, answer
    finally:
        server.should_exit = True
    assert refusals == {"request_timeout": 2, "headers_too_large": 2, "malformed_http": 3}  # no upgrade sent


# --- a chunked body's trailer section is bounded, as the head is ---------------------------------

_CHUNKED = b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n"


def _stream_then_read(port: int, *parts: bytes) -> bytes:
    """Send `parts` a moment apart (each its own read, as a client streaming them), stopping at the
    first the server refuses; then what the server answered, read until it closes, or b"<still
    open>" after it if it has not in 2 s. A reset after the answer is a close too (the answer was
    read before it)."""
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        with contextlib.suppress(ConnectionError):
            for part in parts:
                sock.sendall(part)
                time.sleep(0.02)
        try:
            while data := sock.recv(65536):
                answer += data
        except ConnectionError:
            pass
        except TimeoutError:
            answer += b"<still open>"
    return answer


async def test_a_trailer_streamed_past_the_head_limit_gets_431_and_its_request_is_told_the_client_is_gone() -> None:
    """httptools joins a field's value from every read it spans (bytes += bytes), and only the head
    was counted: one trailer field streamed after the last chunk grew the node by its size, its
    joining took quadratic CPU on the loop, and it ran on until the request's deadline."""
    refusals: Counter[str] = Counter()
    received: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            while (message := await receive()).get("more_body"):
                pass
            received.append(message["type"])  # never answered: the refusal is the protocol's

    server, port = await _serve(app, _Patient.counting_refusals(refusals))
    try:
        piece = b"a" * 16_000
        streamed = [piece] * (HEAD_BYTES // len(piece) + 4)  # the value never ends: no CRLF
        answer = await asyncio.to_thread(_stream_then_read, port, _CHUNKED + b"0\r\nx-trailer: ", *streamed)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 ") and b"connection: close" in head, answer
        assert json.loads(body) == {"__type": "RequestHeaderFieldsTooLarge",
                                    "message": f"The request's trailer fields exceed {HEAD_BYTES} bytes."}
        assert refusals == {"headers_too_large": 1}
        await eventually(lambda: received == ["http.disconnect"], what="the request told its client is gone")
    finally:
        server.should_exit = True


async def test_chunks_and_a_small_trailer_spread_over_many_reads_are_served() -> None:
    """Only the trailer is counted: chunk data, however many reads it spans, is the body's (bounded
    by the app), and a trailer field within the limit is dropped as before."""
    server, port = await _serve(_slow_echo, _Patient)
    try:
        data = b"b" * 40_000
        chunk = b"%x\r\n%s\r\n" % (len(data), data)
        parts = [_CHUNKED, *[chunk[i:i + 8000] for i in range(0, len(chunk), 8000)] * 3,
                 b"0\r\nx-trailer: ", b"a" * 8000, b"a" * 8000 + b"\r\n\r\n"]
        answer = await asyncio.to_thread(_stream_then_read, port, *parts)
        assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"{}<still open>"), answer
    finally:
        server.should_exit = True


async def test_a_trailer_streamed_behind_a_refused_body_closes_the_connection_without_a_second_answer() -> None:
    """A body answered early (413) is read on and dropped; its trailer is parsed as it comes, so it
    is bounded there too, the connection closed with the one answer given."""
    server, port = await _serve(_refusing, _Patient)
    try:
        piece = b"a" * 16_000
        streamed = [piece] * (HEAD_BYTES // len(piece) + 4)
        answer = await asyncio.to_thread(_stream_then_read, port, _CHUNKED + b"0\r\nx-trailer: ", *streamed)
        assert answer.startswith(b"HTTP/1.1 413 ") and answer.endswith(b'{"__type":"SerializationException"}'), answer
    finally:
        server.should_exit = True
