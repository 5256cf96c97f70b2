"""The dev certificate of `serve --tls-self-signed`: a client that checks it accepts it for every
name serve prints, as it would connect (by name or by address)."""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from pathlib import Path

import pytest

from keytrail.cli.tls import dev_certificate_usable, self_signed_certificate


def _handshake(cert: Path, key: Path, address: str, server_hostname: str) -> None:
    """A TLS handshake with a listener on `address` serving `cert`, checked as a client does."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    with socket.create_server((address, 0)) as listener:
        def accept() -> None:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=accept)
        thread.start()
        client_context = ssl.create_default_context(cafile=str(cert))
        try:
            with socket.create_connection(listener.getsockname()[:2], timeout=10) as raw, \
                    client_context.wrap_socket(raw, server_hostname=server_hostname):
                pass
        finally:
            thread.join(10)


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "127.0.0.2"])
def test_the_dev_certificate_of_an_address_host_is_valid_for_that_address(tmp_path: Path, name: str) -> None:
    # --host 127.0.0.2 (say, a node's LAN address): https://127.0.0.2:4599 is the endpoint serve prints.
    cert, key = self_signed_certificate(tmp_path, "127.0.0.2")
    _handshake(cert, key, "127.0.0.2" if name == "127.0.0.2" else "127.0.0.1", name)


def test_the_dev_certificate_is_made_again_for_another_host(tmp_path: Path) -> None:
    self_signed_certificate(tmp_path, "localhost")
    cert, key = self_signed_certificate(tmp_path, "127.0.0.2")  # serve restarted with --host 127.0.0.2
    _handshake(cert, key, "127.0.0.2", "127.0.0.2")


def test_the_dev_certificate_is_made_again_before_it_expires(tmp_path: Path) -> None:
    # It is valid a year: a node still running its dev setup a year on would serve an expired one.
    made = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=364, hours=12)
    old_cert, _ = self_signed_certificate(tmp_path, "localhost", now=made)
    old = old_cert.read_bytes()
    assert not dev_certificate_usable(tmp_path, "localhost")
    cert, key = self_signed_certificate(tmp_path, "localhost")
    assert cert.read_bytes() != old and dev_certificate_usable(tmp_path, "localhost")
    _handshake(cert, key, "127.0.0.1", "localhost")
