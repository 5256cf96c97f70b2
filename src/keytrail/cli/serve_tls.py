"""`keytrail serve`'s TLS: the --tls-cert/--tls-key files checked before anything is built, uvicorn's
options from them, and the dev certificate of --tls-self-signed (cli/tls.py makes it)."""

from __future__ import annotations

import logging
import shlex
import ssl
from pathlib import Path

import typer

from keytrail.cli.console import os_problem
from keytrail.cli.serve_checks import serve_fail
from keytrail.config import ServeSettings

__all__ = ["check_tls", "dev_certificate_due", "print_dev_certificate", "tls_options"]

log = logging.getLogger("keytrail")


def check_tls(settings: ServeSettings) -> None:
    """Refuse TLS flags that cannot be served, before anything is built or written."""
    if settings.tls_self_signed and (settings.tls_cert or settings.tls_key):  # else one would be ignored
        raise serve_fail("--tls-self-signed and --tls-cert/--tls-key exclude each other")
    if settings.tls_self_signed or not (settings.tls_cert or settings.tls_key):
        return
    if not (settings.tls_cert and settings.tls_key):
        raise serve_fail("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if not path.is_file():  # a folder named is there: "no such file" sent the operator looking for it
            raise serve_fail(f"{option}: {'not a file' if path.exists() else 'no such file'}: {path}")
    if problem := _tls_problem(settings.tls_cert, settings.tls_key):
        raise serve_fail(problem)
    _warn_if_out_of_date(settings.tls_cert)


def _warn_if_out_of_date(cert: Path) -> None:
    """Served all the same (a client that does not check it still works, and a renewed file needs a
    restart): but every SDK and the aws CLI refuse each connection, and the node said nothing."""
    from keytrail.cli.tls import out_of_date

    if problem := out_of_date(cert):
        log.warning("--tls-cert %s %s: clients that check it (the AWS SDKs, the aws CLI) refuse every connection; "
                    "renew it and restart", cert, problem)


def dev_certificate_due(settings: ServeSettings) -> bool:
    """Whether this start makes the dev certificate (`tls_options`): --tls-self-signed, and none usable."""
    if not settings.tls_self_signed:
        return False
    from keytrail.cli.tls import dev_certificate_usable

    return not dev_certificate_usable(settings.data_dir / "tls", settings.client_host)


def tls_options(settings: ServeSettings) -> tuple[dict[str, str], bool]:
    """uvicorn's TLS options from flags `check_tls` let through, and whether the dev certificate
    was made now (announced once the node runs)."""
    if settings.tls_self_signed:
        from keytrail.cli.tls import self_signed_certificate

        try:
            made = dev_certificate_due(settings)
            cert, key = self_signed_certificate(settings.data_dir / "tls", settings.client_host)
        except OSError as error:
            raise serve_fail(f"--tls-self-signed: cannot write the dev certificate: {os_problem(error)}") from None
        return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}, made
    if settings.tls_cert and settings.tls_key:
        return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}, False
    return {}, False


def print_dev_certificate(cert: Path, settings: ServeSettings) -> None:
    """Clients must trust the new certificate and call https://: a data dir whose principals file
    exists already prints no `export` line, and the one printed before named http://. The path is
    quoted as the shell needs (a data dir with a space in its path), as the line is there to be pasted.
    It is absolute: the SDKs and the aws CLI read AWS_CA_BUNDLE from their own working directory, so
    the relative path of a relative --data-dir failed every call made anywhere but serve's folder."""
    names = ", ".join(dict.fromkeys(("localhost", "127.0.0.1", settings.client_host)))
    typer.echo(f"Created the dev certificate {cert} ({names}). To use it:")
    typer.echo(f"export AWS_CA_BUNDLE={shlex.quote(str(cert.absolute()))} AWS_ENDPOINT_URL_KMS={settings.endpoint}")


# OpenSSL's reasons for a well-formed certificate it will not serve (level 1 and up: RSA under 2048
# bits, an MD5 or SHA-1 signature); said as themselves, they sent an operator after the PEM format.
_TOO_WEAK = {
    "EE_KEY_TOO_SMALL": "its key is too small (RSA and DSA need 2048 bits, EC 224)",
    "CA_MD_TOO_WEAK": "its signature's digest is too weak (MD5 or SHA-1: sign it with SHA-256)",
    "CA_KEY_TOO_SMALL": "its issuer's key is too small",
}


# OpenSSL's reasons for a key that is not the certificate's: another key of the same type, or a key
# of another type (an RSA key for an EC certificate), for which it has no certificate to pair it with.
_NOT_ITS_KEY = frozenset({"KEY_VALUES_MISMATCH", "NO_CERTIFICATE_ASSIGNED"})


def _tls_problem(cert: Path, key: Path) -> str | None:
    """Why TLS cannot be served with these files, found before anything is built or written:
    uvicorn finds out only once the node runs, and says it in OpenSSL's words. The empty password
    makes an encrypted key an error here rather than OpenSSL's prompt on the terminal."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password="")
    except ssl.SSLError as error:
        if error.reason in _NOT_ITS_KEY:
            return f"--tls-key {key} is not the private key of --tls-cert {cert}"
        if error.reason in _TOO_WEAK:  # readable, but below OpenSSL's security level: not a format problem
            return f"--tls-cert {cert}: {_TOO_WEAK[error.reason]} for OpenSSL's default security level"
        return f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its unencrypted key"
    except OSError as error:  # unreadable
        return f"cannot read the TLS files: {os_problem(error)}"
    return None
