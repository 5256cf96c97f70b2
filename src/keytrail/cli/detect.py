"""`keytrail detect` (offline over CloudTrail files, or live from Kafka) and `keytrail analyze`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keytrail.cli.command_line import hide_url_passwords
from keytrail.cli.console import (
    CLOUDTRAIL_COMMAND,
    CLOUDTRAIL_HELP,
    CLOUDTRAIL_METAVAR,
    KAFKA_BOOTSTRAP,
    MQTT_URL,
    STORE_URL,
    Terminated,
    address_option,
    bootstrap_problem,
    cloudtrail_paths,
    counted,
    fail,
    first_given,
    interrupted_status,
    log_files_problem,
    missing_paths,
    mqtt_password_warning,
    mqtt_problem,
    named_path,
    no_core_dumps,
    number_in_range,
    os_problem,
    path_option,
    printable,
    terminate_as_interrupt,
)
from keytrail.cli.listening import listen_option
from keytrail.config import STORE_ENV
from keytrail.owner_only import read_regular, read_regular_text

# The detector, its sources and the key store load in the functions that use them, not with
# `keytrail detect --help` or `keytrail analyze --help` (commands.py).
if TYPE_CHECKING:
    from keytrail.detect import Alarm, RuleSet
    from keytrail.detect.checks.permissive import OrganizationOf
    from keytrail.detect.hooks import HooksConfig
    from keytrail.detect.inventory import IdentityItem, KeyInventoryItem
    from keytrail.detect.runner import DetectorRunner
    from keytrail.detect.sources import CloudTrailRead
    from keytrail.kms.keys import Key
    from keytrail.kms.store import Store

__all__ = ["analyze_keys", "register"]

ConfigOption = Annotated[
    Path | None,
    path_option(
        "--config", help="Settings TOML: [rules.<id>] overrides and [hooks] (see docs/detection-rules.md)."
    ),
]


class AlarmFormat(StrEnum):
    """How alarms are printed; a choice refused as the command line is read, not after a whole run."""

    table = "table"
    json = "json"


FormatOption = Annotated[AlarmFormat, typer.Option("--format", help="table or json (one JSON object per line).")]


class BadInput(Exception):
    """Input the user must fix: reported in one line, exit status 2."""


def register(app: typer.Typer) -> None:
    """Add `detect` and `analyze` to the keytrail command."""
    app.command("detect", **CLOUDTRAIL_COMMAND)(detect)
    app.command("analyze")(analyze)


def detect(
    ctx: typer.Context,
    cloudtrail: Annotated[
        list[Path] | None,
        typer.Option("--cloudtrail", metavar=CLOUDTRAIL_METAVAR, parser=named_path,
                     help=CLOUDTRAIL_HELP),
    ] = None,
    kafka: Annotated[
        str | None,
        address_option("--kafka", help="Read keytrail.audit.v1 from this bootstrap.", give=KAFKA_BOOTSTRAP)
    ] = None,
    data_dir: Annotated[Path, path_option("--data-dir", help="Where alarms.jsonl goes (live).")] = Path(
        "keytrail-data"
    ),
    mqtt: Annotated[
        str | None, address_option("--mqtt", help="Publish alarms to mqtt://HOST:PORT.", give=MQTT_URL)
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="Evaluate time rules as of this ISO-8601 time (offline; default: last event)."
        ),
    ] = None,
    fmt: FormatOption = AlarmFormat.table,
    config: ConfigOption = None,
    principals: Annotated[
        Path | None,
        path_option("--principals", help="Principals file (TOML) whose [[organization]] tables say which "
                    "organization each account is in: permissive-key trusts a key's own."),
    ] = None,
    tick_every: Annotated[
        float, typer.Option("--tick-every", callback=number_in_range(0),
                            help="Seconds between time-rule checks (live; 0: after every batch).")
    ] = 5.0,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535,
                     help="Serve Prometheus text at GET /metrics on this port (live): the alarms raised and the "
                          "detector's lag."),
    ] = None,
    metrics_host: Annotated[
        str,
        listen_option("--metrics-host", help="Address the --metrics-port endpoint listens on.",
                      port_option="--metrics-port")
    ] = "127.0.0.1",
) -> None:
    """Run the detection rules: offline over CloudTrail logs, or live over the Kafka audit topic."""
    from keytrail.detect import RuleError

    cloudtrail = cloudtrail_paths(cloudtrail, ctx.args, "keytrail detect")
    try:
        rules, hooks = detector_settings(config, delivering=bool(kafka))  # offline, alarms are printed
        organization_of = _organizations(principals)
        if cloudtrail and kafka:  # one source per run, as consume has it: either alone would silently win
            raise BadInput("--kafka and --cloudtrail name two sources: give one")
        if cloudtrail:
            if metrics_port is not None:  # the run ends once it has printed: nothing would scrape it
                raise BadInput("--metrics-port goes with --kafka (a live detector), not --cloudtrail")
            if mqtt is not None:  # offline alarms are printed: none would reach the broker
                raise BadInput("--mqtt goes with --kafka (a live detector): --cloudtrail prints its alarms")
            if problem := log_files_problem(cloudtrail, "--cloudtrail"):
                raise BadInput(problem)
            if live := first_given(ctx, *_LIVE_OPTIONS):  # a default stands in for it offline, saying nothing
                raise BadInput(f"{live} goes with --kafka (a live detector): {_LIVE_OPTIONS[live]}")
            _print_offline(_run_offline_until_stopped(cloudtrail, rules, _time(as_of) if as_of else None,
                                                      organization_of), fmt)
        elif kafka:
            if as_of is not None:  # live time rules tick as of the events read, never as of a given time
                raise BadInput("--as-of goes with --cloudtrail (offline), not --kafka")
            if first_given(ctx, "--format"):  # live prints nothing: alarms go to alarms.jsonl, hooks
                raise BadInput("--format goes with --cloudtrail (offline, whose alarms it prints): --kafka writes "
                               "them to <data-dir>/alarms.jsonl and the hooks")
            if problem := bootstrap_problem(kafka) or mqtt_problem(mqtt):
                raise BadInput(problem)
            if warning := mqtt_password_warning(mqtt):
                typer.echo(f"keytrail detect: warning: {warning}", err=True)
                hide_url_passwords([mqtt])  # from `ps` for as long as it runs
            # The port first: one it cannot listen on leaves no data dir made for the lock behind.
            metrics = _metrics_socket(metrics_host, metrics_port) if metrics_port is not None else None
            _hold_detector_lock(data_dir)
            # the alarms go to keytrail.alarms.v1 on the cluster it reads, as serve's detector sends
            # them on serve's --kafka: where the nodes run --no-detector, no one else would
            live_hooks = hooks.with_flags(mqtt=mqtt, kafka=kafka)
            _run_live_or_fail(kafka, data_dir, rules, live_hooks, tick_every, metrics, organization_of)
        else:
            raise BadInput("give --cloudtrail PATH… (offline) or --kafka BOOTSTRAP (live)")
    except BrokenPipeError:  # what reads the alarms is gone (`| head -1`): quietly, exit 1, as click ends it
        raise
    except StdoutFailed as failed:
        raise failed.error from None
    except (BadInput, RuleError, ValueError, OSError) as exc:
        typer.echo(f"keytrail detect: {printable(_said(exc))}", err=True)  # it may quote an input file's text
        raise typer.Exit(2) from None


#: The live detector's options that have a default, with what offline does instead: given with
#: --cloudtrail they were passed over (no alarms.jsonl written where --data-dir said), so they are
#: told apart from their defaults by where their value came from.
_LIVE_OPTIONS = {"--data-dir": "--cloudtrail writes no alarms.jsonl, it prints its alarms (--format json > FILE)",
                 "--tick-every": "--cloudtrail judges time rules once, as of --as-of (default: the last event)"}


def _organizations(principals: Path | None) -> OrganizationOf:
    """The organizations of `--principals`' [[organization]] tables (none without it); BadInput if
    it cannot be read."""
    from keytrail.api.credentials import PrincipalsFileError
    from keytrail.cli.organizations import PrincipalsOrganizations
    from keytrail.detect.checks.permissive import no_organization

    if principals is None:
        return no_organization

    try:
        return PrincipalsOrganizations(principals)
    except PrincipalsFileError as exc:
        raise BadInput(f"--principals: {exc}") from None


@dataclass(frozen=True)
class OfflineRun:
    """What `detect --cloudtrail` found: every alarm, over how many KMS records, judged as of when."""

    alarms: list[Alarm]
    records: int
    as_of: datetime | None


def _run_offline_until_stopped(paths: Iterable[Path], rules: RuleSet, as_of: datetime | None,
                               organization_of: OrganizationOf) -> OfflineRun:
    """`run_offline`, unwound by SIGTERM as by Ctrl-C: SIGTERM's default action killed the process
    where it was, leaving the folder of its sorted runs under TMPDIR (about 180 bytes a record)."""
    try:
        with terminate_as_interrupt():
            return run_offline(paths, rules, as_of, organization_of=organization_of)
    except Terminated as stopped:  # the folder is removed by now; as `keytrail report` says it
        raise fail("stopped (SIGTERM): no alarms printed", "keytrail detect", interrupted_status(stopped)) from None


def run_offline(paths: Iterable[Path], rules: RuleSet, as_of: datetime | None,
                run_events: int | None = None, organization_of: OrganizationOf | None = None) -> OfflineRun:
    """Every alarm the rules raise over CloudTrail files, time rules evaluated as of `as_of`.
    `run_events`: events sorted in memory at once (`detect.time_order`, RUN_EVENTS by default);
    `organization_of`: the accounts' organizations (`--principals`)."""
    from keytrail.detect import Detector
    from keytrail.detect.checks.permissive import no_organization
    from keytrail.detect.sources import read_cloudtrail_events
    from keytrail.detect.time_order import RUN_EVENTS

    detector = Detector(rules, organization_of=organization_of or no_organization)
    with read_cloudtrail_events(paths, up_to=as_of, run_events=run_events or RUN_EVENTS) as (events, read):
        _say_what_was_read(read, as_of)
        detector.process_events(events)
    detector.tick(as_of)
    return OfflineRun(detector.alarms(), read.events - read.later, detector.moment(as_of))


def _say_what_was_read(read: CloudTrailRead, as_of: datetime | None) -> None:
    """On stderr: the records skipped, files that held no KMS record, and the records dated after
    `as_of`, which are not judged: judged as of a time, a key used only after it was still idle
    then, and a call after it raises no alarm yet (as the live detector, whose ticks never see
    later events, and `report --until` judge)."""
    for problem in read.problems:  # as import, consume and report say them: a denied call in one raises no alarm
        typer.echo(f"skipped: {problem}", err=True)
    if note := read.problems.unshown_note():
        typer.echo(f"note: {note}", err=True)
    if read.problems:
        typer.echo(f"note: skipped {counted(len(read.problems), 'CloudTrail record')} that "
                   "cannot be read (above)", err=True)
    if not read.events and not read.problems:  # no output must not read as a quiet period: the files held no KMS record
        typer.echo("note: the CloudTrail files given hold no KMS record: no alarm could be raised", err=True)
    if as_of is not None and read.later > 0:
        typer.echo(f"note: {counted(read.later, 'KMS record')} dated after --as-of {as_of:%Y-%m-%dT%H:%M:%SZ} "
                   f"{'was' if read.later == 1 else 'were'} not judged: the alarms are those of the records up to it",
                   err=True)


def _hold_detector_lock(data_dir: Path) -> None:
    """Hold the data dir's detector lock for the run, as serve's detector child does: two detectors
    on one data dir would both announce every alarm, and each would empty the hooks' outboxes of
    what the other still owed (BadInput while another holds it)."""
    from keytrail.cli.sidecar import detector_lock, try_lock

    if not try_lock(detector_lock(data_dir)):
        raise BadInput(f"a detector is already running on --data-dir {data_dir} (serve's, or another keytrail "
                       "detect --kafka): stop it, give another --data-dir, or run serve with --no-detector")


def _metrics_socket(host: str, port: int) -> socket.socket:
    from keytrail.cli.metrics_endpoint import metrics_socket

    try:
        return metrics_socket(host, port)
    except ValueError as exc:
        raise BadInput(str(exc)) from None


def _run_live_or_fail(
    bootstrap: str, data_dir: Path, rules: RuleSet, hooks: HooksConfig, tick_every: float,
    metrics: socket.socket | None, organization_of: OrganizationOf,
) -> None:
    from aiokafka.errors import KafkaError

    from keytrail.log_lines import BARE_FORMAT, log_to_stderr

    log_to_stderr(BARE_FORMAT)  # aiokafka's lines while the broker is down would bury keytrail's own
    try:
        asyncio.run(_run_live(bootstrap, data_dir, rules, hooks, tick_every, metrics, organization_of))
    except KafkaError as exc:  # the broker out of reach at start: nothing to retry from yet
        from keytrail.transport.kafka import kafka_problem

        typer.echo(f"keytrail detect: --kafka {bootstrap}: {kafka_problem(exc)}", err=True)
        raise typer.Exit(1) from None


async def _run_live(
    bootstrap: str, data_dir: Path, rules: RuleSet, hooks: HooksConfig, tick_every: float,
    metrics: socket.socket | None, organization_of: OrganizationOf,
) -> None:
    from keytrail.detect.alarm_tally import AlarmTally
    from keytrail.detect.runner import DetectorRunner
    from keytrail.detect.sources import kafka_values
    from keytrail.transport.kafka import access_refused

    if refused := await access_refused(bootstrap):  # serve's start check: a refusal told in seconds, not 40 s
        raise refused
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    tally = AlarmTally()  # from zero at each start, as Prometheus counters are
    try:
        async with DetectorRunner.open(data_dir, hooks=hooks, rules=rules, organization_of=organization_of) as runner, \
                _serving_metrics(metrics, tally.counts, rules, runner):
            tally.remember(runner.delivered_ranks())  # counted by the run that delivered them
            await runner.run(kafka_values(bootstrap), tick_every=tick_every,
                             announce=tally.add_alarms)
    except asyncio.CancelledError:
        pass  # SIGTERM/SIGINT: leaving the block above delivered what was queued


def _serving_metrics(
    sock: socket.socket | None, counts: Counter[tuple[str, str]], rules: RuleSet, runner: DetectorRunner,
) -> AbstractAsyncContextManager[None]:
    """GET /metrics on `sock` (`--metrics-port`): the alarms this run delivered, as serve counts its
    own, and how far behind the topic it is."""
    if sock is None:
        return contextlib.nullcontext()
    from keytrail.cli.metrics_endpoint import metrics_endpoint, render_alarm_counts, render_detector_lag

    enabled = [rule.id for rule in rules if rule.enabled]
    return metrics_endpoint(sock, lambda: render_alarm_counts(counts, enabled) + render_detector_lag(runner.lag))


def analyze(
    inventory: Annotated[
        Path | None,
        path_option(
            "--inventory",
            help="JSON list of {KeyArn, Policy, Grants, KeyRotationEnabled, ...} (DescribeKey, GetKeyPolicy, "
            "ListGrants, GetKeyRotationStatus output; docs/detection-rules.md).",
        ),
    ] = None,
    data_dir: Annotated[Path | None, path_option(
        "--data-dir", help="A node's data dir: its root key and, without --store, its key store.")] = None,
    store: Annotated[str | None, address_option(
        envvar=STORE_ENV, show_envvar=True, give=STORE_URL,
        help="The node's shared key store, postgresql://USER@HOST:PORT/DB, as serve --store names it: read only "
             "(default: SQLite in the data dir).")] = None,
    principals: Annotated[
        Path | None,
        path_option(
            "--principals",
            help="Principals file (TOML) whose identity policies are checked too "
            "(default with the key store: <data-dir>/principals.toml, as serve's).",
        ),
    ] = None,
    fmt: FormatOption = AlarmFormat.table,
    config: ConfigOption = None,
) -> None:
    """Check every key's policy and grants for public, cross-account and over-broad access, every
    principal's identity policies for decryption with every key, and every customer managed
    symmetric key for automatic rotation: the keys and principals of a node (--data-dir, default
    ./keytrail-data) or an exported inventory."""
    from keytrail.cli.key_store import StoreUnavailable
    from keytrail.detect import RuleError
    from keytrail.detect.inventory import read_inventory
    from keytrail.kms.sealing import SealError

    hide_url_passwords([store])  # from `ps` while it reads the store
    try:
        rules, _ = detector_settings(config, delivering=False)
        if inventory is not None and data_dir is not None:  # one would be passed over in silence
            raise BadInput("--inventory and --data-dir name two sets of keys: give one")
        # $KEYTRAIL_STORE, like the default data dir, is a default the inventory named stands in for:
        # on a node's host, where it is exported, an inventory is analyzed without unsetting it.
        if inventory is not None and store is not None and _store_source(store) == "--store":
            raise BadInput("--inventory and --store name two sets of keys: give one")
        if inventory is not None:
            if problem := missing_paths([inventory], "--inventory"):
                raise BadInput(problem)
            items = read_inventory(_json_file(inventory, "--inventory"))
        else:
            data_dir = data_dir or Path("keytrail-data")
            items = asyncio.run(_store_inventory(data_dir, store))
            principals = principals or _node_principals(data_dir)
        identities, organization_of = read_identities(principals) if principals else ([], None)
        principals_checked = f" and {counted(len(identities), 'principal')}" if identities else ""
        _print(analyze_keys(items, rules, identities, organization_of), fmt,
               over=counted(len(items), "key") + principals_checked)
        if inventory is not None and rules.enabled("rotation-disabled"):
            _note_unknown_rotation(items, inventory)
    except BrokenPipeError:  # as in `detect`: a closed output pipe is no bad input
        raise
    except StdoutFailed as failed:
        raise failed.error from None
    except (BadInput, RuleError, ValueError, KeyError, OSError, SealError, StoreUnavailable) as exc:
        typer.echo(f"keytrail analyze: {printable(_said(exc))}", err=True)  # it may quote an input file's text
        raise typer.Exit(2) from None


def _note_unknown_rotation(items: list[KeyInventoryItem], inventory: Path) -> None:
    """Say so when the inventory gives no key's rotation status, rather than seem to have found
    every key rotating (inventories made before the field, GetKeyPolicy + ListGrants only)."""
    if items and all(item.rotation_enabled is None for item in items):
        typer.echo(f"keytrail analyze: no key of {inventory} has KeyRotationEnabled (GetKeyRotationStatus): "
                   "rotation not checked", err=True)


def _json_file(path: Path, option: str) -> Any:
    """The parsed JSON of a file an option names; BadInput naming both when it is not JSON."""
    try:
        return json.loads(read_regular(path))
    except OSError as exc:  # a folder, an unreadable file: its reason, not Python's "[Errno 21] …"
        raise BadInput(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSONDecodeError, or bytes that are no UTF-8/16/32 text
        raise BadInput(f"{option} {path}: not valid JSON ({exc})") from None
    except RecursionError:  # deeper than json's reader recurses
        raise BadInput(f"{option} {path}: not valid JSON (nested too deeply)") from None


def _node_principals(data_dir: Path) -> Path | None:
    """The principals file serve creates in the data dir, if there is one (a node started with
    `--principals` elsewhere has none: say so rather than seem to have checked them)."""
    path = data_dir / "principals.toml"
    if path.exists():
        return path
    typer.echo(f"keytrail analyze: no {path}: identity policies not checked (name the file with --principals)",
               err=True)
    return None


def read_identities(path: Path) -> tuple[list[IdentityItem], OrganizationOf]:
    """Each principal of a principals file (by the ARN its policies name: a role's, not its
    sessions') with its identity policies, entries of one principal taken together; and the
    organization of each account its [[organization]] tables list."""
    from keytrail.api.credentials import read_principals_file
    from keytrail.detect.inventory import IdentityItem

    if not path.exists():
        raise BadInput(f"principals file {path} does not exist")
    loaded = read_principals_file(path)
    policies: dict[str, list[dict[str, Any]]] = {}
    for credential in loaded.credentials.values():
        mine = policies.setdefault(credential.principal.policy_arn, [])
        mine += [doc for doc in credential.principal.policies if doc not in mine]
    return [IdentityItem(arn, tuple(docs)) for arn, docs in policies.items()], loaded.organizations.get


def _store_source(url: str) -> str:
    """Where the store's URL came from, as a complaint names it (the URL itself may hold a password)."""
    return f"${STORE_ENV}" if url == os.environ.get(STORE_ENV) else "--store"


async def _store_inventory(data_dir: Path, url: str | None) -> list[KeyInventoryItem]:
    """Every key of a node's key store (SQLite in its data dir, or PostgreSQL at `url`), with its
    policy, grants, rotation and aliases."""
    from keytrail.cli.key_store import StoreUnavailable, store_place
    from keytrail.kms.errors import KmsError

    store = await _open_read_only(data_dir, url)
    try:
        keys = await store.all_keys()
        aliases = await _alias_names(store, {(key.account, key.region) for key in keys})
        return [await _inventory_item(store, key, aliases.get((key.account, key.region, key.key_id), ()))
                for key in keys]
    except KmsError as exc:  # PostgreSQL failing a read midway (lost, timed out), answered as a KMS call's error
        where = store_place(url) if url else str(data_dir / "keys.db")
        raise StoreUnavailable(f"cannot read the key store at {where}: {exc.message or exc.code}") from None
    finally:
        await store.close()


async def _open_read_only(data_dir: Path, url: str | None) -> Store:
    """The node's key store, never written: the node may be running, and may still be of a version
    before the ledger. The root key is found as serve finds it."""
    from keytrail.cli.key_store import open_store_read_only, store_url_problem
    from keytrail.kms.sealing import RootKey
    from keytrail.kms.sqlite_store import SqliteStore

    if url is not None and (problem := store_url_problem(url)):
        raise BadInput(problem)
    if url is None and not (data_dir / "keys.db").exists():
        raise ValueError(f"{data_dir} holds no key store (keys.db): name a shared one with --store")
    no_core_dumps()  # from here on this process holds the root key and every key's material, as serve does
    root = RootKey.load(data_dir, create=False)
    if url is not None:
        return await open_store_read_only(url, root)
    return SqliteStore(data_dir / "keys.db", root, upgrade=False)


async def _alias_names(store: Store, places: Iterable[tuple[str, str]]
                       ) -> dict[tuple[str, str, str], tuple[str, ...]]:
    """(account, Region, key id) -> the key's alias names, over the accounts and Regions named (a
    multi-Region key's copies share their key id, each with its own Region's aliases)."""
    names: dict[tuple[str, str, str], list[str]] = {}
    for account, region in sorted(places):
        for alias in await store.list_aliases(account, region):
            names.setdefault((account, region, alias.key_id), []).append(alias.name)
    return {key: tuple(sorted(found)) for key, found in names.items()}


async def _inventory_item(store: Store, key: Key, aliases: tuple[str, ...]) -> KeyInventoryItem:
    """One key as `keytrail analyze` judges it (what DescribeKey, GetKeyPolicy, ListGrants,
    GetKeyRotationStatus and ListAliases would answer of it)."""
    from keytrail.detect.inventory import KeyInventoryItem
    from keytrail.kms.grants import grant_view
    from keytrail.kms.multiregion import is_replica

    grants = [grant_view(key, g) for g in await store.list_grants(key.account, key.region, key.key_id)]
    return KeyInventoryItem(
        key.arn, key.policy, grants, key.key_manager.value, key.state.value,
        key_spec=key.key_spec.value,
        origin=key.origin.value,
        custom_key_store_id=key.custom_key_store_id,
        replica=is_replica(key),
        rotation_enabled=key.rotation_enabled,
        aliases=aliases,
    )


def analyze_keys(
    items: Iterable[KeyInventoryItem], rules: RuleSet | None = None, identities: Iterable[IdentityItem] = (),
    organization_of: OrganizationOf | None = None,
) -> list[Alarm]:
    """permissive-key and rotation-disabled alarms for an inventory and principals (the key store
    and the principals file are wired in here by `keytrail analyze`)."""
    from keytrail.detect.checks.permissive import no_organization
    from keytrail.detect.inventory import analyze_inventory

    return analyze_inventory(items, rules=rules, identities=identities,
                             organization_of=organization_of or no_organization)


def detector_settings(path: Path | None, *, delivering: bool = True,
                      environment: Mapping[str, str] | None = None) -> tuple[RuleSet, HooksConfig]:
    """Rules (`[rules.<id>]`) and hooks (`[hooks]`) from a settings file (docs/detection-rules.md);
    `delivering`: False for a command that sends no alarm, `environment`: where webhooks' `secret_env`
    are read (see HooksConfig.from_settings)."""
    from keytrail.detect import RuleSet
    from keytrail.detect.hooks import HooksConfig

    if path is None:
        return RuleSet(), HooksConfig()
    return settings_of_text(settings_file_text(path), path, delivering=delivering, environment=environment)


def settings_file_text(path: Path) -> str:
    """The text of a settings file (BadInput naming the file if it cannot be read as text)."""
    try:
        # TOML is UTF-8, a leading BOM allowed (Notepad, PowerShell write one), whatever the locale
        return read_regular_text(path, "utf-8-sig")
    except UnicodeDecodeError:  # a binary file, or the wrong file named
        raise BadInput(f"{path}: not valid TOML (not UTF-8 text)") from None
    except OSError as exc:  # named as the TOML errors are, not as Python's repr of the error
        raise BadInput(f"{path}: {exc.strerror or exc}") from None


def settings_of_text(text: str, path: Path, *, delivering: bool = True,
                     environment: Mapping[str, str] | None = None) -> tuple[RuleSet, HooksConfig]:
    """`detector_settings` of the text `path` held: serve's detector child runs on the text serve
    last read and checked (cli/settings_reload.py), not on the file as an edit since left it."""
    from keytrail.detect import RuleSet
    from keytrail.detect.hooks import HooksConfig

    try:
        doc: dict[str, Any] = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInput(f"{path}: not valid TOML ({exc})") from None
    except RecursionError:  # tomllib recurses per level: arrays or inline tables some hundreds deep
        raise BadInput(f"{path}: not valid TOML (values nested too deeply)") from None
    if unknown := set(doc) - {"rules", "hooks"}:  # a misspelt [rule.…] table left its rule as it was
        raise BadInput(f"{path}: unknown table(s) or setting(s) {', '.join(sorted(unknown))} "
                       "(a settings file holds [rules.<id>] and [hooks])")
    hooks = HooksConfig.from_settings(doc, delivering=delivering, environment=environment)
    # Checked as --kafka is: a typo would otherwise only show as failed deliveries of the first alarms.
    if problem := bootstrap_problem(hooks.kafka, "[hooks] kafka"):
        raise BadInput(problem)
    return RuleSet().override(doc.get("rules", {})), hooks


def _time(text: str) -> datetime:
    """--as-of in UTC: an offset taking it past year 1 or 9999 is refused here, not met as an
    OverflowError (a traceback) wherever the time is first moved."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise BadInput(f"--as-of {text!r} is not an ISO-8601 time") from None
    try:
        return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    except OverflowError:
        raise BadInput(f"--as-of {text!r} is out of range in UTC") from None


def _said(error: Exception) -> str:
    """An error as the commands' one line says it: an OSError in the system's words and the file it
    names ("Permission denied: /srv/node/keys.db"), not Python's "[Errno 13] …: '/srv/node/keys.db'"."""
    return os_problem(error) if isinstance(error, OSError) else str(error)


class StdoutFailed(Exception):
    """Standard output could not take the alarms (a full disk, `>&-`): no bad input, so not the
    commands' exit 2 naming Python's "[Errno 28] …", but the entry point's line and exit 1, as for
    every other command's output. A broken pipe stays itself: quietly, exit 1."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _print(alarms: list[Alarm], fmt: str, over: str | None) -> None:
    """The alarms; under the table, for a reader, what they were judged `over`: an empty table must
    not look like a run that checked nothing."""
    try:
        for alarm in alarms:
            if fmt == "json":
                typer.echo(json.dumps(alarm.to_json(), separators=(",", ":")))
            else:
                typer.echo(printable(f"{alarm.severity.value:<8} {alarm.rule:<20} {alarm.count:>6}  {alarm.summary}"))
        if fmt == "table" and over is not None:
            typer.echo(f"{counted(len(alarms), 'alarm')} over {over}")
    except BrokenPipeError:
        raise
    except OSError as error:
        raise StdoutFailed(error) from None


def _print_offline(run: OfflineRun, fmt: str) -> None:
    """`detect --cloudtrail`'s alarms, judged over its KMS records as of when (none read is told on stderr)."""
    as_of = f", as of {run.as_of.astimezone(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}" if run.as_of else ""
    _print(run.alarms, fmt, over=f"{counted(run.records, 'KMS record')}{as_of}" if run.records else None)
