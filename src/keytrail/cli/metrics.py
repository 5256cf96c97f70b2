"""`keytrail usage | cost | last-used | consume`: metrics queries and the standalone consumer."""

from __future__ import annotations

import contextlib
import csv
import json
import shlex
import signal
import socket
import sys
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from keytrail.cli.console import (
    CLOUDTRAIL_COMMAND,
    CLOUDTRAIL_HELP,
    CLOUDTRAIL_METAVAR,
    FREE_TIER_HELP,
    KAFKA_BOOTSTRAP,
    address_option,
    bootstrap_problem,
    cloudtrail_paths,
    counted,
    event_log_damage,
    fail,
    first_given,
    given,
    log_files_problem,
    named_path,
    number_in_range,
    path_option,
    price_table,
    printable,
)
from keytrail.cli.listening import listen_option
from keytrail.cli.time_window import parse_window, since_after_default_end
from keytrail.owner_only import make_dirs
from keytrail.pipeline.kafka_lock import hold_as_event_log_consumer, hold_as_kafka_consumer, kafka_consumers_counting
from keytrail.pipeline.layout import CLOUDTRAIL_PARTITION, SEGMENT_LOG_PARTITION, consumer_lock, counted_partitions
from keytrail.shown_text import columns, encodable, padded
from keytrail.transport.read_problems import Problems
from keytrail.transport.segment_log import SegmentLog, event_log_dir, lock_held, writer_active

# polars, the metrics state and the consumer load with the command that uses them, not with
# `keytrail usage --help` (commands.py).
if TYPE_CHECKING:
    import polars as pl

    from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
    from keytrail.pipeline.query import MetricsStore
    from keytrail.pipeline.runner import RunStats
    from keytrail.reports.progress import Progress

__all__ = ["register"]

USAGE_FIELDS = ["keyArn", "eventName", "principalArn", "accountId", "count", "errorCount"]
COST_FIELDS = ["keyArn", "accountId", "keyMonths", "keyCost", "requests", "requestCost", "totalCost"]
LAST_USED_FIELDS = ["keyArn", "lastUsedTime", "lastUsedOperation", "lastUsedPrincipalArn", "eventId"]
_DIMENSIONS = {"key": "keyArn", "principal": "principalArn", "account": "accountId", "operation": "eventName"}
_WINDOWS = ("minute", "hour", "day")
# `consume --batch-size`: a batch is held in memory whole, and past 2**63 the log's reader failed
# with a traceback (OverflowError).
_MAX_BATCH = 10_000_000


# How each command's errors start: every command names itself, as click's usage errors do.
USAGE, COST, LAST_USED, CONSUME = "keytrail usage", "keytrail cost", "keytrail last-used", "keytrail consume"


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


DataDir = Annotated[Path, path_option("--data-dir", help="Node data directory.")]
Since = Annotated[str | None, typer.Option("--since", help="Start (ISO-8601 UTC, inclusive).")]
Until = Annotated[str | None, typer.Option("--until", help="End (ISO-8601 UTC, exclusive).")]
Format = Annotated[OutputFormat, typer.Option("--format", help="table, json (one object per line) or csv.")]


def open_store(data_dir: Path, command: str = "keytrail") -> MetricsStore | None:
    """The metrics state of `data_dir`, or None where nothing was counted yet (a new node): the
    answer is then empty, given without loading polars (~0.2 s of a query's start), as is an
    error for a data directory that does not exist."""
    if not data_dir.is_dir():
        raise fail(f"{'not a folder' if data_dir.exists() else 'no such data directory'}: {data_dir}", command)
    if not counted_partitions(data_dir):
        if not (data_dir / "metrics").is_dir() and not event_log_dir(data_dir).is_dir():
            # A folder no node or consumer ever used: an empty table read as a quiet period.
            raise fail(f"{data_dir} holds no metrics and no event log: is --data-dir right?", command)
        store = None
    else:
        from keytrail.pipeline.query import MetricsStore

        store = MetricsStore(data_dir, read_only=True)
    if note := uncounted_note(data_dir, store):
        typer.echo(note, err=True)
    return store


def uncounted_note(data_dir: Path, store: MetricsStore | None) -> str | None:
    """One line when the event log holds events the metrics state (None: none yet) has not counted
    and no consumer is running to count them (after `keytrail audit import` with the node stopped,
    the queries would otherwise answer from nothing, or from an old state, in silence)."""
    directory = event_log_dir(data_dir)
    if not directory.is_dir() or _consumer_running(data_dir):
        return None
    consumed = store.offsets().get(SEGMENT_LOG_PARTITION, 0) if store is not None else 0
    end = SegmentLog(directory).end_offset()
    # A log that ends below the state's offset began again (a new trail, the audit folder moved
    # aside): the consumer counts it from its start (pipeline/segment_source.py), so all of it waits.
    behind = end - consumed if end >= consumed else end
    if behind <= 0:
        return None
    verb = "is" if behind == 1 else "are"
    return (f"note: {counted(behind, 'event')} of the event log in {data_dir} {verb} not counted yet and no "
            f"consumer is running: run `keytrail consume --data-dir {shlex.quote(str(data_dir))} --no-follow` "
            "(or keytrail serve) first")  # quoted: the command is pasted into a shell


def _noun(count: int, noun: str) -> str:
    return noun if count == 1 else noun + "s"


def _consumer_holder(data_dir: Path) -> str:
    """Who runs the data dir's consumer, as a refusal names it: serve's child while a serve writes
    the event log, else another `keytrail consume` (the refusal blamed serve when none ran)."""
    return "keytrail serve runs one" if writer_active(event_log_dir(data_dir)) else "another keytrail consume runs it"


def _consumer_running(data_dir: Path) -> bool:
    """Whether a consumer (keytrail serve's, or keytrail consume) holds the data dir's lock."""
    return lock_held(consumer_lock(data_dir))


def parse_by(value: str, allowed: tuple[str, ...], command: str = "keytrail", choices: str | None = None) -> list[str]:
    """The groupings of a `--by` list, each once in the order first named (`key,key` grouped the
    usage table by one column twice, which polars refused as the state being unreadable). `choices`
    says what to choose where not every list of `allowed` names is one."""
    names = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        choose = choices or f"from {', '.join(allowed)}"
        raise fail(f"--by: unknown {', '.join(bad) or 'grouping'} (choose {choose})", command)
    return names


def usage(
    data_dir: DataDir = Path("keytrail-data"),
    since: Since = None,
    until: Until = None,
    by: Annotated[
        str,
        typer.Option(help="Comma list of key, principal, account, operation, and one of minute, hour, day."),
    ] = "key,principal,account,operation",
    output: Format = OutputFormat.table,
) -> None:
    """Requests and errors per key, principal, account and operation (optionally per time window)."""
    names = parse_by(by, (*_DIMENSIONS, *_WINDOWS), USAGE)
    windows = [n for n in names if n in _WINDOWS]
    if len(windows) > 1:
        raise fail("--by: choose at most one of minute, hour, day", USAGE)
    low, high = parse_window(since, until, USAGE)
    store = open_store(data_dir, USAGE)
    columns = [_DIMENSIONS[n] for n in names if n in _DIMENSIONS]
    fields = (["windowStart", "windowEnd"] if windows else []) + USAGE_FIELDS
    if output is not OutputFormat.json:  # tables and CSV show only the columns grouped by
        fields = [f for f in fields if f in (*columns, "windowStart", "windowEnd", "count", "errorCount")]
    if store is None:
        emit_rows([], fields, output)
        return
    frame = store.usage(columns, windows[0] if windows else None, low, high)  # type: ignore[arg-type]
    emit(frame, fields, output)


def cost(
    data_dir: DataDir = Path("keytrail-data"),
    since: Since = None,
    until: Until = None,
    by: Annotated[str, typer.Option(help="Comma list of key, account.")] = "key,account",
    prices: Annotated[Path | None, path_option(help="TOML price table overriding the defaults.")] = None,
    free_tier: Annotated[bool | None, typer.Option(help=FREE_TIER_HELP, show_default=False)] = None,
    output: Format = OutputFormat.table,
) -> None:
    """Cost in USD per key and account: key-months (prorated hourly) and requests by price class."""
    names = parse_by(by, ("key", "account"), COST)
    table = price_table(prices, free_tier, COST)
    low, high = parse_window(since, until, COST)
    store = open_store(data_dir, COST)
    keys = [_DIMENSIONS[n] for n in names]
    fields = COST_FIELDS
    if output is not OutputFormat.json:  # tables and CSV show only the dimensions grouped by, as usage's do
        fields = [f for f in COST_FIELDS if f in keys or f not in ("keyArn", "accountId")]
    if store is None:  # no key to bill, no event dated ahead: no note either
        emit_rows([], fields, output)
        return
    import polars as pl

    from keytrail.reports.figures import ahead_note, storage_note

    end = store.open_end() if high is None else None  # --until: billed up to it, whatever now is
    if end is not None and low is not None and low >= end.storage:  # as `report` refuses it
        raise fail(since_after_default_end(str(since), end.storage, end.late), COST)
    frame = store_frame = store.cost(table, low, high, end)
    if len(keys) < 2:
        frame = frame.group_by(keys).agg(
            pl.col(c).sum() for c in COST_FIELDS if c not in ("keyArn", "accountId")
        )
    emit(frame.sort(keys, nulls_last=True), fields, output)
    if unseen := store.keys_never_created(store_frame):
        typer.echo(storage_note(len(unseen)), err=True)
    for step in store.clock_steps(store_frame):
        typer.echo(f"note: {step.line()}", err=True)
    if end is not None and end.late:
        typer.echo(ahead_note(end), err=True)


_LAST_USED_BY = "key or key,principal"


def last_used(
    data_dir: DataDir = Path("keytrail-data"),
    since: Since = None,
    until: Until = None,
    by: Annotated[str, typer.Option(help="key, or key,principal.")] = "key",
    output: Format = OutputFormat.table,
) -> None:
    """When each key was last used by a successful cryptographic operation (null: never, since tracking)."""
    names = parse_by(by, ("key", "principal"), LAST_USED, choices=_LAST_USED_BY)
    if names[0] != "key":  # `principal` alone gave the key x principal rows of `key,principal`, without a word
        raise fail(f"--by: choose {_LAST_USED_BY} (every row names its key)", LAST_USED)
    low, high = parse_window(since, until, LAST_USED)
    store = open_store(data_dir, LAST_USED)
    if store is None:
        emit_rows([], LAST_USED_FIELDS, output)
        return
    import polars as pl

    if "principal" in names:
        frame = _with_never_used(store, store.last_used(high).rename({"principalArn": "lastUsedPrincipalArn"}), high)
    else:
        frame = store.last_used_by_key(high)  # as of --until: a key used again later keeps its earlier use
    if low is not None:
        frame = frame.filter(pl.col("lastUsedTime") >= low)
    emit(frame, LAST_USED_FIELDS, output)


def _with_never_used(store: MetricsStore, per_principal: pl.DataFrame, until: datetime | None) -> pl.DataFrame:
    """Each key x principal's last use, and a row of null principal and times for each key seen by
    `until` and never used, as `--by key` lists them: no caller used it, so no pair named it, and
    the keys worth deleting were the ones left out."""
    import polars as pl

    never = store.last_used_by_key(until).filter(pl.col("lastUsedTime").is_null()).select(LAST_USED_FIELDS)
    both = pl.concat([per_principal.select(LAST_USED_FIELDS), never])
    return both.sort("keyArn", "lastUsedPrincipalArn", nulls_last=True)


def consume(
    ctx: typer.Context,
    data_dir: DataDir = Path("keytrail-data"),
    kafka: Annotated[str | None, address_option(
        help="Kafka bootstrap; default: the embedded log.", give=KAFKA_BOOTSTRAP)] = None,
    group: Annotated[str, typer.Option(
        parser=given("the Kafka consumer group's name"), metavar="<str>", help="Kafka consumer group.")
    ] = "keytrail-metrics",
    follow: Annotated[bool, typer.Option(help="Embedded log: keep waiting for new events.")] = True,
    exit_when_idle: Annotated[float | None, typer.Option(
        callback=number_in_range(0), help="Kafka: stop after N idle seconds.")] = None,
    cloudtrail: Annotated[
        list[Path] | None,
        typer.Option(metavar=CLOUDTRAIL_METAVAR, parser=named_path, help=f"Offline: {CLOUDTRAIL_HELP}"),
    ] = None,
    prices: Annotated[Path | None, path_option(
        help="TOML price table: the cost of the Parquet cost table and of --metrics-port's "
             "keytrail_kms_cost_usd.")] = None,
    batch_size: Annotated[int, typer.Option(help="Records per batch.", min=1, max=_MAX_BATCH)] = 10_000,
    checkpoint_records: Annotated[
        int, typer.Option(help="Persist at least every N records.", min=1)
    ] = 100_000,
    metrics_port: Annotated[
        int | None,
        typer.Option("--metrics-port", min=1, max=65535,
                     help="Serve Prometheus text at GET /metrics on this port (live): the requests, "
                          "cost and lag serve's /metrics shows for its consumer."),
    ] = None,
    metrics_host: Annotated[
        str,
        listen_option("--metrics-host", help="Address the --metrics-port endpoint listens on.",
                      port_option="--metrics-port")
    ] = "127.0.0.1",
) -> None:
    """Run the usage, cost and last-used consumer until stopped (SIGTERM/SIGINT) or the input ends."""
    from keytrail.cli.sidecar import try_lock
    from keytrail.pipeline.consumer import ConsumerSettings

    cloudtrail = cloudtrail_paths(cloudtrail, ctx.args, CONSUME)
    settings = ConsumerSettings(
        data_dir=data_dir,
        kafka_bootstrap=kafka,
        group_id=group,
        follow=follow,
        idle_seconds=exit_when_idle,
        max_records=batch_size,
        checkpoint_records=checkpoint_records,
        prices=price_table(prices, False, CONSUME),
    )
    if kafka and cloudtrail:  # one source per run: either alone would silently win
        raise fail("--kafka and --cloudtrail name two sources: give one", CONSUME)
    if exit_when_idle is not None and not kafka:  # the embedded log's follower would never stop by it
        raise fail("--exit-when-idle goes with --kafka; on the embedded log, --no-follow stops at its end", CONSUME)
    if kafka and not follow:  # a group member follows its partitions: the run would never end by it
        raise fail("--no-follow goes with the embedded log; with --kafka, --exit-when-idle S stops once the topic "
                   "is idle for S seconds", CONSUME)
    if not kafka and first_given(ctx, "--group"):  # the embedded log and files have one consumer, no group
        raise fail("--group goes with --kafka (the consumer group sharing the topic's partitions)", CONSUME)
    if problem := bootstrap_problem(kafka) or (cloudtrail and log_files_problem(cloudtrail, "--cloudtrail")):
        raise fail(problem, CONSUME)
    if not (kafka or cloudtrail or follow or event_log_dir(data_dir).is_dir()):  # a typo'd --data-dir
        raise fail(f"no audit event log in {data_dir} (is --data-dir right?)", CONSUME)
    if metrics_port is not None and (cloudtrail or not (kafka or follow)):  # the run ends: nothing would scrape it
        raise fail("--metrics-port goes with a live consumer (--kafka, or the embedded log with --follow), "
                   "not --cloudtrail or --no-follow", CONSUME)
    metrics = _metrics_socket(metrics_host, metrics_port) if metrics_port is not None else None
    # Two consumers of the embedded log or of files would overwrite each other's state; members of a
    # Kafka consumer group may share a data dir: the group gives each its own partitions.
    if not kafka and not try_lock(consumer_lock(data_dir)):
        raise fail(f"the metrics consumer of {data_dir} is already running ({_consumer_holder(data_dir)}): stop it "
                   "first", CONSUME)
    # Beside the one that counts the node's own event log there (serve's), whose events Kafka
    # carries too, each would count them twice: a group member holds, shared (members may share a
    # data dir), the lock the event log's consumer holds exclusively (pipeline/kafka_lock.py), so
    # that whichever starts second is refused. consumer.lock as well: a `consume --cloudtrail`, or
    # the child of a serve older than this keytrail, holds that one only.
    if kafka and not (hold_as_kafka_consumer(data_dir) and not _consumer_running(data_dir)):
        raise fail(f"the metrics consumer of {data_dir} is already running ({_consumer_holder(data_dir)}, counting "
                   "its event log): --kafka would count those events twice; give another --data-dir", CONSUME)
    if not (kafka or cloudtrail or hold_as_event_log_consumer(data_dir)):
        raise fail(kafka_consumers_counting(data_dir), CONSUME)
    make_dirs(data_dir)
    problems = Problems(on_shown=_say_skipped)  # in the CloudTrail log files: the first said on stderr as met
    stats = _consume_or_fail(settings, cloudtrail, problems, metrics)
    typer.echo(
        # Figures without thousands separators: scripts read them (`consumed 32000 records`).
        f"consumed {stats.records} {_noun(stats.records, 'record')}: {stats.counted} counted, "
        f"{stats.duplicates} {_noun(stats.duplicates, 'duplicate')}, {stats.redelivered} already counted"
        + (f", {stats.unreadable} unreadable" if stats.unreadable else "")
        + (f", {stats.network} {_noun(stats.network, 'network activity event')}" if stats.network else ""),
        err=True,
    )
    _note_other_routes(data_dir, _CLOUDTRAIL_ROUTE if cloudtrail else _KAFKA_ROUTE if kafka else _LOG_ROUTE)
    if not (kafka or cloudtrail or follow) and (problem := event_log_damage(data_dir)):
        raise fail(f"{problem}; the figures cover the records before it", CONSUME, code=1)
    if note := problems.unshown_note():
        typer.echo(f"note: {note}", err=True)
    if problems:  # what could be read is counted; a script still learns that some was not
        raise fail(f"{counted(len(problems), 'problem')} in the CloudTrail log files "
                   "(above): the figures leave out what could not be read", CONSUME, code=1)


def _say_skipped(text: str) -> None:
    typer.echo(f"skipped: {text}", err=True)  # worded as audit import, report and detect say it


_CLOUDTRAIL_ROUTE, _LOG_ROUTE, _KAFKA_ROUTE = "CloudTrail files", "the embedded event log", "Kafka"


def _route(partition: str) -> str:
    """How the events of a counted partition came in (its state file's name)."""
    return {CLOUDTRAIL_PARTITION: _CLOUDTRAIL_ROUTE, SEGMENT_LOG_PARTITION: _LOG_ROUTE}.get(partition, _KAFKA_ROUTE)


def _note_other_routes(data_dir: Path, mine: str) -> None:
    """Duplicates are known per route (each keeps the eventIDs it counted): the same log fed by two
    routes, an `audit import` consumed and the same files by --cloudtrail, say, counts twice."""
    others = sorted({_route(path.stem) for path in counted_partitions(data_dir)} - {mine})
    if others:
        typer.echo(f"note: {data_dir} counts events from {' and '.join(others)} as well as from {mine}; "
                   "duplicates are known per route, so an event that came by both is counted twice: feed each "
                   "log by one route", err=True)


def _metrics_socket(host: str, port: int) -> socket.socket:
    """Bound before the consumer starts, so that a port in use is the command's one-line error."""
    from keytrail.cli.metrics_endpoint import metrics_socket

    try:
        return metrics_socket(host, port)
    except ValueError as exc:
        raise fail(str(exc), CONSUME) from None


def _consume_or_fail(
    settings: ConsumerSettings, cloudtrail: list[Path] | None, problems: Problems,
    metrics: socket.socket | None = None,
) -> RunStats:
    import asyncio  # the consumer's, not the queries' (~0.1 s of `keytrail usage`'s start)

    from aiokafka.errors import KafkaError

    from keytrail.log_lines import BARE_FORMAT, log_to_stderr

    log_to_stderr(BARE_FORMAT)  # aiokafka's lines while the broker is down would bury keytrail's own
    try:
        return asyncio.run(_consume(settings, cloudtrail, problems, metrics))
    except KafkaError as exc:  # the broker out of reach at start: nothing consumed, nothing to save
        from keytrail.transport.kafka import kafka_problem

        raise fail(f"--kafka {settings.kafka_bootstrap}: {kafka_problem(exc)}", CONSUME, code=1) from None


async def _consume(
    settings: ConsumerSettings, cloudtrail: list[Path] | None, problems: Problems, metrics: socket.socket | None
) -> RunStats:
    import asyncio

    from keytrail.pipeline.consumer import MetricsConsumer
    from keytrail.transport.kafka import access_refused

    # serve's start check: a refusal told in seconds, not after the client's 40 s request timeout
    if settings.kafka_bootstrap and (refused := await access_refused(settings.kafka_bootstrap)):
        raise refused
    source, bar = _offline_source(cloudtrail, settings, problems) if cloudtrail else (None, None)
    consumer = MetricsConsumer(settings, source)

    def stop() -> None:  # the files source is the CLI's, not the consumer's: it has a stop of its own
        consumer.stop()
        if source is not None:
            source.stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop)
    try:
        async with _serving_metrics(metrics, consumer):
            return await consumer.run()
    finally:
        if bar is not None:  # stopped midway (Ctrl-C): the summary was glued to the bar ("20/200 filesconsumed …")
            bar.close()


def _serving_metrics(sock: socket.socket | None, consumer: MetricsConsumer) -> AbstractAsyncContextManager[None]:
    """GET /metrics on `sock` (`--metrics-port`): what serve's /metrics shows of its consumer (requests
    by operation and outcome, denied requests, cost per account, lag per partition), without the
    node's own families (spool, key inventory, alarms): a standalone consumer has none of them."""
    if sock is None:
        return contextlib.nullcontext()
    from keytrail.cli.metrics_endpoint import metrics_endpoint, render_readers_held

    if consumer.settings.kafka_bootstrap is not None:
        return metrics_endpoint(sock, consumer.render_prometheus)
    # Following the embedded log (--metrics-port goes with --follow there): 1 while it is held at a
    # record it cannot read, whose line a quiet node's lag alerts would never back up.
    return metrics_endpoint(sock, lambda: consumer.render_prometheus()
                            + render_readers_held({"consumer": consumer.held_at}))


def _offline_source(paths: list[Path], settings: ConsumerSettings, problems: Problems) -> tuple[Any, Progress]:
    """The records of the CloudTrail files, and the progress bar they draw, which the run ends."""
    from keytrail.pipeline.query import state_dir
    from keytrail.pipeline.sources import CloudTrailFilesSource
    from keytrail.reports.progress import Progress
    from keytrail.transport.cloudtrail_logs import iter_log_files

    problem = problems.append  # every one: each file's read counts only its own; the first are said as met
    files = list(iter_log_files(paths, problem))
    bar = Progress("files", enabled=len(files) > 1 and sys.stderr.isatty())  # one file: nothing to follow
    if problems.on_shown is not None:
        problems.on_shown = bar.above(problems.on_shown)  # a problem said as met: its own line
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        bar.update(done, len(files))
        if done == len(files):
            bar.close()

    return CloudTrailFilesSource(files, state_dir(settings.data_dir), max_records=settings.max_records,
                                 on_problem=problem, progress=advance), bar


# --- output ------------------------------------------------------------------------------------------


#: Rows made Python objects at a time for JSON and CSV: a year of `usage --by key,principal,minute`
#: (1.5 million rows) made whole took 1.9 GB.
EMIT_SLICE_ROWS = 10_000


def emit(frame: pl.DataFrame, fields: list[str], output: OutputFormat) -> None:
    """Print `frame` with exactly `fields` (absent ones null) in the chosen format: JSON and CSV a
    slice of rows at a time; a table whole, its columns as wide as their widest cell."""
    if output is OutputFormat.table:
        emit_rows(_rows(frame, fields), fields, output)
        return
    slices = (_rows(frame.slice(start, EMIT_SLICE_ROWS), fields) for start in range(0, frame.height, EMIT_SLICE_ROWS))
    _emit_slices(slices, fields, output)


def _rows(frame: pl.DataFrame, fields: list[str]) -> list[dict[str, Any]]:
    return [{name: row.get(name) for name in fields} for row in frame.iter_rows(named=True)]


def emit_rows(rows: list[dict[str, Any]], fields: list[str], output: OutputFormat) -> None:
    """Print `rows` (each holding every one of `fields`) in the chosen format."""
    if output is OutputFormat.table:
        _print(table(rows, fields) + "\n")
    else:
        _emit_slices([rows], fields, output)


def _emit_slices(slices: Iterable[list[dict[str, Any]]], fields: list[str], output: OutputFormat) -> None:
    """JSON lines or CSV (its header once), a slice of rows after another."""
    if output is OutputFormat.json:
        for rows in slices:
            for row in rows:
                typer.echo(json_line(row))
        return
    writer = csv.writer(sys.stdout, lineterminator="\n")  # a row at a time: see _print
    writer.writerow(fields)
    # Values as they are for the program reading them (quoted as CSV quotes them), as the report's
    # CSV and --format json hold them; on a terminal, escaped as the table is (`ls` does the same).
    shown = sys.stdout.isatty()
    for rows in slices:
        writer.writerows(_cells(rows, fields, shown=shown))
    sys.stdout.flush()


def _print(text: str) -> None:
    """`text` on stdout a line at a time. Written in one piece, a text larger than stdout's buffer
    that only part of fitted (a disk filling up under `> FILE`) was cut short without an error:
    Python's buffered writer passed the short count over, and the command exited 0."""
    sys.stdout.writelines(text.splitlines(keepends=True))
    sys.stdout.flush()


def json_line(row: dict[str, Any]) -> str:
    """One JSON object; money is written as the exact decimal number, times as ISO-8601 UTC."""
    from keytrail.reports.tabular import cell_text

    parts = []
    for name, value in row.items():
        if isinstance(value, Decimal):
            rendered = cell_text(value)
        elif isinstance(value, datetime | date):
            rendered = json.dumps(cell_text(value))
        else:
            rendered = json.dumps(value)
        parts.append(f"{json.dumps(name)}: {rendered}")
    return "{" + ", ".join(parts) + "}"


def table(rows: list[dict[str, Any]], fields: list[str]) -> str:
    """`rows` in columns as wide as their widest cell as the terminal shows it: a wide character
    takes two columns, one stdout's encoding lacks is as wide as its escape (`\\u674e`, under a Latin-1
    locale)."""
    encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
    cells = [[encodable(cell, encoding) for cell in row] for row in _cells(rows, fields)]
    widths = [max([len(name), *(columns(c[i]) for c in cells)]) for i, name in enumerate(fields)]
    lines = ["  ".join(name.ljust(w) for name, w in zip(fields, widths, strict=True))]
    lines.extend("  ".join(padded(c, w) for c, w in zip(row, widths, strict=True)) for row in cells)
    return "\n".join(line.rstrip() for line in lines)


def _cells(rows: list[dict[str, Any]], fields: list[str], *, shown: bool = True) -> list[list[str]]:
    """Each row's `fields` as text, `shown` on a terminal (`printable`); no rows, no text to render
    (nor polars loaded, which tabular's does)."""
    if not rows:
        return []
    from keytrail.reports.tabular import cell_text

    as_shown = printable if shown else str
    return [[as_shown(cell_text(row[name])) for name in fields] for row in rows]


def register(app: typer.Typer) -> None:
    """Add the metrics commands to the `keytrail` app."""
    app.command("usage")(usage)
    app.command("cost")(cost)
    app.command("last-used")(last_used)
    app.command("consume", **CLOUDTRAIL_COMMAND)(consume)


if __name__ == "__main__":  # `python -m keytrail.cli.metrics …`: the commands without the rest of the CLI
    standalone = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    register(standalone)
    standalone()
