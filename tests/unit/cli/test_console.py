"""The terminal helpers every command shares: one-line complaints about paths and times."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
import typer

from keytrail.cli.console import bootstrap_problem, missing_paths
from keytrail.cli.listening import listening_sockets
from keytrail.cli.time_window import parse_time


def test_missing_paths_names_every_missing_one_and_the_option(tmp_path: Path) -> None:
    present = tmp_path / "logs"
    present.mkdir()
    gone, also_gone = tmp_path / "gone.json", tmp_path / "folder"
    assert missing_paths([present]) is None
    assert missing_paths([present, gone, also_gone], "--cloudtrail") == \
        f"--cloudtrail: no such file or folder: {gone}, {also_gone}"
    assert missing_paths([gone]) == f"no such file or folder: {gone}"


def test_parse_time_reads_utc_and_offsets_and_refuses_the_rest() -> None:
    assert parse_time("2026-01-02T03:04:05Z", "--since") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time("2026-01-02T05:04:05+02:00", "--since") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse_time(None, "--since") is None
    with pytest.raises(typer.Exit):
        parse_time("yesterday", "--since")


@pytest.mark.parametrize("bootstrap", ["localhost:9092", "a:1,b:2", "[::1]:9092", "kafka", " k1:9092, k2:9093"])
def test_bootstrap_lists_kafka_accepts(bootstrap: str) -> None:
    assert bootstrap_problem(bootstrap) is None


@pytest.mark.parametrize("bootstrap", ["not-a-host:abc", "a:1,b:", ":9092", "[::1", "[::1]x", "h:0", "h:70000", "",
                                       "h 1:9092", "user@h:9092", "h:+1", "h:\u0663", "9092", "kafka://h:9092"])
def test_bootstrap_typos_are_one_line(bootstrap: str) -> None:
    shown = "***@h:9092" if bootstrap == "user@h:9092" else bootstrap  # what may be a user name or password: never
    assert bootstrap_problem(bootstrap, "--kafka") == f"--kafka: not HOST:PORT[,HOST:PORT…]: {shown!r}"


def test_the_sockets_serve_listens_on_hold_the_port_against_another_server() -> None:
    sockets = listening_sockets("127.0.0.1", 0)
    port = sockets[0].getsockname()[1]
    try:
        with socket.socket() as other, pytest.raises(OSError, match="Address already in use"):
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            other.bind(("127.0.0.1", port))
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # listening already: a client waits for the server rather than being refused
    finally:
        for sock in sockets:
            sock.close()

