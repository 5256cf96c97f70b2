"""`serve --drain-seconds N` (docs/operations.md, "Stopping behind a load balancer"): on SIGTERM the
node first fails its health check, closing each connection after its answer, while it goes on
serving calls for N seconds, so that a load balancer takes it out of rotation before it stops
accepting; a second SIGTERM or SIGINT ends that wait at once."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.e2e.support import eventually
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration


@pytest.fixture
def draining(tmp_path: Path) -> Iterator[KeytrailServer]:
    running = KeytrailServer(tmp_path / "data", "--drain-seconds", "600", dev_clock=False).start()
    try:
        yield running
    finally:
        if running.proc is not None:
            running.kill()


def _health(server: KeytrailServer) -> tuple[int, dict[str, str]]:
    status, body = server.get("/_keytrail/health")
    return status, json.loads(body)


def test_a_draining_node_fails_its_health_check_and_serves_calls_until_stopped(draining: KeytrailServer) -> None:
    assert draining.proc is not None
    alice = draining.client("alice")
    key = alice.create_key()["KeyMetadata"]["KeyId"]
    draining.proc.send_signal(signal.SIGTERM)
    _, body = eventually(lambda: (answer := _health(draining))[0] == 503 and answer, what="health to fail")
    assert body["status"] == "draining"
    # Still accepting: a call on a new connection is served, and its connection closes after its answer.
    connection = http.client.HTTPConnection("127.0.0.1", draining.port, timeout=10)
    connection.request("GET", "/_keytrail/health")
    response = connection.getresponse()
    assert response.status == 503 and response.getheader("connection") == "close"
    connection.close()
    assert alice.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["HTTPStatusCode"] == 200
    draining.proc.send_signal(signal.SIGTERM)  # a second one: no more waiting
    assert draining.proc.wait(60) == 0
    draining.proc = None
    events = subprocess.run([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(draining.data_dir)],
                            capture_output=True, text=True, check=True).stdout.splitlines()
    assert [json.loads(line)["eventName"] for line in events] == ["CreateKey", "Encrypt"]


def test_sigint_during_the_drain_ends_it_too(draining: KeytrailServer) -> None:
    assert draining.proc is not None
    draining.proc.send_signal(signal.SIGTERM)
    eventually(lambda: _health(draining)[0] == 503, what="health to fail")
    draining.proc.send_signal(signal.SIGINT)
    assert draining.proc.wait(60) == 0
    draining.proc = None
