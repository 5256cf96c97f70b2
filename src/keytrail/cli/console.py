"""What the commands share: one-line errors; checks of numbers, paths and Kafka and MQTT addresses;
SIGTERM unwound as Ctrl-C; no core dumps; and the event log's damage, said rather than an answer
from part of it. Listening sockets are in cli/listening.py, --since and --until in cli/time_window.py."""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import typer

from keytrail.shown_text import printable
from keytrail.transport.addresses import UNBRACKETED_IPV6, host_port_problem, redacted
from keytrail.transport.segment_log import SegmentLog, event_log_dir

if TYPE_CHECKING:
    from keytrail.pipeline.prices import PriceTable

__all__ = ["CLOUDTRAIL_COMMAND", "CLOUDTRAIL_HELP", "CLOUDTRAIL_METAVAR", "FREE_TIER_HELP", "KAFKA_BOOTSTRAP",
           "LISTEN_ADDRESS", "MQTT_URL", "STORE_URL", "Terminated", "address_option", "bootstrap_problem",
           "cloudtrail_paths", "counted", "event_log_damage", "fail", "first_given", "given", "interrupted_status",
           "log_files_problem", "missing_paths", "mqtt_password_warning", "mqtt_problem", "named_path", "no_core_dumps",
           "number_in_range", "os_problem", "path_option", "price_table", "printable", "terminate_as_interrupt",
           "url_password", "url_secrets"]

#: The metavar of `--cloudtrail`: typer would show the annotation (`<list[Path]>`).
CLOUDTRAIL_METAVAR = "<path>…"
CLOUDTRAIL_HELP = ("CloudTrail log files or folders (.json, .json.gz; lookup-events, CloudWatch Logs, EventBridge "
                   "and JSON lines shapes too; - for standard input): several after one --cloudtrail, or repeat it.")

#: The help of `--free-tier/--no-free-tier` (cost, report): see `price_table`.
FREE_TIER_HELP = ("Apply the 20,000 requests/month free tier, or not (default: as the --prices file's "
                  "free_tier_requests says; without one, not).")
#: The settings of a command taking `--cloudtrail PATH…` (`--cloudtrail AWSLogs/*/*.json.gz` as a shell
#: expands it): click gives an option one value, so the other paths arrive as extra arguments
#: (`ctx.args`, left out of the usage line), and `cloudtrail_paths` joins them.
CLOUDTRAIL_COMMAND: dict[str, Any] = {"context_settings": {"allow_extra_args": True}}
_PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def no_core_dumps() -> None:
    """For a process that holds the root key and unsealed key material (serve, analyze of a data
    dir): a crash must not write them to a core file, nor may another process of the same user read
    them through ptrace (ssh-agent and gpg-agent do the same). The size limit alone does not stop
    a core_pattern pipe."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)


def number_in_range(low: float, high: float | None = None, *,
                    above: bool = False) -> Callable[[float | None], float | None]:
    """A typer callback for a float option: NaN and infinity refused (NaN compares false to any
    bound, so a range check lets it through, or blames the wrong end), then a value below `low`
    (with `above`, not above it) or above `high`. Its message follows "Invalid value for '--x': "."""
    def check(value: float | None) -> float | None:
        if value is None:
            return None
        if math.isnan(value):
            raise typer.BadParameter("not a number")
        if math.isinf(value):
            raise typer.BadParameter("not a finite number")
        if value < low or (above and value == low):
            raise typer.BadParameter(f"must be {'more than' if above else 'at least'} {low:g}")
        if high is not None and value > high:
            raise typer.BadParameter(f"must be at most {high:g}")
        return value

    return check


def named_path(value: str) -> Path:
    """A typer parser for a path argument or option that reads or writes what it names: "" (`"$LOGS"`
    with LOGS unset) is refused. As a path it is the current directory, which `audit export` then
    filled with AWSLogs/… and `audit import` or `--cloudtrail` read whole, without a word."""
    if not value:
        raise typer.BadParameter("empty (an unset variable?): name the file or folder")
    return Path(value)


def path_option(*declarations: Any, **settings: Any) -> Any:
    """`typer.Option(*declarations, **settings)` for a path the command reads or writes, parsed by
    `named_path`: every path option of every command refuses "" alike (`--out "$OUT"`, `--config
    "$CONF"` with the variable unset), where typer took it for the current directory and the command
    then named "." in an odd complaint, or read or wrote there. Shown as `<path>`, as typer shows a Path."""
    return typer.Option(*declarations, **{"parser": named_path, "metavar": "<path>", **settings})


#: What `address_option` asks for in place of "" (`given`).
LISTEN_ADDRESS = "an address to listen on (127.0.0.1, 0.0.0.0, ::)"
KAFKA_BOOTSTRAP = "the Kafka bootstrap servers, HOST:PORT[,HOST:PORT…]"
MQTT_URL = "the broker's URL, mqtt://HOST:PORT"
STORE_URL = "the key store's URL, postgresql://USER@HOST:PORT/DB (SQLite in the data dir without one)"


def address_option(*declarations: Any, give: str, **settings: Any) -> Any:
    """`typer.Option(*declarations, **settings)` for a server's or a listening address (`--kafka`,
    `--mqtt`, `--store`, `--host`), parsed by `given(give)`: "" (`--kafka "$BOOTSTRAP"` with the
    variable unset) is refused in one line saying what to give, where each option's own check went
    past it and said something beside the point (`detect --kafka ''`: "give --cloudtrail PATH… or
    --kafka BOOTSTRAP"; `--host ''`: "cannot listen on :4599 (Name or service not known)"). So is
    its `envvar` set to "" (`KEYTRAIL_STORE=${PG_URL}` with PG_URL unset), which click passes over
    as if unset: the option's default then stood in without a word (a node of a shared store on a
    key store of its own)."""
    envvar = settings.get("envvar")
    if isinstance(envvar, str):
        settings = {"callback": _variable_given(envvar, give), **settings}
    return typer.Option(*declarations, **{"parser": given(give), "metavar": "<str>", **settings})


def _variable_given(envvar: str, what: str) -> Callable[[str | None], str | None]:
    """A typer callback refusing an option left out while its `envvar` is set to ""."""
    def check(value: str | None) -> str | None:
        if value is None and os.environ.get(envvar) == "":
            raise typer.BadParameter(f"${envvar} is empty (an unset variable?): give {what}, or unset it")
        return value

    return check


def first_given(ctx: typer.Context, *options: str) -> str | None:
    """The first of `options` (`--group`) given on the command line or in the environment, not its
    default standing in: an option another mode takes is refused, not passed over in silence."""
    given_options = {option for param in ctx.command.params
                     if _given_source(ctx.get_parameter_source(param.name or "")) for option in param.opts}
    return next((option for option in options if option in given_options), None)


def _given_source(source: Any) -> bool:
    """Whether click's ParameterSource is a value given (by its name: typer keeps click private)."""
    return source is not None and source.name != "DEFAULT"


def given(what: str) -> Callable[[str], str]:
    """A typer parser refusing "" for an option that needs `what`, and a value with white space
    around it, shown quoted: `--host ' '` (`"$HOST "`) said "cannot listen on  :4599 (Name or
    service not known)", the address it could not resolve invisible. Its message follows
    "Invalid value for '--x': "."""
    def parse(value: str) -> str:
        if not value:
            raise typer.BadParameter(f"empty (an unset variable?): give {what}")
        if not value.strip():
            raise typer.BadParameter(f"blank ({value!r}): give {what}")
        if value != value.strip():
            raise typer.BadParameter(f"{value!r} has white space around it: give {what}")
        return value

    return parse


def counted(count: int, noun: str) -> str:
    """`count` and `noun`, plural unless one: "1 key", "1,204 keys", "0 alarms"."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def fail(message: str, command: str = "keytrail", code: int = 2) -> typer.Exit:
    """Print one line to stderr; the caller raises the returned Exit."""
    typer.echo(f"{command}: {message}", err=True)
    return typer.Exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is (see `terminate_as_interrupt`)."""


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C (as `Terminated`), so that the command's cleanup runs (a
    server stopped, a half-written file removed) where the default action would kill it there."""
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted_status(error: KeyboardInterrupt) -> int:
    """The exit status of a command stopped by a signal, as a shell reports it: 143 (128 +
    SIGTERM) for `Terminated`, else 130 (128 + SIGINT, Ctrl-C)."""
    return 128 + (signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


def os_problem(error: OSError) -> str:
    """An OSError as the end of a one-line complaint: its reason, and the file it names if any."""
    return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")


def bootstrap_problem(bootstrap: str | None, option: str = "--kafka") -> str | None:
    """None for a usable Kafka bootstrap list (HOST[:PORT][,HOST[:PORT]…], IPv6 hosts in brackets),
    else the one-line complaint: a typo should not become a shipper retrying forever. The Kafka
    security settings of the environment are checked with it ($KEYTRAIL_KAFKA_*: files read)."""
    if bootstrap is None:
        return None
    for server in bootstrap.split(","):
        if problem := host_port_problem(server.strip()):
            why = f" ({problem})" if problem == UNBRACKETED_IPV6 else ""
            return f"{option}: not HOST:PORT[,HOST:PORT…]: {redacted(bootstrap)!r}{why}"
    from keytrail.transport.kafka_security import security_problem  # aiokafka's errors: only with a broker

    return security_problem()


def mqtt_problem(url: str | None, option: str = "--mqtt") -> str | None:
    """None for no broker or a usable broker URL, else the one-line complaint naming the option."""
    from keytrail.detect.hooks import mqtt_url_problem  # the detector's package: only the commands with --mqtt

    problem = mqtt_url_problem(url) if url is not None else None
    return f"{option}: {problem}" if problem else None


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})  # libpq's, which asyncpg reads from a URL too


def url_password(url: str) -> str | None:
    """The password a URL names, if any: `scheme://USER:PASS@HOST`, or a `password=` query
    parameter (libpq reads one there too: `postgresql:///db?host=h&password=…`), as written; or an
    `sslpassword=` one (the passphrase of the client's TLS key, which asyncpg reads there)."""
    secrets = url_secrets(url)
    return secrets[0] if secrets else None


def url_secrets(url: str) -> list[str]:
    """Every secret a URL names, as written: its password, and the value of each `password=` and
    `sslpassword=` query parameter (a URL may repeat one, or name a password in both places)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # "[bad": the option's own check says what is wrong with it
        return []
    found = [password] if password else []
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if unquote(name) in _SECRET_PARAMETERS and value:
            found.append(value)
    return found


def mqtt_password_warning(mqtt: str | None) -> str | None:
    """What to say when --mqtt puts a password on the command line, which every user of the machine
    can read (`ps`, /proc/<pid>/cmdline): the --config file keeps it off."""
    if not mqtt or not url_password(mqtt):
        return None
    return ("--mqtt names a password on the command line, where every user of this machine can read it: "
            "give the broker's URL in the --config file instead ([hooks] mqtt = \"mqtt://USER:PASS@HOST:PORT\")")


def _terminal_input() -> bool:
    """Whether standard input is a terminal (not when it is closed)."""
    try:
        return os.isatty(0)
    except OSError:
        return False


def cloudtrail_paths(named: list[Path] | None, more: list[str], command: str) -> list[Path] | None:
    """Every path of `--cloudtrail PATH…` (None without the option); `more`, the command's extra
    arguments, given without it are a usage error, as click's "unexpected extra argument" was."""
    if more and not named:
        raise fail(f"unexpected argument(s) {' '.join(more)}: CloudTrail log files go after --cloudtrail", command)
    if "" in more:  # the paths after the first, past the option's parser
        raise fail("--cloudtrail: a path is empty (an unset variable?): name the file or folder", command)
    return [*named, *map(Path, more)] if named else None


def price_table(path: Path | None, free_tier: bool | None, command: str) -> PriceTable:
    """`--prices` (the defaults without it); one line naming the option when it cannot be read.
    `free_tier` is `--free-tier/--no-free-tier` as given: True adds AWS's 20,000 free requests a month
    where the table gives none, False takes away the table's (a `--no-free-tier` typed is meant, not
    overruled by the file's `free_tier_requests`), None (neither given) keeps the table's."""
    from keytrail.pipeline.prices import PriceTable, load_price_table

    try:
        table = load_price_table(path) if path else PriceTable()
    except OSError as error:
        raise fail(f"--prices: {os_problem(error)}", command) from None
    except ValueError as error:
        raise fail(f"--prices: {error}", command) from None
    if free_tier is None:
        return table
    if not free_tier:
        return replace(table, free_tier_requests=0)
    return table if table.free_tier_requests else replace(table, free_tier_requests=20_000)


def missing_paths(paths: Iterable[Path], option: str = "") -> str | None:
    """None when every path exists, else the one-line complaint naming the missing ones."""
    missing = [str(path) for path in paths if not path.exists()]
    if not missing:
        return None
    return f"{option + ': ' if option else ''}no such file or folder: {', '.join(missing)}"


def event_log_damage(data_dir: Path, log: SegmentLog | None = None) -> str | None:
    """Why reading the node's event log stopped short of what its files hold, if it did: commands
    that read it whole say so and exit non-zero rather than answer from part of it in silence.
    `log`: the reader that just read it (its segments are checked already: no second pass)."""
    from keytrail.audit.integrity import IntegrityPaths, signed_end

    directory = event_log_dir(data_dir)
    if log is None and not directory.is_dir():
        return None
    log = log or SegmentLog(directory)
    if damage := log.damage():
        return f"the event log in {data_dir} is damaged: {damage} (keytrail audit verify tells more)"
    # A log whose last segments are gone whole reads as a shorter log: its digests still sign them.
    # Its end is read after the digest (a reader's `end_offset` looks again): a running node writes a
    # digest only once the records it signs are durable, so records added since `log` read cannot
    # look gone.
    signed = signed_end(IntegrityPaths(directory.parent / "integrity"))
    if signed is not None and (end := log.end_offset()) < signed:
        return (f"the event log in {data_dir} ends at record {end} but its digests sign records up to "
                f"{signed}: signed records are gone (keytrail audit verify tells more)")
    return None


def log_files_problem(paths: list[Path], option: str = "") -> str | None:
    """None when `paths` are there and hold a CloudTrail log file to read, else the one-line
    complaint (missing_paths', or one of those below) of every command reading them (`audit
    import`, and `--cloudtrail` of `detect`, `report` and `consume`), said before anything is read
    or written: a folder with none, or with digest files only, is a wrong folder named (a bucket's
    prefix one level off, a sync not yet run, CloudTrail-Digest/ for CloudTrail/), where a run over
    nothing printed no alarm, an empty report or 0 records counted, and exited 0 as for a quiet
    period."""
    from keytrail.transport.cloudtrail_logs import LOG_FILE_NAMES, STDIN, Held, held_log_files

    if problem := missing_paths([path for path in paths if path != STDIN], option):
        return problem
    if paths.count(STDIN) > 1:  # the second read nothing: "-: line 1: not valid JSON", or a detect refused
        return f"{option + ': ' if option else ''}- named twice: standard input is read once"
    if STDIN in paths and _terminal_input():  # it would wait for a paste, with no word of what it waits for
        return (f"{option + ': ' if option else ''}- reads standard input, which is a terminal here: pipe the "
                "records in (aws logs filter-log-events … | keytrail … -)")
    unlisted: list[str] = []  # a folder that cannot be listed: the likely reason none was found
    held = held_log_files(paths, unlisted.append)
    if held is Held.LOG_FILE:
        return None
    lead, named = f"{option}: " if option else "", ", ".join(map(str, paths))
    why = f" ({'; '.join(unlisted)})" if unlisted else ""
    if held is Held.DIGESTS_ONLY:
        return (f"{lead}only CloudTrail digest files found under {named}{why}: digest files hold no records; "
                "name the log files' folder (AWSLogs/<account>/CloudTrail/, not CloudTrail-Digest/)")
    return f"{lead}no CloudTrail log files ({LOG_FILE_NAMES}) found under {named}{why}"
