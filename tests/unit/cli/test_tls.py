"""The dev certificate of `serve --tls-self-signed`: a client that checks it accepts it for every
name serve prints, as it would connect (by name or by address)."""

from __future__ import annotations

import datetime
import shlex
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


@pytest.mark.parametrize("name", ["tls-cert.pem", "tls-key.pem"])
def test_a_fifo_in_place_of_the_dev_certificate_or_its_key_is_replaced_not_written_into(
        tmp_path: Path, name: str) -> None:
    # Written into, a FIFO (whoever can write the data dir can make one) held serve's start for a
    # reader forever.
    import os
    import stat

    os.mkfifo(tmp_path / name)
    made: list[tuple[Path, Path]] = []
    making = threading.Thread(target=lambda: made.append(self_signed_certificate(tmp_path, "localhost")), daemon=True)
    making.start()
    making.join(timeout=30)
    if making.is_alive():  # writing into the FIFO: a reader lets it go
        os.close(os.open(tmp_path / name, os.O_RDONLY | os.O_NONBLOCK))
        making.join(timeout=30)
    assert len(made) == 1 and stat.S_ISREG((tmp_path / name).lstat().st_mode)
    assert stat.S_IMODE((tmp_path / "tls-key.pem").stat().st_mode) == 0o600
    _handshake(*made[0], "127.0.0.1", "localhost")


def _weak_certificate(folder: Path, bits: int) -> tuple[Path, Path]:
    """A well-formed self-signed RSA certificate of `bits` (PEM, unencrypted key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
                   .sign(key, hashes.SHA256()))
    cert, key_file = folder / "weak.pem", folder / "weak.key"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert, key_file


def test_a_certificate_below_openssls_security_level_is_named_as_too_weak_not_as_no_pem(tmp_path: Path) -> None:
    from keytrail.cli.serve_tls import _tls_problem

    cert, key = _weak_certificate(tmp_path, 1024)
    assert _tls_problem(cert, key) == (
        f"--tls-cert {cert}: its key is too small (RSA and DSA need 2048 bits, EC 224) "
        "for OpenSSL's default security level")


def test_the_ca_bundle_export_of_a_relative_data_dir_names_the_certificate_from_any_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `keytrail serve --tls-self-signed` in its default ./keytrail-data: the export line is pasted,
    # then clients run from the project's folder, not serve's.
    from keytrail.cli.serve_tls import print_dev_certificate
    from keytrail.config import ServeSettings

    monkeypatch.chdir(tmp_path)
    settings = ServeSettings(data_dir=Path("keytrail-data"), tls_self_signed=True)
    cert, _ = self_signed_certificate(settings.data_dir / "tls", settings.client_host)
    print_dev_certificate(cert, settings)
    export = capsys.readouterr().out.splitlines()[1]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    bundle = dict(item.split("=", 1) for item in shlex.split(export)[1:])["AWS_CA_BUNDLE"]
    assert Path(bundle).read_bytes() == (tmp_path / "keytrail-data" / "tls" / "tls-cert.pem").read_bytes()


def test_a_key_of_another_type_than_the_certificates_is_named_as_not_its_key_not_as_no_pem(tmp_path: Path) -> None:
    # The dev certificate's EC P-256 with an RSA key, both well-formed PEM: OpenSSL says "no
    # certificate assigned" (no certificate of the key's type), which sent operators after the format.
    from keytrail.cli.serve_tls import _tls_problem

    ec_cert, _ = self_signed_certificate(tmp_path / "ec", "localhost")
    _, rsa_key = _weak_certificate(tmp_path, 2048)
    assert _tls_problem(ec_cert, rsa_key) == f"--tls-key {rsa_key} is not the private key of --tls-cert {ec_cert}"
