"""Shared fixtures: a real `keytrail serve` process driven over HTTP by real clients."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import KeytrailServer


@pytest.fixture(autouse=True)
def _core_dump_limit_kept() -> Iterator[None]:
    """serve, detect and analyze forbid core dumps for the rest of their process
    (cli.console.no_core_dumps), and without CAP_SYS_RESOURCE, even as root, the limit cannot be
    raised again: one of them run in the test process (CliRunner) makes the core-dump test of any
    later file in that process skip (as a pytest-xdist worker may take them). Such a test must patch
    no_core_dumps out; this says which one did not."""
    limit = resource.getrlimit(resource.RLIMIT_CORE)
    yield
    assert resource.getrlimit(resource.RLIMIT_CORE) == limit, (
        "this test lowered the test process's core-dump limit for good: patch no_core_dumps out")


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
