"""A self-signed certificate for `serve --tls-self-signed` (development only)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from keytrail.owner_only import make_dirs, replace_whole

__all__ = ["dev_certificate_usable", "out_of_date", "self_signed_certificate"]

# Renewed a day before it expires, so that no client meets it expired between two starts of a day.
_RENEW_BEFORE = datetime.timedelta(days=1)


def dev_certificate_usable(directory: Path, host: str, now: datetime.datetime | None = None) -> bool:
    """Whether the certificate in `directory` still serves `host`: not (about to be) expired, and
    naming it (a node restarted with another --host needs another certificate)."""
    cert_path, key_path = _paths(directory)
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):  # not ours: make one that is
        return False
    now = now or datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - _RENEW_BEFORE > now and all(name in names for name in _subject_names(host))


def out_of_date(cert_path: Path, now: datetime.datetime | None = None) -> str | None:
    """Why the server certificate (the first in `cert_path`, a PEM file OpenSSL loaded) is refused
    by every client that checks it, expired or not valid yet, else None: OpenSSL serves it, and
    the SDKs fail each call with CERTIFICATE_VERIFY_FAILED while the node logs nothing."""
    try:
        cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    except (OSError, ValueError):  # unreadable since, or a form OpenSSL takes and this does not: said elsewhere
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc < now:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if cert.not_valid_before_utc > now:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def self_signed_certificate(directory: Path, host: str,
                            now: datetime.datetime | None = None) -> tuple[Path, Path]:
    """Write (when none is usable: `dev_certificate_usable`) and return a certificate and key
    valid for a year for localhost and `host`."""
    cert_path, key_path = _paths(directory)
    if dev_certificate_usable(directory, host, now):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keytrail development")])
    names = _subject_names(host)
    now = now or datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Each renamed into place whole: written into, a FIFO in a file's place (whoever can write the
    # data dir can make one) held serve's start for a reader forever. The folder made first, so that
    # what stands in its way is named, not the temp file it would have held.
    make_dirs(directory)
    replace_whole(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    replace_whole(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _paths(directory: Path) -> tuple[Path, Path]:
    """The dev certificate's file and its key's, in `directory`."""
    return directory / "tls-cert.pem", directory / "tls-key.pem"


def _subject_names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    if host not in ("localhost", "127.0.0.1", "0.0.0.0"):
        names.append(_subject_name(host))
    return names


def _subject_name(host: str) -> x509.GeneralName:
    """An address as an IP name: clients match `https://10.0.0.5` against IP names only
    (RFC 6125), so a DNS name "10.0.0.5" fails their hostname check."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
