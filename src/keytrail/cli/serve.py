"""`keytrail serve`: the whole system in one process on embedded defaults."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import shlex
import signal
import socket
import ssl
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from keytrail.cli.console import (
    KAFKA_BOOTSTRAP,
    LISTEN_ADDRESS,
    MQTT_URL,
    STORE_URL,
    address_option,
    bootstrap_problem,
    fail,
    host_port,
    listen_problem,
    listening_sockets,
    mqtt_password_warning,
    mqtt_problem,
    no_core_dumps,
    number_in_range,
    os_problem,
    path_option,
    url_password,
)
from keytrail.cli.pending_announcement import PRINCIPALS, SIGNING_KEY, PendingAnnouncement
from keytrail.config import PROXIES_ENV, STORE_ENV, ServeSettings
from keytrail.log_lines import log_to_stderr
from keytrail.owner_only import make_dirs
from keytrail.transport.segment_log import LogLockedError

# The node (API, key stores, audit trail, consumers, detector, uvicorn) loads when serve runs, not
# with `keytrail serve --help` (cli/commands.py).
if TYPE_CHECKING:
    from keytrail.api.credentials import CredentialStore
    from keytrail.audit.integrity import IntegrityPaths
    from keytrail.cli.data_dir_hold import DataDirHold
    from keytrail.cli.http_server import HttpServer
    from keytrail.cli.node import Node

__all__ = ["register"]

V = TypeVar("V")

log = logging.getLogger("keytrail")

DataDir = Annotated[Path, path_option("--data-dir", help="Where the node keeps everything.")]


@dataclass(frozen=True)
class _NewAdmin:
    """The admin user of a principals file this start created: announced once the node is built."""

    path: Path
    access_key: str
    secret: str


def _new_admin(settings: ServeSettings, pending: frozenset[str]) -> _NewAdmin | None:
    """Create <data-dir>/principals.toml with an admin user unless a principals file is named or
    there; the admin of the one there if a start made it and was killed before printing it."""
    from keytrail.api.credentials import read_admin_principals, write_admin_principals

    path = settings.principals
    if path is None:
        path = settings.data_dir / "principals.toml"
        if not path.exists():
            try:
                return _NewAdmin(path, *write_admin_principals(path))
            except OSError as error:  # a read-only data dir, say
                raise _fail(f"cannot create {path}: {error.strerror or error}") from None
        if PRINCIPALS in pending and (keys := read_admin_principals(path)):  # else edited: not keytrail's to print
            return _NewAdmin(path, *keys)
    elif not path.exists():
        raise _fail(f"principals file {path} does not exist")
    return None


def _to_make(settings: ServeSettings, new_trail: bool) -> set[str]:
    """What this start will make and announce: noted before it is made (PendingAnnouncement)."""
    new_principals = settings.principals is None and not (settings.data_dir / "principals.toml").exists()
    return {item for item, made in ((PRINCIPALS, new_principals), (SIGNING_KEY, new_trail)) if made}


def _noted(settings: ServeSettings, new_trail: bool) -> frozenset[str]:
    """Note what this start will make before it makes it; what is noted now, a killed start's too."""
    pending = PendingAnnouncement(settings.data_dir)
    try:
        return pending.note(_to_make(settings, new_trail))
    except OSError as error:  # a read-only data dir, say
        raise _fail(f"cannot create {pending.path}: {error.strerror or error}") from None


def _still_pending(settings: ServeSettings, pending: frozenset[str]) -> set[str]:
    """What a start killed before printing it made and this start could not print: the data dir's
    principals file while another is named, the signing key without the audit trail."""
    unused = ((PRINCIPALS, settings.principals is not None), (SIGNING_KEY, not settings.audit))
    return {item for item, not_printed in unused if not_printed and item in pending}


def _credentials(settings: ServeSettings, path: Path) -> CredentialStore:
    from keytrail.api.credentials import CredentialStore, PrincipalsFileError

    try:
        return CredentialStore(path, dev_credentials=settings.dev_credentials)
    except PrincipalsFileError as exc:
        raise _fail(str(exc)) from None


def _print_new_admin(admin: _NewAdmin, settings: ServeSettings) -> None:
    typer.echo(f"Created {admin.path} with an admin user. To use it:")
    typer.echo(f"export AWS_ACCESS_KEY_ID={admin.access_key} AWS_SECRET_ACCESS_KEY={admin.secret} "
               f"AWS_ENDPOINT_URL_KMS={settings.endpoint} AWS_DEFAULT_REGION=us-east-1")


def _print_public_key(integrity: IntegrityPaths, data_dir: Path) -> None:
    """Whoever can write the data dir can sign a rewritten trail with a key of their own: only a
    copy of the public key kept off the node tells the two apart, so say so when the key is made."""
    from keytrail.audit.integrity import exported_fingerprint

    typer.echo(f"Created the audit signing key; its public key {integrity.public_key} has the SHA-256 fingerprint "
               f"{exported_fingerprint(integrity)}. Keep a copy off this node and check the trail with: "
               f"keytrail audit verify --data-dir {shlex.quote(str(data_dir))} --public-key COPY")


def _fail(message: str) -> typer.Exit:
    """One line on stderr naming the command, as every keytrail command's errors do."""
    return fail(message, "keytrail serve")


def _check_tls(settings: ServeSettings) -> None:
    """Refuse TLS flags that cannot be served, before anything is built or written."""
    if settings.tls_self_signed and (settings.tls_cert or settings.tls_key):  # else one would be ignored
        raise _fail("--tls-self-signed and --tls-cert/--tls-key exclude each other")
    if settings.tls_self_signed or not (settings.tls_cert or settings.tls_key):
        return
    if not (settings.tls_cert and settings.tls_key):
        raise _fail("--tls-cert and --tls-key go together")
    for option, path in (("--tls-cert", settings.tls_cert), ("--tls-key", settings.tls_key)):
        if not path.is_file():  # a folder named is there: "no such file" sent the operator looking for it
            raise _fail(f"{option}: {'not a file' if path.exists() else 'no such file'}: {path}")
    if problem := _tls_problem(settings.tls_cert, settings.tls_key):
        raise _fail(problem)
    _warn_if_out_of_date(settings.tls_cert)


def _warn_if_out_of_date(cert: Path) -> None:
    """Served all the same (a client that does not check it still works, and a renewed file needs a
    restart): but every SDK and the aws CLI refuse each connection, and the node said nothing."""
    from keytrail.cli.tls import out_of_date

    if problem := out_of_date(cert):
        log.warning("--tls-cert %s %s: clients that check it (the AWS SDKs, the aws CLI) refuse every connection; "
                    "renew it and restart", cert, problem)


def _tls(settings: ServeSettings) -> tuple[dict[str, str], bool]:
    """uvicorn's TLS options from flags `_check_tls` let through, and whether the dev certificate
    was made now (announced once the node runs)."""
    if settings.tls_self_signed:
        from keytrail.cli.tls import dev_certificate_usable, self_signed_certificate

        try:
            made = not dev_certificate_usable(settings.data_dir / "tls", settings.client_host)
            cert, key = self_signed_certificate(settings.data_dir / "tls", settings.client_host)
        except OSError as error:
            raise _fail(f"--tls-self-signed: cannot write the dev certificate: {os_problem(error)}") from None
        return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}, made
    if settings.tls_cert and settings.tls_key:
        return {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}, False
    return {}, False


def _print_dev_certificate(cert: Path, settings: ServeSettings) -> None:
    """Clients must trust the new certificate and call https://: a data dir whose principals file
    exists already prints no `export` line, and the one printed before named http://. The path is
    quoted as the shell needs (a data dir with a space in its path), as the line is there to be pasted."""
    names = ", ".join(dict.fromkeys(("localhost", "127.0.0.1", settings.client_host)))
    typer.echo(f"Created the dev certificate {cert} ({names}). To use it:")
    typer.echo(f"export AWS_CA_BUNDLE={shlex.quote(str(cert))} AWS_ENDPOINT_URL_KMS={settings.endpoint}")


def _tls_problem(cert: Path, key: Path) -> str | None:
    """Why TLS cannot be served with these files, found before anything is built or written:
    uvicorn finds out only once the node runs, and says it in OpenSSL's words. The empty password
    makes an encrypted key an error here rather than OpenSSL's prompt on the terminal."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key, password="")
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            return f"--tls-key {key} is not the private key of --tls-cert {cert}"
        return f"--tls-cert {cert} and --tls-key {key} are not a PEM certificate and its unencrypted key"
    except OSError as error:  # unreadable
        return f"cannot read the TLS files: {os_problem(error)}"
    return None


def serve(
    data_dir: DataDir = Path("keytrail-data"),
    host: Annotated[str, address_option(help="Address to listen on.", give=LISTEN_ADDRESS)] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=0, max=65535)] = 4599,
    principals: Annotated[Path | None, path_option(help="Principals file (TOML).")] = None,
    kafka: Annotated[str | None, address_option(
        help="Kafka bootstrap servers for the audit stream.", give=KAFKA_BOOTSTRAP)] = None,
    mqtt: Annotated[str | None, address_option(
        help="MQTT broker for alarms, mqtt://HOST:PORT.", give=MQTT_URL)] = None,
    dev_clock: Annotated[bool, typer.Option("--dev-clock", help="Allow moving time forward.")] = False,
    dev_credentials: Annotated[bool, typer.Option("--dev-credentials", help="Accept any access key.")] = False,
    tls_cert: Annotated[Path | None, path_option(help="TLS certificate (PEM).")] = None,
    tls_key: Annotated[Path | None, path_option(help="TLS private key (PEM).")] = None,
    tls_self_signed: Annotated[bool, typer.Option("--tls-self-signed", help="HTTPS with a dev certificate.")] = False,
    config: Annotated[Path | None, path_option(
        help="Settings file: detection rules ([rules.<id>]) and alarm hooks ([hooks]: webhooks, MQTT, Kafka).")] = None,
    store: Annotated[str | None, address_option(
        envvar=STORE_ENV, show_envvar=True, give=STORE_URL,
        help="Shared key store, postgresql://USER@HOST:PORT/DB (the password in $PGPASSWORD or a passfile) "
             "(default: SQLite in the data dir).")] = None,
    digest_interval: Annotated[float, typer.Option(
        "--digest-interval", metavar="SECONDS", callback=number_in_range(1, 86_400),  # not min/max: they let NaN by
        help="How often the node signs an audit digest, 1 to 86400, new records or not (CloudTrail: hourly); "
             "`audit verify` flags a longer silence.")] = 3600.0,
    scheduler_interval: Annotated[float, typer.Option(
        "--scheduler-interval", metavar="SECONDS", callback=number_in_range(1, 3600),
        help="How often the node runs its scheduled work, 1 to 3600: due rotations and deletions, and the "
             "HSM upkeep of custom key stores (docs/custom-key-stores.md).")] = 30.0,
    retention_hours: Annotated[float | None, typer.Option(
        "--retention-hours", metavar="HOURS", callback=number_in_range(1, 876_000),
        help="Delete closed event log segments older than this, 1 to 876000 (default: keep every record); "
             "never records Kafka has not acknowledged. Checked each digest interval and as a segment closes.")] = None,
    retention_bytes: Annotated[int | None, typer.Option(
        "--retention-bytes", metavar="BYTES", min=1,
        help="Delete the oldest closed event log segments while the log is larger than this (default: keep "
             "every record); never records Kafka has not acknowledged.")] = None,
    kafka_partitions: Annotated[int | None, typer.Option(
        "--kafka-partitions", metavar="N", min=1, max=10_000,
        help="Partitions of the audit topic, if serve creates it (it does when it is missing) (default: 3). "
             "With --kafka.")] = None,
    kafka_replication_factor: Annotated[int | None, typer.Option(
        "--kafka-replication-factor", metavar="N", min=1, max=100,
        help="Brokers each partition of the audit topic is kept on, if serve creates it (default: 1; "
             "3 on a production cluster). With --kafka.")] = None,
    max_unshipped_bytes: Annotated[int | None, typer.Option(
        "--max-unshipped-bytes", metavar="BYTES", min=1 << 20,
        help="Audit log Kafka may lag behind (broker down) before KMS calls are refused, at least 1 MiB "
             "(default: 1 GiB). With --kafka.")] = None,
    detector: Annotated[bool, typer.Option(
        "--detector/--no-detector",
        help="Run the detector in this process (turn off where `keytrail detect --kafka` runs).")] = True,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", hidden=True,
                                        help="Benchmarks only: serve without the audit trail.")] = True,
) -> None:
    """Serve the AWS KMS API with the audit trail, consumers and detector in one process."""
    log_to_stderr()
    no_core_dumps()
    kafka_shipping = {"kafka_partitions": kafka_partitions, "kafka_replication_factor": kafka_replication_factor,
                      "max_unshipped_bytes": max_unshipped_bytes}  # ServeSettings' names, the flags' too
    if problem := (bootstrap_problem(kafka) or mqtt_problem(mqtt) or _without_kafka(kafka, kafka_shipping)
                   or _without_detector(detector, mqtt=mqtt, config=config) or _proxies_problem()):
        raise _fail(problem)
    sockets = _listening(host, port)
    try:
        if dev_credentials and (public := _off_loopback(sockets)):
            raise _fail(f"--dev-credentials is refused unless the server binds to loopback only; --host {host} "
                        f"binds {public}")
        _start(ServeSettings(
            data_dir=data_dir, host=host, port=sockets[0].getsockname()[1], principals=principals, kafka=kafka,
            mqtt=mqtt, dev_clock=dev_clock, dev_credentials=dev_credentials, tls_cert=tls_cert, tls_key=tls_key,
            tls_self_signed=tls_self_signed, audit=audit, detector=detector, store=store, config=config,
            digest_interval_seconds=digest_interval, scheduler_interval_seconds=scheduler_interval,
            retention_hours=retention_hours, retention_bytes=retention_bytes,
            **_given(kafka_shipping),
        ), sockets)
    finally:
        for sock in sockets:
            sock.close()


def _proxies_problem() -> str | None:
    """Why $FORWARDED_ALLOW_IPS (the proxies trusted to report a caller's address, docs/operations.md)
    cannot be used: uvicorn keeps an entry that is no address or network (a host name, a port,
    10.0.0.5/24's host bits, `*` among others) as a literal it compares with the peer's address,
    which never matches, so the proxy was silently not trusted and its address recorded for
    every caller behind it."""
    value = os.environ.get(PROXIES_ENV)
    if not value or value == "*":  # uvicorn: unset trusts none, "*" alone every peer
        return None
    for entry in filter(None, (item.strip() for item in value.split(","))):
        try:
            ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError as error:
            return (f"${PROXIES_ENV}: {entry!r} is no IP address or network ({error}): name the proxies as "
                    "10.0.0.5 or 10.0.0.0/24, comma-separated, or * alone to trust every peer")
    return None


def _without_kafka(kafka: str | None, options: dict[str, int | None]) -> str | None:
    """Why options that shape the Kafka shipping are refused: given without --kafka, they would be
    ignored, and the operator would believe the topic or the cap set."""
    given = _flags(options)
    if kafka or not given:
        return None
    return f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --kafka"


def _without_detector(detector: bool, **options: object) -> str | None:
    """Why options only the detector reads (its alarm hooks, its rules) are refused with
    --no-detector: no alarm would ever reach the MQTT broker or the webhooks they name."""
    given = _flags(options)
    if detector or not given:
        return None
    one = len(given) == 1
    return (f"{', '.join(given)} {'is' if one else 'are'} read only by the detector, which --no-detector turns off: "
            f"give {'it' if one else 'them'} to `keytrail detect --kafka` instead")


def _flags(options: Mapping[str, object]) -> list[str]:
    """The flags of the options given (`kafka_partitions` → `--kafka-partitions`)."""
    return ["--" + name.replace("_", "-") for name in _given(options)]


def _given(options: Mapping[str, V | None]) -> dict[str, V]:
    """The options given, for ServeSettings: the others keep its defaults."""
    return {name: value for name, value in options.items() if value is not None}


def _start(settings: ServeSettings, sockets: list[socket.socket]) -> None:
    """Build the node and serve it on `sockets` until stopped; one line on stderr if it cannot be."""
    if settings.dev_credentials:
        log.warning("--dev-credentials: any access key is accepted WITHOUT signature checks")
    _warn_of_password_in_arguments(settings.store, settings.mqtt)
    with _data_dir_made(settings.data_dir):
        hold = _hold(settings.data_dir)
        try:
            _check_no_kafka_consumer(settings)
            _check_config(settings.config)
            _check_tls(settings)  # before anything is written: a wrong flag leaves nothing behind
            _run(settings, sockets, hold)
        finally:
            hold.release()


def _hold(data_dir: Path) -> DataDirHold:
    from keytrail.cli.data_dir_hold import DataDirBusy, DataDirHold

    try:
        return DataDirHold.take(data_dir)
    except DataDirBusy as exc:
        raise _fail(str(exc)) from None
    except OSError as error:  # the data dir, or what of serve's it looks into (metrics/consumer.lock, say)
        raise _fail(f"--data-dir: cannot open {error.filename or data_dir}: {error.strerror or error}") from None


def _run(settings: ServeSettings, sockets: list[socket.socket], hold: DataDirHold) -> None:
    import uvloop

    from keytrail.cli.key_store import StoreUnavailable
    from keytrail.cli.node import ConsumerRunning, DetectorRunning

    try:
        uvloop.run(_serve(settings, sockets, hold))
    except (StoreUnavailable, ConsumerRunning, DetectorRunning) as exc:
        raise _fail(str(exc)) from None
    except LogLockedError as exc:  # `keytrail audit import` writes this data dir's audit trail, say
        raise _fail(f"{exc}: is another keytrail serve running on --data-dir {settings.data_dir}?") from None
    except OSError as exc:  # the root key, key store or audit trail cannot be opened (a read-only data dir)
        raise _fail(os_problem(exc)) from None


def _warn_of_password_in_arguments(store: str | None, mqtt: str | None = None) -> None:
    """A command line is readable by every user of the machine (`ps`, /proc/<pid>/cmdline, even
    for serve, which is not dumpable), and a --store or --mqtt URL naming a password puts it there
    (serve's own: its detector child is given the hooks on a pipe)."""
    if store and store != os.environ.get(STORE_ENV) and url_password(store):
        log.warning("--store names the database password on the command line, where every user of this machine "
                    "can read it: give it in $PGPASSWORD or a passfile, or the whole URL in $%s", STORE_ENV)
    if warning := mqtt_password_warning(mqtt):
        log.warning("%s", warning)


def _listening(host: str, port: int) -> list[socket.socket]:
    """The sockets to serve on, listening before anything is built or written, and held until the
    server takes them over: a port merely checked free could be taken while the node is built,
    and uvicorn would find out only then (in its own words, exit status 3, the new admin user's
    credentials printed and their file left). For --port 0 a free one, so the endpoint printed for
    the new admin user is the one served on, not ':0'. Connections made meanwhile wait."""
    try:
        return listening_sockets(host, port)
    except (OSError, UnicodeError) as error:  # socket.gaierror (an unknown --host) is an OSError
        raise _fail(f"cannot listen on {host_port(host, port)} ({listen_problem(error)})") from None


def _off_loopback(sockets: list[socket.socket]) -> str | None:
    """The first address bound that is not loopback, None if all are: what --dev-credentials checks,
    as --host may be a name resolving to any address, or 0.0.0.0 or :: (every interface)."""
    for sock in sockets:
        address = ipaddress.ip_address(sock.getsockname()[0])
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if not (mapped or address).is_loopback:
            return str(address)
    return None


@contextlib.contextmanager
def _data_dir_made(data_dir: Path) -> Iterator[None]:
    """Make the data dir, and its missing parents; a start refused meanwhile removes those it made,
    once empty (what the start wrote in them is removed first): a malformed --principals, --config
    or --tls-cert file, or a --store that cannot be used, left a new empty data dir behind (a
    typo'd --data-dir became a folder). What is not empty stays, as what another program put there."""
    made = [folder for folder in (*reversed(data_dir.parents), data_dir) if not folder.exists()]
    _make_data_dir(data_dir)
    try:
        yield
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # not empty: kept, and so are its parents
                folder.rmdir()
        raise


def _make_data_dir(data_dir: Path) -> None:
    try:
        # Owner only: it holds the root key, principals, the audit trail and what is derived from it.
        make_dirs(data_dir)
    except FileExistsError:
        raise _fail(f"--data-dir: {data_dir} is not a directory") from None
    except OSError as error:
        raise _fail(f"--data-dir: cannot create {data_dir}: {error.strerror or error}") from None


def _check_no_kafka_consumer(settings: ServeSettings) -> None:
    """Refuse, before anything is built or written, a data dir a `consume --kafka` counts into:
    serve's consumer would count the node's calls there again, from its event log. Without the
    audit trail (--no-audit) serve runs no consumer. Its consumer, in its child or in this process,
    then holds the lock that keeps one from starting meanwhile (cli/sidecar.py, cli/node.py)."""
    from keytrail.pipeline.kafka_lock import kafka_consumers_counting, kafka_consumers_running

    if settings.audit and kafka_consumers_running(settings.data_dir):
        raise _fail(kafka_consumers_counting(settings.data_dir))


def _check_config(path: Path | None) -> None:
    from keytrail.cli.detect import BadInput, detector_settings
    from keytrail.detect.rules import RuleError

    try:
        detector_settings(path)
    except (BadInput, RuleError, ValueError, OSError) as exc:  # ValueError: a [hooks] table gone wrong
        raise _fail(f"--config: {exc}") from None


async def _serve(settings: ServeSettings, sockets: list[socket.socket], hold: DataDirHold) -> None:
    """Build the node, start it, announce what this start created, and serve until stopped. Not
    in uvicorn's lifespan: there a failed start was uvicorn's traceback and exit status 3."""
    from keytrail.cli.http_server import HttpServer
    from keytrail.cli.node import stop_node

    with _StopAsked.caught() as asked:  # SIGTERM while the node is built: stopped once started, exit 0
        built = await _built_node(settings, hold)
        server = HttpServer(built.node.app, settings, built.tls, built.node.http_refusals)
        with server.stop_requests():  # and from here, while it starts and serves
            if asked.stop:
                server.request_stop()
            await _started(built, server, settings, hold)
            try:
                unannounced = _announce(built, settings)
                if unannounced is None:
                    _announced(built, settings)
                    _print_listening(sockets, settings)
                    await server.serve(sockets)
            finally:
                await stop_node(built.node)
    if unannounced is not None:  # the credentials and the fingerprint were printed nowhere
        _remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        raise _fail(f"could not print what this start made to stdout ({os_problem(unannounced)}), so it was removed: "
                    "start again with stdout where you can read it")


class _StopAsked:
    """SIGTERM and SIGINT while the node is built, noted for the HTTP server to stop as soon as the
    node has started. By their default action the process died half-built, leaving a principals
    file, root key or audit signing key that no line announced, for a retry to take as its own."""

    def __init__(self) -> None:
        self.stop = False

    @classmethod
    @contextlib.contextmanager
    def caught(cls) -> Iterator[_StopAsked]:
        asked = cls()
        previous = {sig: signal.signal(sig, asked._note) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield asked
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True


async def _started(built: _Built, server: HttpServer, settings: ServeSettings, hold: DataDirHold) -> None:
    """Start the node, its HTTP server ready to serve. A failed start is one line, and the data
    dir is left as it was before: a retry would take a principals file, root key or signing key
    left behind for its own and announce none of them, and the failed start announced none either."""
    from keytrail.cli.key_store import without_password
    from keytrail.cli.node import StartFailed, start_node, stop_node

    try:
        server.load()
    except Exception as exc:  # the TLS files replaced since serve checked them, say
        await stop_node(built.node, quiet=True)
        _remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        raise _fail(f"the HTTP server did not start: {os_problem(exc) if isinstance(exc, OSError) else exc}") from None
    try:
        await start_node(built.node)  # what started is stopped again if it fails
    except BaseException as exc:
        _remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        if isinstance(exc, StartFailed):
            raise _fail(without_password(str(exc), settings.store)) from None
        raise


def _remove_what_the_start_made(settings: ServeSettings, hold: DataDirHold, admin: _NewAdmin | None,
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
class _Built:
    """A built node, uvicorn's TLS options, and what this start created, to announce once it runs."""

    node: Node
    tls: dict[str, str]
    admin: _NewAdmin | None
    new_trail: bool
    new_certificate: bool
    pending: frozenset[str]  # noted in the data dir until announced (PendingAnnouncement)


def _announce(built: _Built, settings: ServeSettings) -> OSError | None:
    """Print what this start made; the OSError when stdout could not take it (a pipe whose reader is
    gone, a full disk). The start then stops and removes what it made, as a failed start does: the
    next start would take the principals file and signing key for its own and announce neither, so
    the admin's credentials and the key's fingerprint would be shown nowhere, ever."""
    from keytrail.audit.trail import audit_paths

    try:
        if built.new_certificate:
            _print_dev_certificate(Path(built.tls["ssl_certfile"]), settings)
        if built.admin is not None:
            _print_new_admin(built.admin, settings)
        if built.new_trail:
            _print_public_key(audit_paths(settings.data_dir)[1], settings.data_dir)
        sys.stdout.flush()
    except OSError as error:
        _stdout_to_devnull()
        return error
    return None


def _print_listening(sockets: list[socket.socket], settings: ServeSettings) -> None:
    """Say, on every start, where the node listens and which data dir it serves: a restart
    announces nothing else, so the operator (or a supervisor's log) had no sign that it was up,
    on which address, or over which data dir. A stdout no one reads is no reason not to serve."""
    addresses = " and ".join(f"{settings.scheme}://{_address(sock)}" for sock in sockets)
    try:
        typer.echo(f"keytrail serve: listening on {addresses}, data dir {settings.data_dir.absolute()}")
        sys.stdout.flush()
    except OSError:
        _stdout_to_devnull()


def _address(sock: socket.socket) -> str:
    """HOST:PORT a socket is bound to, an IPv6 address in brackets (RFC 3986)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


def _stdout_to_devnull() -> None:
    """After a write to stdout failed: what stays buffered would fail again as the interpreter
    exits, as a second message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _announced(built: _Built, settings: ServeSettings) -> None:
    """What `_announce` printed is pending no more; the next start would print it again if the
    note cannot be cleared, which only repeats it to the operator."""
    if not built.pending:
        return
    try:
        PendingAnnouncement(settings.data_dir).keep_only(_still_pending(settings, built.pending))
    except OSError as error:
        log.warning("cannot update %s: %s", PendingAnnouncement(settings.data_dir).path, os_problem(error))


async def _built_node(settings: ServeSettings, hold: DataDirHold) -> _Built:
    """The node, built but not started. The key store opens first, and a build that fails after
    that leaves the data dir as a failed start does (`_remove_what_the_start_made`): a principals
    file or audit signing key it made would be taken by a retry for its own, which would announce
    neither (no `export` line, no fingerprint), and the failed start announced none either (a
    locked audit trail, a consumer running, an audit trail that does not open)."""
    from keytrail.audit.trail import audit_paths
    from keytrail.cli.key_store import open_store
    from keytrail.cli.node import build_node

    store = await open_store(settings)
    admin = None
    new_trail = settings.audit and not audit_paths(settings.data_dir)[1].private_key.exists()
    try:
        pending = _noted(settings, new_trail)
        new_trail = settings.audit and (new_trail or SIGNING_KEY in pending)
        tls, new_certificate = _tls(settings)
        admin = _new_admin(settings, pending)
        credentials = _credentials(settings, settings.principals or settings.data_dir / "principals.toml")
        node = await build_node(settings, credentials, store, lifespan=False)
    except BaseException as exc:
        await store.close()
        _remove_what_the_start_made(settings, hold, admin, new_trail, exc)
        raise
    return _Built(node, tls, admin, new_trail, new_certificate, pending)


def register(app: typer.Typer) -> None:
    app.command()(serve)
