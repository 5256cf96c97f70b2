"""`keytrail serve`: the whole system in one process on embedded defaults."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from keytrail.cli.command_line import hide_url_passwords
from keytrail.cli.console import (
    KAFKA_BOOTSTRAP,
    MQTT_URL,
    STORE_URL,
    address_option,
    bootstrap_problem,
    mqtt_problem,
    no_core_dumps,
    number_in_range,
    os_problem,
    path_option,
)
from keytrail.cli.hook_secrets import withdraw_hook_secrets
from keytrail.cli.listening import listen_option
from keytrail.cli.pending_announcement import DEV_CERTIFICATE, SIGNING_KEY
from keytrail.cli.serve_checks import (
    check_config,
    check_data_dir_owned,
    check_kafka_access,
    check_no_kafka_consumer,
    listening,
    off_loopback,
    options_given,
    proxies_problem,
    serve_fail,
    warn_of_password_in_arguments,
    without_detector,
    without_kafka,
)
from keytrail.cli.serve_tls import check_tls, tls_options
from keytrail.cli.start_made import (
    Built,
    announce,
    announced,
    new_admin,
    noted,
    remove_what_the_start_made,
    stdout_to_devnull,
)
from keytrail.config import STORE_ENV, ServeSettings
from keytrail.log_lines import log_to_stderr
from keytrail.owner_only import make_dirs
from keytrail.transport.segment_log import LogLockedError

# The node (API, key stores, audit trail, consumers, detector, uvicorn) loads when serve runs, not
# with `keytrail serve --help` (cli/commands.py).
if TYPE_CHECKING:
    from keytrail.api.credentials import CredentialStore
    from keytrail.cli.data_dir_hold import DataDirHold
    from keytrail.cli.http_server import HttpServer
    from keytrail.cli.node import Node

__all__ = ["register"]

log = logging.getLogger("keytrail")

# A stop that left part of the node unstopped (the final audit digest not written: a full disk).
# Exit 0 says the spool was flushed (docs/contracts.md), 2 a start refused; 1, as for a command that
# ran but could not finish its work (`audit export` onto a full disk), tells a supervisor that the
# data dir is not the clean stop's that backups wait for (docs/operations.md, Backup and restore).
STOP_FAILED_EXIT = 1

DataDir = Annotated[Path, path_option("--data-dir", help="Where the node keeps everything.")]


def _credentials(settings: ServeSettings, path: Path) -> CredentialStore:
    from keytrail.api.credentials import CredentialStore, PrincipalsFileError

    try:
        return CredentialStore(path, dev_credentials=settings.dev_credentials)
    except PrincipalsFileError as exc:
        raise serve_fail(str(exc)) from None


def serve(
    data_dir: DataDir = Path("keytrail-data"),
    host: Annotated[str, listen_option(help="Address to listen on.", port_option="--port")] = "127.0.0.1",
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
    drain_seconds: Annotated[float, typer.Option(
        "--drain-seconds", metavar="SECONDS", callback=number_in_range(0, 3600),
        help="On SIGTERM, serve calls on for this long, 0 to 3600, while /_keytrail/health answers 503 "
             "\"draining\", so that a load balancer takes the node out first (default: 0: stop accepting at "
             "once).")] = 0.0,
    detector: Annotated[bool, typer.Option(
        "--detector/--no-detector",
        help="Run the detector in this process (turn off where `keytrail detect --kafka` runs).")] = True,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", hidden=True,
                                        help="Benchmarks only: serve without the audit trail.")] = True,
) -> None:
    """Serve the AWS KMS API with the audit trail, consumers and detector in one process."""
    with _ReloadAsked.noted() as reload_asked:  # first of all: from here a SIGHUP no longer kills serve
        log_to_stderr()
        no_core_dumps()
        kafka_shipping = {"kafka_partitions": kafka_partitions, "kafka_replication_factor": kafka_replication_factor,
                          "max_unshipped_bytes": max_unshipped_bytes}  # ServeSettings' names, the flags' too
        if problem := (bootstrap_problem(kafka) or mqtt_problem(mqtt) or without_kafka(kafka, kafka_shipping)
                       or without_detector(detector, mqtt=mqtt, config=config) or proxies_problem()):
            raise serve_fail(problem)
        sockets = listening(host, port)
        try:
            if dev_credentials and (public := off_loopback(sockets)):
                raise serve_fail(f"--dev-credentials is refused unless the server binds to loopback only; "
                                 f"--host {host} binds {public}")
            _start(ServeSettings(
                data_dir=data_dir, host=host, port=sockets[0].getsockname()[1], principals=principals, kafka=kafka,
                mqtt=mqtt, dev_clock=dev_clock, dev_credentials=dev_credentials, tls_cert=tls_cert, tls_key=tls_key,
                tls_self_signed=tls_self_signed, audit=audit, detector=detector, store=store, config=config,
                digest_interval_seconds=digest_interval, scheduler_interval_seconds=scheduler_interval,
                retention_hours=retention_hours, retention_bytes=retention_bytes, drain_seconds=drain_seconds,
                hook_secrets={},  # taken from the environment once --config is checked (_start)
                **options_given(kafka_shipping),
            ), sockets, reload_asked)
        finally:
            for sock in sockets:
                sock.close()


def _start(settings: ServeSettings, sockets: list[socket.socket], reload_asked: _ReloadAsked) -> None:
    """Build the node and serve it on `sockets` until stopped; one line on stderr if it cannot be."""
    if settings.dev_credentials:
        log.warning("--dev-credentials: any access key is accepted WITHOUT signature checks")
    warn_of_password_in_arguments(settings.store, settings.mqtt)
    hide_url_passwords([settings.store, settings.mqtt])  # from `ps` for as long as serve runs
    with _data_dir_made(settings.data_dir):
        check_data_dir_owned(settings.data_dir)  # before it is held: a data dir refused is left as it was
        hold = _hold(settings.data_dir)
        try:
            check_no_kafka_consumer(settings)
            check_config(settings.config)
            check_tls(settings)  # before anything is written: a wrong flag leaves nothing behind
            check_kafka_access(settings)
            _run(replace(settings, hook_secrets=withdraw_hook_secrets(settings.config)), sockets, hold, reload_asked)
        finally:
            hold.release()


def _hold(data_dir: Path) -> DataDirHold:
    from keytrail.cli.data_dir_hold import DataDirBusy, DataDirHold

    try:
        return DataDirHold.take(data_dir)
    except DataDirBusy as exc:
        raise serve_fail(str(exc)) from None
    except OSError as error:  # the data dir, or what of serve's it looks into (metrics/consumer.lock, say)
        raise serve_fail(f"--data-dir: cannot open {error.filename or data_dir}: {error.strerror or error}") from None


def _run(settings: ServeSettings, sockets: list[socket.socket], hold: DataDirHold, reload_asked: _ReloadAsked) -> None:
    import uvloop

    from keytrail.cli.key_store import StoreUnavailable
    from keytrail.cli.node import ConsumerRunning, DetectorRunning

    try:
        uvloop.run(_serve(settings, sockets, hold, reload_asked))
    except (StoreUnavailable, ConsumerRunning, DetectorRunning) as exc:
        raise serve_fail(str(exc)) from None
    except LogLockedError as exc:  # the lock does not say which of the programs that take it holds it
        raise serve_fail(f"{exc}: another keytrail serve, keytrail root-key rotate or keytrail audit import on "
                         f"--data-dir {settings.data_dir}: stop it, or let it finish, first") from None
    except OSError as exc:  # the root key, key store or audit trail cannot be opened (a read-only data dir)
        raise serve_fail(os_problem(exc)) from None


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
        raise serve_fail(f"--data-dir: {data_dir} is not a directory") from None
    except OSError as error:
        raise serve_fail(f"--data-dir: cannot create {data_dir}: {error.strerror or error}") from None


async def _serve(settings: ServeSettings, sockets: list[socket.socket], hold: DataDirHold,
                 reload_asked: _ReloadAsked) -> None:
    """Build the node, start it, announce what this start created, and serve until stopped. Not
    in uvicorn's lifespan: there a failed start was uvicorn's traceback and exit status 3."""
    from keytrail.cli.http_server import HttpServer
    from keytrail.cli.node import stop_node

    with _StopAsked.caught() as asked:  # SIGTERM while the node is built: stopped once started, exit 0
        built = await _built_node(settings, hold)
        server = HttpServer(built.node.app, settings, built.tls, built.node.http_refusals, built.node.drain)
        with server.stop_requests():  # and from here, while it starts and serves
            if asked.stop:
                server.request_stop()
            await _started(built, server, settings, hold)
            reload_asked.reload_owed(built.node)
            try:
                unannounced = announce(built, settings)
                if unannounced is None:
                    announced(built, settings)
                    _print_listening(sockets, settings)
                    await server.serve(sockets)
            finally:
                stopped = await stop_node(built.node)
    if unannounced is not None:  # the credentials and the fingerprint were printed nowhere
        remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        raise serve_fail(f"could not print what this start made to stdout ({os_problem(unannounced)}), so it was "
                         "removed: start again with stdout where you can read it")
    if not stopped:  # its ERROR line said which part and why: no second line
        raise typer.Exit(STOP_FAILED_EXIT)


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


class _ReloadAsked:
    """SIGHUP from serve's first moment until the node's own handler takes it over as the node
    starts (cli/node.py): by its default action a supervisor's `reload` right after its `start`
    killed serve in silence (exit status 129), half-built. Noted here, and the principals file is
    re-read once the node has started: it may have changed since serve read it. Not SIG_IGN, which
    the processes serve starts (consumer, detector, shipper, fsync helper) would inherit across
    exec; a handler is reset to the default action in them."""

    def __init__(self) -> None:
        self.arrived = False

    @classmethod
    @contextlib.contextmanager
    def noted(cls) -> Iterator[_ReloadAsked]:
        asked = cls()
        previous = signal.signal(signal.SIGHUP, asked._note)
        try:
            yield asked
        finally:
            signal.signal(signal.SIGHUP, previous)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.arrived = True

    def reload_owed(self, node: Node) -> None:
        """Re-read the principals and settings files if a SIGHUP came before the node's handler was installed."""
        from keytrail.cli.node import reload_files

        if self.arrived:
            reload_files(node)


async def _started(built: Built, server: HttpServer, settings: ServeSettings, hold: DataDirHold) -> None:
    """Start the node, its HTTP server ready to serve. A failed start is one line, and the data
    dir is left as it was before: a retry would take a principals file, root key or signing key
    left behind for its own and announce none of them, and the failed start announced none either."""
    from keytrail.cli.key_store import without_password
    from keytrail.cli.node import StartFailed, start_node, stop_node

    try:
        server.load()
    except Exception as exc:  # the TLS files replaced since serve checked them, say
        await stop_node(built.node, quiet=True)
        remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        raise serve_fail(
            f"the HTTP server did not start: {os_problem(exc) if isinstance(exc, OSError) else exc}") from None
    try:
        await start_node(built.node)  # what started is stopped again if it fails
    except BaseException as exc:
        remove_what_the_start_made(settings, hold, built.admin, built.new_trail)
        if isinstance(exc, StartFailed):
            raise serve_fail(without_password(str(exc), settings.store)) from None
        raise


def _print_listening(sockets: list[socket.socket], settings: ServeSettings) -> None:
    """Say, on every start, where the node listens and which data dir it serves: a restart
    announces nothing else, so the operator (or a supervisor's log) had no sign that it was up,
    on which address, or over which data dir. A stdout no one reads is no reason not to serve."""
    addresses = " and ".join(f"{settings.scheme}://{_address(sock)}" for sock in sockets)
    try:
        typer.echo(f"keytrail serve: listening on {addresses}, data dir {settings.data_dir.absolute()}")
        sys.stdout.flush()
    except OSError:
        stdout_to_devnull()


def _address(sock: socket.socket) -> str:
    """HOST:PORT a socket is bound to, an IPv6 address in brackets (RFC 3986)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if sock.family == socket.AF_INET6 else f"{host}:{port}"


async def _built_node(settings: ServeSettings, hold: DataDirHold) -> Built:
    """The node, built but not started. The key store opens first, and a build that fails after
    that leaves the data dir as a failed start does (`remove_what_the_start_made`): a principals
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
        pending = noted(settings, new_trail)
        new_trail = settings.audit and (new_trail or SIGNING_KEY in pending)
        tls, new_certificate = tls_options(settings)
        new_certificate = new_certificate or (settings.tls_self_signed and DEV_CERTIFICATE in pending)
        admin = new_admin(settings, pending)
        credentials = _credentials(settings, settings.principals_file)
        node = await build_node(settings, credentials, store, lifespan=False)
    except BaseException as exc:
        await store.close()
        remove_what_the_start_made(settings, hold, admin, new_trail, exc)
        raise
    return Built(node, tls, admin, new_trail, new_certificate, pending)


def register(app: typer.Typer) -> None:
    app.command()(serve)
