"""A Kafka broker behind TLS, for the Kafka security tests: tansu 0.6 takes `--cert/--key` but
serves plain TCP all the same (it never opens the files), so a TLS listener is tansu behind a
TLS-terminating relay, as a broker behind stunnel or a TLS load balancer is; the broker advertises
the relay's port (`kafka_broker(advertised_port=...)`), so that clients reach it only over TLS.
The relay can ask for a client certificate signed by the test CA (mutual TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.services import free_port, kafka_broker

__all__ = ["Authority", "TlsBroker", "tls_kafka_broker"]


@dataclass(frozen=True)
class Authority:
    """A test CA's certificate, and the server and client certificates (with their keys) it signed."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, folder: Path) -> Authority:
        folder.mkdir(parents=True, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _builder("keytrail test CA", "keytrail test CA", ca_key).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256())
        paths = {"ca": _write_cert(folder / "ca.pem", ca)}
        for role, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
            key = ec.generate_private_key(ec.SECP256R1())
            builder = _builder(f"keytrail-{role}", "keytrail test CA", key).add_extension(
                x509.ExtendedKeyUsage([usage]), critical=False)
            if role == "server":
                builder = builder.add_extension(x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            paths[f"{role}_cert"] = _write_cert(folder / f"{role}.pem", builder.sign(ca_key, hashes.SHA256()))
            paths[f"{role}_key"] = folder / f"{role}.key"
            paths[f"{role}_key"].write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cls(**paths)


def _builder(subject: str, issuer: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1)))


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass(frozen=True)
class TlsBroker:
    bootstrap: str  # the TLS listener's address
    plain_bootstrap: str  # the broker's own plain-TCP listener (which advertises the TLS one)
    go_silent: Callable[[], None]  # the TLS listener reads nothing more on the connections it holds


class _TlsRelay:
    """Terminates TLS on a free port and relays each connection to 127.0.0.1:`target`, in an event
    loop of its own thread."""

    def __init__(self, target: int, context: ssl.SSLContext) -> None:
        self.target, self.context, self.port = target, context, free_port()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._streams: list[asyncio.StreamWriter] = []  # both ends of each connection relayed
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)

    def __enter__(self) -> _TlsRelay:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(10)

    def go_silent(self) -> None:
        """Read nothing more on the connections open, at either end: as a broker host that went
        down without a word (a power cut, a partition) leaves its clients' connections, open and
        never answered, not even the TLS close_notify a closing client waits for."""
        asyncio.run_coroutine_threadsafe(self._pause_reading(), self._loop).result(10)

    async def _pause_reading(self) -> None:
        for stream in self._streams:
            if not stream.is_closing():  # a connection its client closed before
                stream.transport.pause_reading()

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, ssl=self.context)
        self._started.set()
        async with server:
            await self._stopping.wait()
        relays = asyncio.all_tasks() - {asyncio.current_task()}  # connections still open: closed with the loop
        for relay in relays:
            relay.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _relay(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            client_writer.close()
            return
        self._streams += (client_writer, writer)
        await asyncio.gather(_pump(client_reader, writer), _pump(reader, client_writer))


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, ssl.SSLError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, ssl.SSLError, RuntimeError):
        writer.close()


@contextlib.contextmanager
def tls_kafka_broker(authority: Authority, *, client_certificates: bool = False) -> Iterator[TlsBroker]:
    """tansu reached over TLS with the authority's server certificate; `client_certificates`: the
    listener refuses a client without a certificate the authority signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(authority.server_cert, authority.server_key)
    if client_certificates:
        context.load_verify_locations(authority.ca)
        context.verify_mode = ssl.CERT_REQUIRED
    port = free_port()
    relay = _TlsRelay(port, context)
    with kafka_broker(port, advertised_port=relay.port) as plain, relay:
        yield TlsBroker(f"127.0.0.1:{relay.port}", plain, relay.go_silent)
