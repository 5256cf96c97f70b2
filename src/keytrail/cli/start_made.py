"""What a start of `keytrail serve` makes in the data dir (the admin user's principals file, the
audit signing key, the dev certificate): noted before it is made, announced once the node runs,
and removed again when the start fails, so that a retry never takes it for its own unannounced."""

from __future__ import annotations

import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from keytrail.cli.console import os_problem
from keytrail.cli.pending_announcement import DEV_CERTIFICATE, PRINCIPALS, SIGNING_KEY, PendingAnnouncement
from keytrail.cli.serve_checks import serve_fail
from keytrail.cli.serve_tls import dev_certificate_due, print_dev_certificate
from keytrail.config import ServeSettings
from keytrail.transport.segment_log import LogLockedError

if TYPE_CHECKING:
    from keytrail.audit.integrity import IntegrityPaths
    from keytrail.cli.data_dir_hold import DataDirHold
    from keytrail.cli.node import Node

__all__ = ["Built", "NewAdmin", "announce", "announced", "new_admin", "noted",
           "remove_what_the_start_made", "stdout_to_devnull"]

log = logging.getLogger("keytrail")


_REGION = "us-east-1"  # the admin's clients': any Region works, each holds its own keys


@dataclass(frozen=True)
class NewAdmin:
    """The admin user of a principals file this start created: announced once the node is built."""

    path: Path
    access_key: str
    secret: str


def new_admin(settings: ServeSettings, pending: frozenset[str]) -> NewAdmin | None:
    """Create <data-dir>/principals.toml with an admin user unless a principals file is named or
    there; the admin of the one there if a start made it and was killed before printing it."""
    from keytrail.api.credentials import read_admin_principals, write_admin_principals

    path = settings.principals
    if path is None:
        path = settings.data_dir / "principals.toml"
        if not path.exists():
            try:
                return NewAdmin(path, *write_admin_principals(path))
            except OSError as error:  # a read-only data dir, say
                raise serve_fail(f"cannot create {path}: {error.strerror or error}") from None
        if PRINCIPALS in pending and (keys := read_admin_principals(path)):  # else edited: not keytrail's to print
            return NewAdmin(path, *keys)
    elif not path.exists():
        raise serve_fail(f"principals file {path} does not exist")
    return None


def _to_make(settings: ServeSettings, new_trail: bool) -> set[str]:
    """What this start will make and announce: noted before it is made (PendingAnnouncement)."""
    new_principals = settings.principals is None and not (settings.data_dir / "principals.toml").exists()
    made = ((PRINCIPALS, new_principals), (SIGNING_KEY, new_trail), (DEV_CERTIFICATE, dev_certificate_due(settings)))
    return {item for item, will_make in made if will_make}


def noted(settings: ServeSettings, new_trail: bool) -> frozenset[str]:
    """Note what this start will make before it makes it; what is noted now, a killed start's too."""
    pending = PendingAnnouncement(settings.data_dir)
    try:
        return pending.note(_to_make(settings, new_trail))
    except OSError as error:  # a read-only data dir, say; a FIFO in its place
        raise serve_fail(f"cannot note what this start makes in {pending.path}: {error.strerror or error}") from None


def _still_pending(settings: ServeSettings, pending: frozenset[str]) -> set[str]:
    """What a start killed before printing it made and this start could not print: the data dir's
    principals file while another is named, the signing key without the audit trail, the dev
    certificate without --tls-self-signed."""
    unused = ((PRINCIPALS, settings.principals is not None), (SIGNING_KEY, not settings.audit),
              (DEV_CERTIFICATE, not settings.tls_self_signed))
    return {item for item, not_printed in unused if not_printed and item in pending}


def _print_new_admin(admin: NewAdmin, settings: ServeSettings) -> None:
    """The line to paste: the Region under both names the clients read it by, AWS_REGION (the SDKs'
    setting: the JavaScript and Java SDKs read only it, and said "Region is missing") and
    AWS_DEFAULT_REGION (boto3 and the aws CLI v1 read only it)."""
    typer.echo(f"Created {admin.path} with an admin user. To use it:")
    typer.echo(f"export AWS_ACCESS_KEY_ID={admin.access_key} AWS_SECRET_ACCESS_KEY={admin.secret} "
               f"AWS_ENDPOINT_URL_KMS={settings.endpoint} AWS_REGION={_REGION} AWS_DEFAULT_REGION={_REGION}")


def _print_public_key(integrity: IntegrityPaths, data_dir: Path) -> None:
    """Whoever can write the data dir can sign a rewritten trail with a key of their own: only a
    copy of the public key kept off the node tells the two apart, so say so when the key is made."""
    from keytrail.audit.integrity import exported_fingerprint

    typer.echo(f"Created the audit signing key; its public key {integrity.public_key} has the SHA-256 fingerprint "
               f"{exported_fingerprint(integrity)}. Keep a copy off this node and check the trail with: "
               f"keytrail audit verify --data-dir {shlex.quote(str(data_dir))} --public-key COPY")


def remove_what_the_start_made(settings: ServeSettings, hold: DataDirHold, admin: NewAdmin | None,
                               new_trail: bool, failure: BaseException | None = None) -> None:
    """Remove what a start that failed once its key store was open made in the data dir (principals
    file, root key and key store, audit trail and signing key, consumer and detector state, dev
    certificate): no other serve can have made any of it while this one held the data dir. A root
    key made for a PostgreSQL store stays: the store, shared with other nodes, is sealed under it
    now; so does what another program writes, which the start failed on (`failure`). Where the
    data dir could not be held (a file system without locks), only the principals file goes, and
    an audit signing key the start made stays: announced now, or no start ever would."""
    if hold.exclusive:
        hold.remove_new(keep=_kept(settings, failure))
        return
    if admin is not None:
        admin.path.unlink(missing_ok=True)
    if new_trail and not isinstance(failure, LogLockedError):  # else the key is the other program's
        _announce_kept_signing_key(settings)


def _announce_kept_signing_key(settings: ServeSettings) -> None:
    from keytrail.audit.trail import audit_paths

    integrity = audit_paths(settings.data_dir)[1]
    if integrity.private_key.exists():
        _print_public_key(integrity, settings.data_dir)


def _kept(settings: ServeSettings, failure: BaseException | None) -> set[str]:
    """What a failed start leaves of what appeared in its data dir: a root key a PostgreSQL store
    is sealed under, and the audit trail or the consumer's state of the program that holds it
    (`keytrail audit import`, `keytrail consume`), which the start was refused for."""
    from keytrail.cli.node import ConsumerRunning

    kept = {"root.key"} if settings.store is not None else set()
    if isinstance(failure, LogLockedError):
        kept.add("audit")
    if isinstance(failure, ConsumerRunning):
        kept.add("metrics")
    return kept


@dataclass(frozen=True)
class Built:
    """A built node, uvicorn's TLS options, and what this start created, to announce once it runs."""

    node: Node
    tls: dict[str, str]
    admin: NewAdmin | None
    new_trail: bool
    new_certificate: bool
    pending: frozenset[str]  # noted in the data dir until announced (PendingAnnouncement)


def announce(built: Built, settings: ServeSettings) -> OSError | None:
    """Print what this start made; the OSError when stdout could not take it (a pipe whose reader is
    gone, a full disk). The start then stops and removes what it made, as a failed start does: the
    next start would take the principals file and signing key for its own and announce neither, so
    the admin's credentials and the key's fingerprint would be shown nowhere, ever."""
    from keytrail.audit.trail import audit_paths

    try:
        if built.new_certificate:
            print_dev_certificate(Path(built.tls["ssl_certfile"]), settings)
        if built.admin is not None:
            _print_new_admin(built.admin, settings)
        if built.new_trail:
            _print_public_key(audit_paths(settings.data_dir)[1], settings.data_dir)
        sys.stdout.flush()
    except OSError as error:
        stdout_to_devnull()
        return error
    return None


def stdout_to_devnull() -> None:
    """After a write to stdout failed: what stays buffered would fail again as the interpreter
    exits, as a second message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def announced(built: Built, settings: ServeSettings) -> None:
    """What `announce` printed is pending no more; the next start would print it again if the
    note cannot be cleared, which only repeats it to the operator."""
    if not built.pending:
        return
    try:
        PendingAnnouncement(settings.data_dir).keep_only(_still_pending(settings, built.pending))
    except OSError as error:
        log.warning("cannot update %s: %s", PendingAnnouncement(settings.data_dir).path, os_problem(error))
