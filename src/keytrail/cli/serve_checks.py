"""What `keytrail serve` checks of its flags and environment before it builds or writes anything,
each refusal one line on stderr naming the command (`serve_fail`)."""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import typer

from keytrail.cli.console import fail, mqtt_password_warning, url_password
from keytrail.cli.listening import host_port, listen_problem, listening_sockets
from keytrail.config import PROXIES_ENV, STORE_ENV, ServeSettings
from keytrail.owner_only import SharingProblem, sharing_problem

__all__ = ["check_config", "check_data_dir_owned", "check_kafka_access", "check_no_kafka_consumer", "listening",
           "off_loopback", "options_given", "proxies_problem", "serve_fail", "warn_of_password_in_arguments",
           "without_detector", "without_kafka"]

V = TypeVar("V")

# The data dir's files whose owner holds every key: the root key, and the key store with the files
# SQLite shares its owner with (run as root, it gives keys.db-wal and -shm keys.db's owner).
_OWN_FILES = ("root.key", "keys.db", "keys.db-wal", "keys.db-shm")

log = logging.getLogger("keytrail")


def serve_fail(message: str) -> typer.Exit:
    """One line on stderr naming the command, as every keytrail command's errors do."""
    return fail(message, "keytrail serve")


def proxies_problem() -> str | None:
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


def without_kafka(kafka: str | None, options: dict[str, int | None]) -> str | None:
    """Why options that shape the Kafka shipping are refused: given without --kafka, they would be
    ignored, and the operator would believe the topic or the cap set."""
    given = _flags(options)
    if kafka or not given:
        return None
    return f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --kafka"


def without_detector(detector: bool, **options: object) -> str | None:
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
    return ["--" + name.replace("_", "-") for name in options_given(options)]


def options_given(options: Mapping[str, V | None]) -> dict[str, V]:
    """The options given, for ServeSettings: the others keep its defaults."""
    return {name: value for name, value in options.items() if value is not None}


def listening(host: str, port: int) -> list[socket.socket]:
    """The sockets to serve on, listening before anything is built or written, and held until the
    server takes them over: a port merely checked free could be taken while the node is built,
    and uvicorn would find out only then (in its own words, exit status 3, the new admin user's
    credentials printed and their file left). For --port 0 a free one, so the endpoint printed for
    the new admin user is the one served on, not ':0'. Connections made meanwhile wait."""
    try:
        return listening_sockets(host, port)
    except (OSError, UnicodeError) as error:  # socket.gaierror (an unknown --host) is an OSError
        raise serve_fail(f"cannot listen on {host_port(host, port)} ({listen_problem(error)})") from None


def off_loopback(sockets: list[socket.socket]) -> str | None:
    """The first address bound that is not loopback, None if all are: what --dev-credentials checks,
    as --host may be a name resolving to any address, or 0.0.0.0 or :: (every interface)."""
    for sock in sockets:
        address = ipaddress.ip_address(sock.getsockname()[0])
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        if not (mapped or address).is_loopback:
            return str(address)
    return None


def warn_of_password_in_arguments(store: str | None, mqtt: str | None = None) -> None:
    """A command line is readable by every user of the machine (`ps`, /proc/<pid>/cmdline, even
    for serve, which is not dumpable), and a --store or --mqtt URL naming a password puts it there
    (serve's own: its detector child is given the hooks on a pipe)."""
    if store and store != os.environ.get(STORE_ENV) and url_password(store):
        log.warning("--store names the database password on the command line, where every user of this machine "
                    "can read it: give it in $PGPASSWORD or a passfile, or the whole URL in $%s", STORE_ENV)
    if warning := mqtt_password_warning(mqtt):
        log.warning("%s", warning)


def check_no_kafka_consumer(settings: ServeSettings) -> None:
    """Refuse, before anything is built or written, a data dir a `consume --kafka` counts into:
    serve's consumer would count the node's calls there again, from its event log. Without the
    audit trail (--no-audit) serve runs no consumer. Its consumer, in its child or in this process,
    then holds the lock that keeps one from starting meanwhile (cli/sidecar.py, cli/node.py)."""
    from keytrail.pipeline.kafka_lock import kafka_consumers_counting, kafka_consumers_running

    if settings.audit and kafka_consumers_running(settings.data_dir):
        raise serve_fail(kafka_consumers_counting(settings.data_dir))


def check_kafka_access(settings: ServeSettings) -> None:
    """Refuse to start on a Kafka cluster that will not let keytrail in (its TLS certificate does not
    verify, it refuses the SASL credentials, it wants TLS or a client certificate keytrail does not
    offer): the shipper would retry for ever while the spool filled. A broker out of reach is no
    reason: the shipper waits for it, as when it goes down later."""
    if settings.kafka is None:
        return
    import asyncio

    from keytrail.transport.kafka import access_refused

    refused = asyncio.run(access_refused(settings.kafka))
    if refused is not None and refused.silent:
        # Perhaps a TLS broker too slow to answer now, not a plain listener: a node refusing to start
        # while Kafka struggles would serve no calls, where its audit log can keep them until Kafka is back.
        log.warning("--kafka %s: %s (serving on: the shipper retries)", settings.kafka, refused)
    elif refused is not None:
        raise fail(f"--kafka {settings.kafka}: {refused}", "keytrail serve", code=1)


def check_config(path: Path | None) -> None:
    from keytrail.cli.detect import BadInput, detector_settings
    from keytrail.detect.rules import RuleError

    try:
        detector_settings(path)
    except (BadInput, RuleError, ValueError, OSError) as exc:  # ValueError: a [hooks] table gone wrong
        raise serve_fail(f"--config: {exc}") from None


def check_data_dir_owned(data_dir: Path) -> None:
    """Refuse, before anything is written, a data dir another user owns or may write, an existing
    root key or key store in it that another user owns, and a root key file (the data dir's or
    $KEYTRAIL_ROOT_KEY_FILE's) another user may write: they would read or swap the root key and
    the key store, and rename the principals file for their own, as PostgreSQL refuses a data
    directory with "wrong ownership" or "invalid permissions". One others may only read (0755, as
    `mkdir` makes it) is served: what keytrail writes in it is 0600 and 0700."""
    if problem := sharing_problem(data_dir.stat(), chmod="700"):
        word = shlex.quote(str(data_dir))  # the fix is pasted into a shell: a space must not split the path
        if problem.owned:
            raise serve_fail(f"--data-dir: {data_dir} {problem}: its owner could read the root key and the key store: "
                             f"chown -R {os.geteuid()} {word} once you know what it holds is yours, or give "
                             "another --data-dir")
        if problem.changeable:
            raise serve_fail(f"--data-dir: {data_dir} {problem}: they could swap the root key, the principals file or "
                             f"the key store for their own: chmod 700 {word}, or give a new folder inside it "
                             f"(a volume's mount point: {data_dir / 'keytrail'}), which serve makes 0700")
    for path in (data_dir / name for name in _OWN_FILES):
        # The key store, writable by others, has policies and grants they rewrite (the root key
        # file is asked about below, wherever it is).
        problem = _sharing_problem(path)
        if problem and (problem.owned or (problem.changeable and path.name != "root.key")):
            who = "its owner can read it and change it" if problem.owned else "they can change it"
            raise serve_fail(f"--data-dir: {path} {problem}: {who}: {problem.fix} once you know it is yours")
    from keytrail.kms.sealing import root_key_file  # its crypto imports only once serve starts

    key = root_key_file(data_dir)
    if key and (problem := _sharing_problem(key, chmod="600 (or 400)")) and problem.changeable:
        raise serve_fail(f"the root key file {key} {problem}: another user could swap in a root key they know: "
                         f"{problem.fix}")


def _sharing_problem(path: Path, chmod: str = "600") -> SharingProblem | None:
    """`sharing_problem` of a file that may not be there (nor be readable: said later, on opening it)."""
    try:
        return sharing_problem(path.stat(), chmod=chmod)
    except OSError:
        return None
