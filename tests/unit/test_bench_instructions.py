"""bench/instructions.py's own parts: reading answers off a keep-alive connection, and the
callgrind dump's total."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bench.instructions import _dumped_total, _read_answer


def test_answers_sent_together_are_read_one_at_a_time() -> None:
    here, there = socket.socketpair()
    with here, there:
        there.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
                      b"HTTP/1.1 400 Bad Request\r\ncontent-length: 5\r\n\r\nnope!")
        buffer = bytearray()
        assert _read_answer(here, buffer) == 200
        assert _read_answer(here, buffer) == 400
        assert buffer == b""


def test_a_connection_closed_before_its_answer_is_an_error() -> None:
    here, there = socket.socketpair()
    with here:
        there.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}")
        there.close()
        with pytest.raises(ConnectionError):
            _read_answer(here, bytearray())


def test_the_total_is_read_from_the_newest_dump_of_the_process(tmp_path: Path) -> None:
    (tmp_path / "callgrind.out.42.1").write_text("events: Ir\nsummary: 111\n")
    before = set(tmp_path.glob("callgrind.out.42.*"))
    (tmp_path / "callgrind.out.42.2").write_text("events: Ir\nsummary: 2222\ntotals: 2300\n")
    (tmp_path / "callgrind.out.7.3").write_text("events: Ir\nsummary: 9\n")
    total, dump = _dumped_total(tmp_path, 42, before)
    assert (total, dump.name) == (2222, "callgrind.out.42.2")
