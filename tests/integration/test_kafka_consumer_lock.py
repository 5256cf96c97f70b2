"""`keytrail consume --kafka` and `keytrail serve`'s metrics consumer on one data dir: a node's calls
reach both its event log and Kafka, so counted by both, each counted twice in usage, cost and
/metrics. Whichever starts first keeps the other out (pipeline/kafka_lock.py): real processes, a
real broker (tansu)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from keytrail.pipeline.kafka_lock import kafka_consumers_counting, kafka_consumers_running
from keytrail.pipeline.layout import kafka_consumers_lock
from keytrail.transport.segment_log import lock_held
from tests.integration.e2e.support import eventually
from tests.support.processes import child_commands
from tests.support.server import KeytrailServer
from tests.support.services import free_port, kafka_broker

pytestmark = pytest.mark.integration


@contextmanager
def _consume_kafka(data_dir: Path, bootstrap: str) -> Iterator[subprocess.Popen[str]]:
    """A `keytrail consume --kafka` counting into `data_dir` until the block ends (SIGTERM)."""
    consumer = subprocess.Popen([sys.executable, "-m", "keytrail", "consume", "--data-dir", str(data_dir),
                                 "--kafka", bootstrap], stderr=subprocess.PIPE, text=True)
    try:
        eventually(lambda: kafka_consumers_running(data_dir) or consumer.poll() is not None,
                   what="consume --kafka to take its lock")
        assert consumer.poll() is None, consumer.communicate()[1]
        yield consumer
    finally:
        if consumer.poll() is None:
            consumer.send_signal(signal.SIGTERM)
        consumer.communicate(timeout=30)


def _serve(data_dir: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data_dir),
                           "--port", str(free_port()), *flags], capture_output=True, text=True, timeout=120)


def _entries(data_dir: Path) -> set[str]:
    """What is in `data_dir` but the running consumer's own state: it writes a partition's state
    once the group gives it the partition, whenever that is (on a loaded machine, after a refused
    serve has come and gone)."""
    return {str(path.relative_to(data_dir)) for path in data_dir.rglob("*")
            if not path.relative_to(data_dir).is_relative_to(_CONSUMER_STATE)}


_CONSUMER_STATE = Path("metrics", "state")


@pytest.mark.parametrize("clock", [[], ["--dev-clock"]], ids=["consumer child", "dev clock, consumer in serve"])
def test_serve_is_refused_while_consume_kafka_counts_into_its_data_dir(tmp_path: Path, clock: list[str]) -> None:
    data = tmp_path / "data"
    with kafka_broker() as bootstrap, _consume_kafka(data, bootstrap) as consumer:
        before = _entries(data)
        refused = _serve(data, *clock)
        assert consumer.poll() is None  # counting on, undisturbed
    assert refused.returncode == 2
    assert refused.stderr == f"keytrail serve: {kafka_consumers_counting(data)}\n"  # one line, no traceback
    assert refused.stdout == ""
    assert _entries(data) == before  # refused before it wrote anything: no key store, principals, trail
    # Once the Kafka consumer is gone, the node starts on that data dir and runs its consumer there.
    server = KeytrailServer(data, dev_clock=bool(clock)).start()
    try:
        # Exclusive: serve's consumer (its child, taking it as it starts) keeps consume --kafka out.
        eventually(lambda: lock_held(kafka_consumers_lock(data)), what="serve's consumer to take the lock")
    finally:
        assert server.stop() == 0


def test_serve_without_its_consumer_starts_beside_consume_kafka(tmp_path: Path) -> None:
    # --no-audit (benchmarks): no audit trail, so no event log and no consumer to count it twice.
    data = tmp_path / "data"
    with kafka_broker() as bootstrap, _consume_kafka(data, bootstrap):
        server = KeytrailServer(data, "--no-audit", dev_clock=False).start()
        try:
            server.client("alice").create_key()
            assert kafka_consumers_running(data)
        finally:
            assert server.stop() == 0


def test_consume_kafka_is_refused_while_serves_consumer_child_counts(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data", dev_clock=False).start()
    try:
        eventually(lambda: lock_held(kafka_consumers_lock(server.data_dir)),
                   what="the consumer child to keep Kafka consumers out")
        with kafka_broker() as bootstrap:
            refused = subprocess.run([sys.executable, "-m", "keytrail", "consume", "--data-dir",
                                      str(server.data_dir), "--kafka", bootstrap], capture_output=True, text=True,
                                     timeout=60)
        assert refused.returncode == 2
        assert refused.stderr == (f"keytrail consume: the metrics consumer of {server.data_dir} is already running "
                                  "(keytrail serve runs one, counting its event log): --kafka would count those "
                                  "events twice; give another --data-dir\n")
    finally:
        assert server.stop() == 0


def _consumer_child(serve: int) -> int | None:
    return next((pid for pid, args in child_commands(serve).items()
                 if b"keytrail.cli.sidecar" in args and b"consumer" in args), None)


def _encrypts_counted(server: KeytrailServer) -> float:
    """What serve's /metrics says its consumer counted of the node's successful Encrypt calls."""
    found = re.search(r'^keytrail_kms_requests_total\{operation="Encrypt",outcome="success"\} (\S+)$',
                      server.get("/metrics")[1].decode(), re.MULTILINE)
    return float(found[1]) if found else 0.0


def test_a_consumer_child_started_while_consume_kafka_counts_counts_nothing_until_it_stops(tmp_path: Path) -> None:
    """The race serve's check at its start leaves: a `consume --kafka` starting while serve's
    consumer child is down (crashed, in its restart's backoff). The restarted child must not
    count: it says so in one line and exits, serve restarts it with its backoff, and once the
    Kafka consumer stops it counts what the node served meanwhile, each call once."""
    server = KeytrailServer(tmp_path / "data", dev_clock=False).start()
    assert server.proc is not None
    serve = server.proc.pid
    alice = server.client("alice")
    key = alice.create_key()["KeyMetadata"]["KeyId"]
    alice.encrypt(KeyId=key, Plaintext=b"before")
    eventually(lambda: _encrypts_counted(server) == 1, what="the child to count the first Encrypt")
    try:
        child = eventually(lambda: _consumer_child(serve), what="the consumer child")
        os.kill(serve, signal.SIGSTOP)  # no restart until consume --kafka holds the data dir
        try:
            os.kill(child, signal.SIGKILL)
            eventually(lambda: not lock_held(kafka_consumers_lock(server.data_dir)), what="the child's locks to go")
            with kafka_broker() as bootstrap, _consume_kafka(server.data_dir, bootstrap) as consumer:
                os.kill(serve, signal.SIGCONT)
                refusal = f"consumer child: {kafka_consumers_counting(server.data_dir)}; until it stops"
                eventually(lambda: server.log.read_text().count(refusal) >= 2, what="two refused restarts")
                for _ in range(3):
                    alice.encrypt(KeyId=key, Plaintext=b"meanwhile")
                eventually(lambda: server.log.read_text().count(refusal) >= 3, what="a third refused restart")
                assert _encrypts_counted(server) == 1  # not counted from the event log meanwhile
                assert consumer.poll() is None
                assert server.get("/_keytrail/health")[0] == 200  # the node serves on all the same
        finally:
            os.kill(serve, signal.SIGCONT)
        assert "consumer child exited with status 1; restarting in" in server.log.read_text()
        eventually(lambda: _encrypts_counted(server) == 4, timeout=60,
                   what="the child, restarted once consume --kafka stopped, to count the calls it left")
        assert lock_held(kafka_consumers_lock(server.data_dir))
    finally:
        assert server.stop() == 0
