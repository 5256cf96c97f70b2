"""The test servers' ports: each pytest-xdist worker draws from a share of its own, below the
ephemeral range, and never hands out one port twice (a stopped server restarts on its port)."""

from __future__ import annotations

import socket

import pytest

from tests.support import services
from tests.support.services import free_port


def test_a_worker_hands_out_ports_of_its_own_share_below_the_ephemeral_range_once_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setattr(services, "_handed_out", set())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == 200
    assert all(21_000 <= port < 32_000 for port in ports)  # gw0 has 10,000-20,999; bind(0) 32768 and up


def test_a_port_something_listens_on_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(services, "_worker_ports", lambda: range(port, port + 1))
        monkeypatch.setattr(services, "_handed_out", set())
        with pytest.raises(RuntimeError, match="no free loopback port"):
            free_port()
