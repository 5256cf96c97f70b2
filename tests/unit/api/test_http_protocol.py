"""The coalescing transport under the HTTP protocol: one write per loop step, nothing lost or late."""

from __future__ import annotations

import asyncio

from keytrail.api.http_protocol import _CoalescingTransport


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
