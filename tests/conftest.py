"""Shared fixtures: a real `keytrail serve` process driven over HTTP by real clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import KeytrailServer


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeytrailServer]:
    """One server for the session (tests create their own keys, so they do not collide)."""
    running = KeytrailServer(tmp_path_factory.mktemp("server") / "data").start()
    yield running
    running.stop()


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[KeytrailServer]:
    """A server of the test's own, for restarts, kills and clock moves."""
    running = KeytrailServer(tmp_path / "data")
    yield running.start()
    if running.proc is not None:
        running.stop()


@pytest.fixture
def kms(server: KeytrailServer):  # type: ignore[no-untyped-def]
    return server.client("alice")
