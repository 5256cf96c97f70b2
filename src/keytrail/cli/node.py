"""Wiring of one keytrail node: store, clock, authorizer, audit trail, service, consumers,
detector and the HTTP app. Nothing here holds logic of its own; it only connects the pieces."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import gc
import json
import logging
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.api.http_protocol import REFUSAL_REASONS, REQUEST_REFUSAL_REASONS
from keytrail.api.protocol import operation_names
from keytrail.audit.cadence import duration
from keytrail.audit.spool import FSYNC_BUCKETS
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.children import Child, ChildSpec
from keytrail.cli.console import os_problem
from keytrail.cli.detect import detector_settings
from keytrail.cli.health import HEALTH_PARTS, Drain, NodeHealth, StoreProbe
from keytrail.cli.hook_secrets import hook_environment
from keytrail.cli.key_store import open_store
from keytrail.cli.metrics_endpoint import render_alarm_counts, render_detector_lag, render_readers_held
from keytrail.cli.settings_reload import SettingsReload
from keytrail.cli.sidecar import consumer_lock, detector_lock, sidecars, try_lock
from keytrail.cli.tail import detect_live, judged_up_to
from keytrail.clock import (
    DEV_CLOCK_FILE,
    STEP_HOLD_SECONDS,
    Clock,
    ManualClock,
    SystemClock,
    WallClockSteps,
    dev_clock_ahead,
    utc_now,
)
from keytrail.config import ServeSettings
from keytrail.detect.alarm_tally import AlarmTally
from keytrail.detect.alarms import Alarm
from keytrail.detect.deny import DENIED_CODES
from keytrail.detect.rules import DEFAULT_RULES
from keytrail.detect.runner import DetectorRunner
from keytrail.detect.sinks.jsonl import read_alarms
from keytrail.kms.authz import Authorizer
from keytrail.kms.errors import KmsError
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.hsm_cipher import HsmCipher
from keytrail.kms.importing import expiration_of
from keytrail.kms.key_last_use import (
    KeyUse,
    LastUseStore,
    SharedLastUsage,
    UseOutbox,
    share_last_uses,
    share_uses,
)
from keytrail.kms.keys import Key
from keytrail.kms.model import (
    SCHEDULED_FOR_DELETION,
    AuditUnavailable,
    CallRecord,
    CallsInProgress,
    KeyLastUsage,
    LastUsageSource,
)
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.store import Store
from keytrail.log_lines import LineThinner
from keytrail.owner_only import remove_stale_temps, replace_whole, replace_whole_temps
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
from keytrail.pipeline.kafka_lock import hold_as_event_log_consumer, kafka_consumers_counting
from keytrail.pipeline.lastused import last_used_per_key
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.prometheus import MetricsExposition, render_family, render_histogram
from keytrail.pipeline.query import MetricsStore
from keytrail.pipeline.segment_source import SEGMENT_LOG_PARTITION

__all__ = ["ConsumerRunning", "DetectorRunning", "Node", "StartFailed", "build_node", "reload_files",
           "reload_principals", "start_node", "stop_node"]

log = logging.getLogger("keytrail")


class _UnrecordedSink:
    """Audit off (`serve --no-audit`, benchmarks only): records nothing."""

    async def record(self, call: CallRecord) -> None:
        return None


class _DeniedCallCounter:
    """The audit sink with a count of denied calls by operation and principal (role sessions as
    their role) for /metrics: counted as each call is recorded, so a node counts its own calls
    whether or not it runs the detector (a counter that starts at zero with the process, as
    Prometheus expects). On a shared key store, the keys' uses of each call are noted too, once
    its record is durable, for the other nodes (`uses`, kms/key_last_use.py)."""

    def __init__(self, sink: AuditTrail, counts: Counter[tuple[str, str]], uses: UseOutbox | None) -> None:
        self._sink = sink
        self._counts = counts
        self._uses = uses

    def ready(self) -> None:
        self._sink.ready()

    async def record(self, call: CallRecord) -> None:
        await self._sink.record(call)
        if call.error_code in DENIED_CODES and call.context is not None:
            self._counts[(call.event_name, call.context.principal.policy_arn)] += 1
        if self._uses is not None:
            self._uses.note(call)


# Why the audit trail refused a caller's record, and with it the call (keytrail_audit_refused_calls_total):
# the spool cannot write (a full disk; it takes records again by itself), it failed (a failed fsync,
# its folder moved: until a restart), Kafka's cap of unshipped bytes, or the sink raised something else.
AUDIT_REFUSAL_REASONS = ("cannot_write", "spool_failed", "kafka_cap", "sink_error")


def _refusal_counter(audit: AuditTrail | None, counts: Counter[str]) -> Callable[[Exception], None]:
    """What the service tells of each call refused for want of its record (ServiceDeps.audit_refused)."""
    if audit is None:  # `--no-audit`: its sink refuses nothing
        return lambda refusal: None
    return functools.partial(_count_refused_call, audit, counts)


def _count_refused_call(audit: AuditTrail, counts: Counter[str], refusal: Exception) -> None:
    """Count a call refused because `audit` could not keep its record, by why (AUDIT_REFUSAL_REASONS),
    as the trail stands now: it refused the record a moment ago, in the same order it checks."""
    if not isinstance(refusal, AuditUnavailable):
        reason = "sink_error"
    elif audit.unshipped_bytes() > audit.settings.max_unshipped_bytes:
        reason = "kafka_cap"
    else:
        reason = "spool_failed" if audit.spool.out_of_service else "cannot_write"
    counts[reason] += 1


class _ScrapeWarnings:
    """The warnings a condition writes at every scrape of /metrics (a hung or lost key store: one
    each 15 s for as long as it lasts), each kind said once, then at most once a minute with the
    count left out, as the drivers' repeated lines are (log_lines.py)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lines = LineThinner(clock=clock)

    def warn(self, kind: str, message: str) -> None:
        if (line := self._lines.admit(kind, message)) is not None:
            log.warning("%s", line)


class _LastUsageFromMetrics:
    """GetKeyLastUsage answered from the last-used consumer's state."""

    def __init__(self, store: MetricsStore) -> None:
        self._store = store

    async def last_usage(self, key_arn: str) -> tuple[datetime | None, KeyLastUsage | None]:
        row = self._store.last_usage(key_arn)
        if row is None:
            return self._store.time_bounds()[0], None
        last = KeyLastUsage(row["Operation"], row["Timestamp"], row["CloudTrailEventId"], row["KmsRequestId"])
        return row["TrackingStartDate"], last


@dataclass
class Node:
    """A running node's parts; `app` is what the HTTP server serves."""

    settings: ServeSettings
    service: KmsService
    app: KmsApp
    clock: Clock
    audit: AuditTrail | None
    consumer: MetricsConsumer | None = None
    detector: DetectorRunner | None = None
    consumer_task: asyncio.Task[Any] | None = None
    alarm_tally: AlarmTally = field(default_factory=AlarmTally)  # keytrail_alarms_total: raised or escalated
    denied_counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (operation, principal)
    # By REFUSAL_REASONS and REQUEST_REFUSAL_REASONS: the HTTP server's, and the app's 413 (its ApiSettings.refusals).
    http_refusals: Counter[str] = field(default_factory=Counter)
    # By AUDIT_REFUSAL_REASONS: the calls answered KMSInternalException as their record could not be kept.
    audit_refusals: Counter[str] = field(default_factory=Counter)
    scrape_warnings: _ScrapeWarnings = field(default_factory=_ScrapeWarnings)
    detector_judged: int = 0  # the event log's offset the detector (child or in-process) has judged up to
    # The offset the consumer child, the detector (child or in-process) is held at in front of a
    # record of the event log it cannot read, None while it reads (keytrail_event_log_reader_held).
    readers_held: dict[str, int | None] = field(default_factory=dict)
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    children: list[Child] = field(default_factory=list)
    on_clock_advanced: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # The wall clock's Unix seconds as the node was built, under --dev-clock too: its own counters
    # count from zero from then on (process_start_time_seconds).
    started: float = field(default_factory=time.time)
    # On a key store several nodes share: the keys' uses of this node's calls, not yet written there.
    uses: UseOutbox | None = None
    settings_reload: SettingsReload | None = None  # with --config and a detector: SIGHUP reads it again
    drain: Drain = field(default_factory=Drain)  # a stop's wait for the load balancers (--drain-seconds)


def _authorizer(clock: Clock) -> Authorizer:
    return PolicyAuthorizer(clock)


# How often the thinned log of refused requests says what a minute over held back.
REFUSALS_SAID_EVERY_SECONDS = 5.0

# How long /metrics waits for the key inventory: well inside Prometheus's 10 s scrape timeout.
KEY_INVENTORY_SECONDS = 2.0
# The young generation's threshold once the start's objects are frozen. Calls in flight hold ≈ 55
# tracked objects each (coroutines, futures, the call's values) until they end, and count towards
# it: under an open loop with ≈ 30 calls queued, the default 700 ran a young collection every 26-55
# calls, each walking every call in flight again (≈ 0.25 ms), and a full one every few seconds:
# 5.5-9 µs of the serving thread a call (gc callbacks), more as the queue grows. Above what 64
# connections' calls hold, it was 0-1 young collection in 16,000 calls; cyclic garbage waits for
# at most this many objects.
YOUNG_COLLECTION_OBJECTS = 10_000
# What a key store raises when its database is gone or unwritable (asyncpg's lost connection is an
# InterfaceError, a refused one an OSError).
_STORE_ERRORS = (OSError, sqlite3.Error, asyncpg.PostgresError, asyncpg.InterfaceError)


class ConsumerRunning(Exception):
    """Another metrics consumer (`keytrail consume`) owns the data dir's pipeline state."""


class DetectorRunning(Exception):
    """Another detector (`keytrail detect --kafka`, a serve's detector child) writes the data dir's alarms."""


class StartFailed(Exception):
    """The node did not start: the message names the part that failed and why, in one line."""


def _node_clock(settings: ServeSettings) -> Clock:
    """The wall clock, or a dev clock resumed as far ahead as the data dir's went (DEV_CLOCK_FILE):
    a restarted `serve --dev-clock` must not take time back, or a deletion or rotation scheduled
    in dev time would wait the skipped time again and the trail's events would step back."""
    if not settings.dev_clock:
        return SystemClock()
    # A serve killed (kill -9, power loss) as it wrote the record left its temp file, named for its pid, for good.
    record = settings.data_dir / DEV_CLOCK_FILE
    remove_stale_temps(record.parent, replace_whole_temps(record))
    clock = ManualClock(follow_wall=True)
    with contextlib.suppress(OverflowError):  # a lead past the year 9999, which no dev clock reached
        clock.advance(dev_clock_ahead(settings.data_dir))
    return clock


async def build_node(settings: ServeSettings, credentials: CredentialStore, store: Store | None = None, *,
                     lifespan: bool = True) -> Node:
    """Build every part of a node from its settings around its key store (`open_store`'s, opened
    here unless given); nothing starts yet. With `lifespan` the app's ASGI lifespan starts and
    stops it (a server that runs the app by itself: bench's uvicorn --workers); else the caller
    does, with `start_node` and `stop_node` (serve: a failed start is then its own to report)."""
    clock = _node_clock(settings)
    if store is None:
        store = await open_store(settings)
    in_progress = CallsInProgress()
    audit = None
    if settings.audit:
        audit = AuditTrail.open(AuditSettings(data_dir=settings.data_dir, kafka_bootstrap=settings.kafka,
                                              digest_interval_s=settings.digest_interval_seconds,
                                              retention_hours=settings.retention_hours,
                                              retention_bytes=settings.retention_bytes,
                                              partitions=settings.kafka_partitions,
                                              replication_factor=settings.kafka_replication_factor,
                                              max_unshipped_bytes=settings.max_unshipped_bytes),
                                now=clock.now, in_progress=in_progress)
    try:
        node = _assemble(settings, credentials, store, clock, audit, in_progress)
    except BaseException:
        # The trail is open (its writer lock, its files, maybe a signing key it made): closed, so
        # that nothing of it is held, and serve can remove what the failed start made.
        if audit is not None:
            with contextlib.suppress(Exception):  # the build's own failure is the one to report
                await audit.close()
        raise
    if lifespan:
        node.app.settings.startup.append(lambda: start_node(node))
        node.app.settings.shutdown.append(lambda: _stop_in_lifespan(node))
    return node


def _assemble(settings: ServeSettings, credentials: CredentialStore, store: Store, clock: Clock,
              audit: AuditTrail | None, in_progress: CallsInProgress) -> Node:
    """The node's parts around its key store and audit trail (`build_node`)."""
    data_dir = settings.data_dir
    consumer = None
    if audit is not None and settings.dev_clock:  # else the consumer runs as a child process (cli/sidecar.py)
        if not try_lock(consumer_lock(data_dir)):  # the lock the child would hold, for life
            raise ConsumerRunning(f"the metrics consumer of {data_dir} is already running "
                                  "(keytrail consume): stop it first")
        if not hold_as_event_log_consumer(data_dir):  # one started since serve checked (cli/serve.py)
            raise ConsumerRunning(kafka_consumers_counting(data_dir))
        consumer = MetricsConsumer(ConsumerSettings(data_dir=data_dir))
        # Its detector runs in-process too: two on one data dir both announced every alarm, and each
        # emptied the hooks' outboxes of what the other still owed.
        if settings.detector and not try_lock(detector_lock(data_dir)):
            raise DetectorRunning(f"a detector is already running on {data_dir} (keytrail detect --kafka, or "
                                  "another serve's): stop it first, or start serve with --no-detector")
    denied: Counter[tuple[str, str]] = Counter()
    refused: Counter[str] = Counter()
    uses = UseOutbox() if audit is not None and isinstance(store, LastUseStore) else None
    deps = ServiceDeps(
        store=store, clock=clock, audit=_DeniedCallCounter(audit, denied, uses) if audit else _UnrecordedSink(),
        authorizer=_authorizer(clock), last_usage=_last_usage(data_dir, store) if audit else None,
        in_progress=in_progress, audit_refused=_refusal_counter(audit, refused),
    )
    service = KmsService(deps)
    drain = Drain()
    api = ApiSettings(max_body_bytes=settings.max_body_bytes, health=NodeHealth(audit, StoreProbe(store), drain),
                      dev_clock=clock if isinstance(clock, ManualClock) else None)
    node = Node(settings, service, KmsApp(service, credentials, api), clock, audit, consumer, denied_counts=denied,
                http_refusals=api.refusals, audit_refusals=refused, uses=uses, drain=drain)
    if audit is not None:
        pipeline_metrics = _pipeline_metrics(consumer, audit)
        api.metrics = lambda: _metrics(node, pipeline_metrics)
    node.on_clock_advanced += [lambda: _record_dev_clock(node), service.run_due]
    api.on_clock_advanced = lambda: _clock_advanced(node)
    return node


def _last_usage(data_dir: Path, store: Store) -> LastUsageSource:
    """GetKeyLastUsage's source: the node's consumer, and on a key store several nodes share the
    latest use any of them wrote there too (kms/key_last_use.py)."""
    local = _LastUsageFromMetrics(MetricsStore(data_dir))
    return SharedLastUsage(local, store) if isinstance(store, LastUseStore) else local


async def _share_counted_uses(data_dir: Path, uses: UseOutbox) -> None:
    """Note, for the other nodes, each key's last use this node's consumer counted: the store holds
    only the uses written since its nodes write them (a version without `kms_key_last_use`, a node
    killed before it wrote its last second's), and without them a key used only through this node
    read as unused on the others, whose guard then let it be disabled or scheduled for deletion.
    The store keeps only those later than its own (kms/key_last_use.py)."""
    try:
        counted = await asyncio.to_thread(_counted_uses, data_dir)
    except Exception as exc:  # the consumer's state unreadable: it says why; GetKeyLastUsage fails alike
        log.warning("the last uses of keys this node counted before its start are not shared with the other nodes: "
                    "%s", os_problem(exc) if isinstance(exc, OSError) else exc)
        return
    uses.give_back(counted)


def _counted_uses(data_dir: Path) -> list[KeyUse]:
    """Each key's last use in the consumer's state of `data_dir`."""
    rows = last_used_per_key(MetricsStore(data_dir).last_used()).to_dicts()
    return [KeyUse(row["keyArn"], row["lastUsedOperation"], row["lastUsedTime"].astimezone(UTC), row["eventId"],
                   row["requestId"], row["lastUsedPrincipalArn"]) for row in rows if row["lastUsedTime"] is not None]


def _pipeline_metrics(consumer: MetricsConsumer | None, audit: AuditTrail) -> Callable[[], Awaitable[str]]:
    """The consumer's part of /metrics: from the in-process consumer, or from the state files of
    the child's (its lag: the event log's end against the offset its persisted state covers).
    Rendered in a worker thread (`_SharedRender`): the cost reads every usage file of the data dir."""
    if consumer is not None:
        exposition = consumer.exposition

        def in_process() -> Callable[[], str]:
            # The consumer's lag is copied here, on the loop that updates it; the render itself
            # reads only the state files, as a reader in another process would.
            return functools.partial(exposition.render, consumer.runner.lag(), audit.spool_depth)

        return _SharedRender(in_process)
    exposition = MetricsExposition(MetricsStore(audit.settings.data_dir), PriceTable())

    def render() -> str:
        # In the worker thread too: the log is read from any thread as the spool's writer thread
        # appends to it; its end read after the offsets, the lag is never too small.
        covered = exposition.store.offsets().get(SEGMENT_LOG_PARTITION, 0)
        lag = {SEGMENT_LOG_PARTITION: max(0, audit.log.end_offset() - covered)}
        return exposition.render(lag, audit.spool_depth)

    return _SharedRender(lambda: render)


class _SharedRender:
    """A render run in a worker thread, one at a time (the exposition's cost cache has one writer):
    the scrapes that arrive while it runs share its text (or its exception), instead of each starting
    one more. `prepare`, on the loop, reads what only the loop may read and returns the render. On
    the loop, the cost (seconds, over a year of history) held every KMS call of the node once a minute."""

    def __init__(self, prepare: Callable[[], Callable[[], str]]) -> None:
        self._prepare = prepare
        self._running: asyncio.Future[str] | None = None

    def __call__(self) -> Awaitable[str]:
        if self._running is None or self._running.done():  # done, not yet cleared by `_ended`
            self._running = asyncio.ensure_future(asyncio.to_thread(self._prepare()))
            self._running.add_done_callback(self._ended)
        # Shielded: a scrape that goes away (its client gone) does not cancel the render the others await.
        return asyncio.shield(self._running)

    def _ended(self, render: asyncio.Future[str]) -> None:
        if self._running is render:
            self._running = None
        if not render.cancelled():
            render.exception()  # retrieved: the scrapes awaiting it say it, and none may be left


async def _metrics(node: Node, pipeline_metrics: Callable[[], Awaitable[str]]) -> str:
    """GET /metrics: the consumers' metrics, plus the key inventory, the alarms raised and health."""
    pipeline, keys, health = await asyncio.gather(pipeline_metrics(), _key_inventory(node), _health(node))
    alarms = render_alarm_counts(node.alarm_tally.counts, DEFAULT_RULES if node.settings.detector else ())
    if node.settings.detector and node.audit is not None:
        behind = node.audit.log.end_offset() - node.detector_judged
        alarms += render_detector_lag({SEGMENT_LOG_PARTITION: max(0, behind)})
    denied = render_family(
        "keytrail_kms_denied_by_principal_total", "counter", "KMS calls denied by authorization, per principal.",
        (({"operation": op, "principal": p}, n) for (op, p), n in sorted(node.denied_counts.items())))
    refused = render_family(
        "keytrail_kms_unauthenticated_total", "counter",
        "KMS requests refused before authentication (unknown access key, bad signature), by error code.",
        (({"code": code}, n) for code, n in sorted(node.app.refused.counts.items())))
    connections = render_family(
        "keytrail_http_refused_connections_total", "counter",
        "Connections serve closed before serving a request on them (connection limit, TLS handshake), by reason.",
        # Every reason from 0: a series first seen at 1 is no increase to Prometheus.
        (({"reason": reason}, node.http_refusals[reason]) for reason in REFUSAL_REASONS))
    requests = render_family(
        "keytrail_http_refused_requests_total", "counter",
        "Requests serve answered itself, never carried out (408 slow, 431 headers, 400 not HTTP, 413 body), by reason.",
        (({"reason": reason}, node.http_refusals[reason]) for reason in REQUEST_REFUSAL_REASONS))
    restarts = render_family(
        "keytrail_child_restarts_total", "counter", "Times serve restarted a child process after it exited on its own.",
        [*(({"child": child.spec.name}, child.restarts)
           for child in node.children + (node.audit.children() if node.audit is not None else [])),
         # Not a Child: the spool runs it, and its writer thread fsyncs while it is replaced.
         *([({"child": "audit fsync helper"}, node.audit.spool.helper_restarts)] if node.audit is not None else [])])
    return (pipeline + keys + alarms + denied + refused + connections + requests + restarts + health
            + _readers_held(node) + _audit_commits(node.audit) + _audit_unshipped(node.audit) + _audit_refused(node)
            + _hsm_failed_calls(node) + _store_tampering(node) + _process_start(node))


def _hsm_failed_calls(node: Node) -> str:
    """Per custom key store, the calls its HSM could not serve while it was CONNECTED (the token gone,
    its PIN changed, a PKCS#11 call failed or unanswered): DescribeCustomKeyStores still says
    CONNECTED, the callers get KMSInvalidStateException as for a disabled key, and the log says
    each cause once. From zero at each start; a store's series is born at its first failure."""
    cipher = node.service.ciphers.get("hsm")
    failed = cipher.connections.failed_calls if isinstance(cipher, HsmCipher) else {}
    return render_family(
        "keytrail_custom_key_store_failed_calls_total", "counter",
        "Calls on a CONNECTED custom key store that its HSM could not serve, by store.",
        (({"store": store}, n) for store, n in sorted(failed.items())))


def _store_tampering(node: Node) -> str:
    """What the key store found changed outside keytrail since the node started: each row whose
    document did not verify, once, by table (every table listed from 0), and whether its rows no
    longer match its ledger. A refused row fails only the calls that need it, which no error rate
    shows for a rarely used key; the alerts page on either at once."""
    tampering = node.service.store.tampering
    rows = render_family(
        "keytrail_key_store_tampered_rows_total", "counter",
        "Rows of the key store whose document did not verify under the root key (edited, forged, copied from "
        "another row), each counted once since the node started, by table.",
        (({"table": table}, n) for table, n in sorted(tampering.rows().items())))
    ledger = render_family(
        "keytrail_key_store_ledger_mismatch", "gauge",
        "1 once the key store's rows no longer match its ledger (rows deleted, put back or added outside keytrail).",
        [({}, int(tampering.ledger_mismatch))])
    return rows + ledger


def _process_start(node: Node) -> str:
    """The node's start, under the name Prometheus's client libraries give it. The counters serve keeps
    only in memory count from zero from then on: the alerts and panels over them take a series that
    was missing a window ago as new where the node started within the window (or answered the scrape
    then), not where it comes back at its since-start total after a gap in the scrapes
    (dashboards/build.py, deploy/alerts.yml)."""
    return render_family("process_start_time_seconds", "gauge",
                         "Start time of the process since unix epoch in seconds.", [({}, node.started)])


async def _health(node: Node) -> str:
    """/_keytrail/health as a gauge per part: a node whose audit spool cannot keep records (a full
    disk, a failed fsync, the Kafka cap) refuses every call without a record, so no request counter
    shows it (keytrail_audit_refused_calls_total counts them), and an alert rule could not see what
    the load balancer's probe sees."""
    answer = await node.app.settings.health() if node.app.settings.health is not None else {}
    return render_family(
        "keytrail_healthy", "gauge",
        "1 while this part of the node serves calls, 0 while it fails them all (/_keytrail/health names why).",
        (({"part": part}, 0 if answer.get(part) else 1) for part in HEALTH_PARTS))


async def _key_inventory(node: Node) -> str:
    """The key inventory family, or nothing while the key store cannot be read (a lost or hung
    PostgreSQL): the scrape still answers with everything else, where a 500 or a scrape timeout
    would hide the whole node. Said in the log at most once a minute (`_ScrapeWarnings`), not at
    every scrape."""
    read = asyncio.ensure_future(node.service.store.all_keys())
    if not (await asyncio.wait({read}, timeout=KEY_INVENTORY_SECONDS))[0]:
        # Not wait_for: it would wait for the cancellation, which asyncpg sends to the hung database.
        read.add_done_callback(lambda task: task.cancelled() or task.exception())  # nobody awaits it
        read.cancel()
        node.scrape_warnings.warn("hung", "/metrics: keytrail_kms_keys left out, the key store did not answer "
                                  f"in {KEY_INVENTORY_SECONDS:.0f} s")
        return ""
    try:
        keys = read.result()
    except _STORE_ERRORS as exc:
        node.scrape_warnings.warn("unreadable", f"/metrics: keytrail_kms_keys left out, the key store cannot be "
                                  f"read: {exc}")
        return ""
    except KmsError:  # the store refusing every call (its ledger mismatched): its own log line said why
        return ""
    states = Counter(key.state.value for key in keys)
    return render_family("keytrail_kms_keys", "gauge", "KMS keys by key state.",
                         (({"state": state}, count) for state, count in sorted(states.items()))) + \
        _material_expirations(keys)


def _material_expirations(keys: list[Key]) -> str:
    """When each key's imported material first expires (DescribeKey's ValidTo), as AWS's CloudWatch
    metric SecondsUntilKeyMaterialExpiration tells: once it has, every cryptographic call on the key
    fails until the material is imported again, and no other figure shows it coming. A timestamp,
    not seconds left, as Prometheus names it: the alert subtracts time(). Not of a key scheduled for
    deletion: it serves no call, so its material's expiry breaks nothing, and no one is to re-import it."""
    ends = sorted((key.arn, valid_to) for key in keys
                  if key.state not in SCHEDULED_FOR_DELETION and (valid_to := expiration_of(key)[1]) is not None)
    return render_family(
        "keytrail_kms_key_material_expiration_timestamp_seconds", "gauge",
        "When the key's imported key material first expires (DescribeKey's ValidTo), in Unix seconds.",
        (({"key": arn}, valid_to.timestamp()) for arn, valid_to in ends))


def _audit_commits(audit: AuditTrail | None) -> str:
    """The spool's group commits: how long the durability wait takes, and how many calls share it."""
    if audit is None:
        return ""
    stats = audit.spool.stats
    return render_histogram(
        "keytrail_audit_fsync_seconds", "Time each audit group commit's fsync took (every audited call waits for one).",
        FSYNC_BUCKETS, stats.buckets, stats.fsync_seconds,
    ) + render_family("keytrail_audit_committed_records_total", "counter",
                      "Audit records made durable; divided by the fsync count, the mean group commit size.",
                      [({}, stats.records)])


def _audit_refused(node: Node) -> str:
    """The calls refused because their record could not be kept, by why: they leave no record, so no
    request counter has them, and /_keytrail/health shows a refusal for 10 s only (audit/spool.py),
    which a quiet node's scrapes miss."""
    if node.audit is None:
        return ""
    return render_family(
        "keytrail_audit_refused_calls_total", "counter",
        "KMS calls refused (KMSInternalException) because the audit trail could not keep their record, by reason.",
        # Every reason from 0: a series first seen at 1 is no increase to Prometheus.
        (({"reason": reason}, node.audit_refusals[reason]) for reason in AUDIT_REFUSAL_REASONS))


def _audit_unshipped(audit: AuditTrail | None) -> str:
    """The bytes of the log Kafka has not acknowledged (0 without Kafka) and, with Kafka, the cap past
    which calls are refused (--max-unshipped-bytes): keytrail_audit_spool_depth counts records, the
    cap bytes. Without Kafka no cap applies: its family has no sample (its default showed a cap that
    did not exist), so the alert's ratio of the two has no series there, where it could never fire."""
    if audit is None:
        return ""
    cap: list[tuple[dict[str, str], int]] = []
    if audit.settings.kafka_bootstrap:
        cap.append(({}, audit.settings.max_unshipped_bytes))
    return render_family(
        "keytrail_audit_unshipped_bytes", "gauge", "Bytes of the audit log Kafka has not acknowledged.",
        [({}, audit.unshipped_bytes())],
    ) + render_family(
        "keytrail_audit_unshipped_bytes_limit", "gauge",
        "--max-unshipped-bytes: past it every KMS call is refused until shipping catches up.", cap,
    ) + _kafka_losses(audit)


def _kafka_losses(audit: AuditTrail) -> str:
    """Each time the broker was found to have lost audit records it had acknowledged (restarted
    empty, the topic deleted): the consumers and the detector reading Kafka never see those calls,
    and the shipper does not send them again by itself (docs/audit-events.md, Kafka). With Kafka
    only, from 0 at the start, so that increase() counts the first."""
    losses = audit.kafka_losses()
    return render_family(
        "keytrail_audit_kafka_losses_total", "counter",
        "Times the Kafka broker was found to have lost audit records it had acknowledged.",
        [] if losses is None else [({}, losses)])


def record_dev_clock(data_dir: Path, now: datetime) -> None:
    """Keep in `data_dir` (DEV_CLOCK_FILE) how far a dev clock reading `now` is ahead of the wall
    clock: the furthest it has been, as a restarted `serve --dev-clock` starts at the wall clock
    again and its earlier events keep their dates."""
    ahead = max((now - utc_now()).total_seconds(), dev_clock_ahead(data_dir))
    replace_whole(data_dir / DEV_CLOCK_FILE, json.dumps({"aheadSeconds": ahead}).encode() + b"\n")


async def _record_dev_clock(node: Node) -> None:
    """Keep the dev clock's lead in the data dir before anything runs at the new time (the due
    deletions' events), so that the cost, here and in later queries, bills key storage up to the
    node's now and does not take its events for ones dated ahead (pipeline/query.py)."""
    try:
        record_dev_clock(node.settings.data_dir, node.clock.now())
    except OSError as error:  # the clock has moved: the call still answers, the cost may lag behind
        log.warning("could not record the dev clock in %s: %s", node.settings.data_dir, os_problem(error))


async def _clock_advanced(node: Node) -> None:
    for hook in node.on_clock_advanced:
        await hook()


async def start_node(node: Node) -> None:
    """Start what runs with the node (audit trail, consumers, detector, scheduler) and apply what
    is due. If that fails, what did start is stopped again (the key store closed) and StartFailed
    says what failed, so that serve can report it in one line and leave the data dir as it was."""
    try:
        await _start(node)
    except BaseException as exc:
        await stop_node(node, quiet=True)
        if isinstance(exc, Exception) and not isinstance(exc, StartFailed):
            raise StartFailed(f"the node did not start: {_reason(exc)}") from None
        raise


async def stop_node(node: Node, *, quiet: bool = False) -> bool:
    """Stop the node: background tasks; children, consumer, detector and the audit trail's last
    records (its final digest) and shipping side by side; the audit trail's files; then the key
    store. A part that fails to stop is logged (unless `quiet`: a failed start, whose own failure
    is the one to report) and the rest still stop; each stage's parts stop side by side, stage
    after stage (`_stop_stages`). Whether every part stopped: serve's exit status says it, as a
    final digest that a full disk had no room for left a stop that only its log line told of."""

    async def stop_part(name: str, stop: Callable[[], Awaitable[object]]) -> bool:
        try:
            await stop()
        except Exception as exc:
            if not quiet:
                log.error("stopping the node: %s: %s", name, _reason(exc))
            return False
        return True

    stopped = True
    for stage in _stop_stages(node):
        stopped = all(await asyncio.gather(*(stop_part(name, stop) for name, stop in stage))) and stopped
    return stopped


async def _stop_in_lifespan(node: Node) -> None:
    """`stop_node` as the app's ASGI lifespan runs it: uvicorn's exit status is its own to set, and
    a part that failed to stop has said so in the log."""
    await stop_node(node)


async def _start(node: Node) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload_files, node)
    if node.audit is not None:
        with _part("the audit trail"):
            await node.audit.start()
        with _part("the metrics consumer and detector"):
            _start_consumers(node)
    # The first pass is the start's last step that can fail, and it fails only before any due work
    # is done (reading the keys): a failed start removes the audit trail it made (serve), which
    # must then hold no record of a rotation or deletion that was carried out, nor of a change an
    # earlier node left owed (recorded after the due work, never failing the pass: kms/owed_calls.py).
    with _part("the first pass of scheduled key maintenance"):
        await node.service.run_due()
    node.background.append(asyncio.create_task(_scheduler(node)))
    node.background.append(asyncio.create_task(_say_overdue_refusals(node.app)))
    if node.uses is not None and isinstance(node.service.store, LastUseStore):
        node.background.append(asyncio.create_task(_share_counted_uses(node.settings.data_dir, node.uses)))
        node.background.append(asyncio.create_task(share_uses(node.uses, node.service.store)))
    # botocore reads and parses the KMS model (gzip JSON) on first use: 0.5-0.8 s that otherwise
    # falls on the first request; loaded before the freeze below, it is also out of the gc's reach.
    operation_names()
    _freeze_start_objects()
    _release_freed_memory()


def _freeze_start_objects() -> None:
    """What is alive now (modules, the app, caches) lives as long as the process: out of the cyclic
    collector's reach, a full collection no longer walks it (one held the loop ~50 ms under load).
    The calls to come are collected young only past YOUNG_COLLECTION_OBJECTS."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION_OBJECTS, *gc.get_threshold()[1:])


def _release_freed_memory() -> None:
    """Hand the memory the start freed back to the system (glibc's `malloc_trim`; elsewhere nothing):
    reading the key store holds every document at once, and the heap pages they leave between the
    keys that stay are otherwise kept for good. Measured on 100,000 keys: the store's process went
    from 388 to 190 MB resident, in 7 ms."""
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator keeps what it keeps
        return
    trim(0)


@contextlib.contextmanager
def _part(name: str) -> Iterator[None]:
    """StartFailed naming the part of the start that failed, and why."""
    try:
        yield
    except Exception as exc:
        raise StartFailed(f"the node did not start: {name}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """An exception as the end of a one-line complaint (keytrail's errors carry no key material)."""
    if isinstance(exc, KmsError):
        return exc.message
    if isinstance(exc, OSError) and exc.strerror:
        return os_problem(exc)
    return str(exc) or type(exc).__name__


def _start_consumers(node: Node) -> None:
    """The metrics consumer and the detector: child processes on the real clock, in this process
    under the dev clock (it is this process's clock, and the detector's time rules must see it move)."""
    if node.consumer is not None:  # the dev clock
        node.consumer_task = asyncio.create_task(_consume_in_process(node.consumer))
        if node.settings.detector:
            _start_detector(node)
            _reload_settings_with(node, None)
        return
    if node.settings.detector:
        _remember_delivered(node)
    node.children = [Child(spec) for spec in sidecars(node.settings, node.alarm_tally.add,
                                                      functools.partial(_detector_judged, node),
                                                      functools.partial(_reader_held, node),
                                                      lambda: _config_text(node))]
    for child in node.children:
        child.start()
    _reload_settings_with(node, next((child for child in node.children if child.spec.name == "detector"), None))


def _config_text(node: Node) -> str | None:
    """The --config text serve last read and checked, which its detector child runs on."""
    return node.settings_reload.text if node.settings_reload is not None else None


def _reload_settings_with(node: Node, detector: Child | None) -> None:
    """Have SIGHUP read the --config file again, for `detector` (None: the detector runs in serve)."""
    if node.settings.config is not None and node.settings.detector:
        node.settings_reload = SettingsReload(node.settings.config, detector, node.settings.hook_secrets)


def _remember_delivered(node: Node) -> None:
    """The alarms an earlier run delivered (alarms.jsonl, which the detector child reads too), so
    that their next updates are not counted as raised again (`AlarmTally.remember`)."""
    try:
        delivered = read_alarms(node.settings.data_dir / "alarms.jsonl")
    except OSError as exc:  # the child says so too, and is what needs the file: no reason to stop here
        log.warning("alarms.jsonl unreadable (%s): alarms open before this start count again", os_problem(exc))
        return
    node.alarm_tally.remember({alarm_id: alarm.severity.rank for alarm_id, alarm in delivered.items()})


async def _consume_in_process(consumer: MetricsConsumer) -> None:
    """The dev clock's in-process consumer. A failure to write its state (a full disk), or any other
    (a bug: the child's would exit it, and be restarted), restarts it from its last checkpoint after
    the backoff `serve` restarts its consumer child with, instead of leaving the metrics and
    GetKeyLastUsage stale for the rest of the process, unsaid."""
    delay, longest = ChildSpec.first_backoff, ChildSpec.max_backoff
    again = False
    while True:
        try:
            if again:
                consumer.reopen()  # reads its state files: it may fail as a run does
            await consumer.run()
            return
        except (OSError, sqlite3.Error) as exc:
            log.error("metrics consumer: %s; restarting in %.1f s", exc, delay)
        except Exception as exc:  # not the stop's cancellation, a BaseException
            # Its traceback, in the one line's record: no disk or file to blame, a bug to fix.
            log.error("metrics consumer failed: %s: %s; restarting in %.1f s", type(exc).__name__, exc, delay,
                      exc_info=exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer.stop_event.wait(), delay)
        if consumer.stop_event.is_set():
            return
        again = True
        delay = min(delay * 2, longest)


def _start_detector(node: Node) -> None:
    settings = node.settings
    rules, hooks = detector_settings(settings.config, environment=hook_environment(settings.hook_secrets))
    hooks = hooks.with_flags(mqtt=settings.mqtt, kafka=settings.kafka)
    credentials = node.app.credentials  # its organizations as serve's SIGHUP last read them
    runner = DetectorRunner.open(settings.data_dir, hooks=hooks, rules=rules, clock=node.clock,
                                 organization_of=lambda account: credentials.organizations.get(account))
    node.alarm_tally.remember(runner.delivered_ranks())  # counted by the run that delivered them
    node.detector = runner
    node.on_clock_advanced.append(lambda: _detector_catch_up(node))
    node.background.append(asyncio.create_task(_detect_in_process(node, runner)))


async def _detect_in_process(node: Node, runner: DetectorRunner) -> None:
    """The dev clock's in-process detector. An error reading the event log (a segment it cannot
    open) ended its task in silence, judging no call for the rest of the process; it is said in one
    line, as serve's detector child says it, and the detector reads on from the offset it has judged
    up to (its state is kept: read again from the start, the same calls would count twice in its
    windows) after the backoff serve restarts that child with, until it is stopped."""
    announce = functools.partial(_count_alarms, node)
    judged = functools.partial(_detector_judged, node)
    held = functools.partial(_reader_held, node, "detector")
    delay = ChildSpec.first_backoff
    while True:
        try:
            await detect_live(node.settings.data_dir, runner, announce, judged, start=node.detector_judged, held=held)
        except Exception as exc:  # not the stop's cancellation, a BaseException
            log.error("detector: %s; reading the event log again in %.1f s", _reason(exc), delay)
        held(None)  # the next loop watches anew, and would not say that it reads on
        await asyncio.sleep(delay)
        delay = min(delay * 2, ChildSpec.max_backoff)


async def _detector_catch_up(node: Node) -> None:
    """After the dev clock moves, evaluate time-based rules at once, as soon as the detector has
    judged what the log held at the move: the calls answered just before it (read within
    DETECTOR_GATHER_SECONDS), the RotateKey and DeleteKey that run_due logged. Ticked before, it
    closed the windows under them as of the new time: the last denied call before a move paged
    again as a new alarm. Still behind after a few seconds (a replay after a start), it is left
    to the detector's loop, which ticks once it has read them."""
    if node.detector is None or node.audit is None:
        return
    if await judged_up_to(node.audit.log.end_offset(), lambda: node.detector_judged):
        _count_alarms(node, await node.detector.tick())


def _count_alarms(node: Node, alarms: list[Alarm]) -> None:
    node.alarm_tally.add_alarms(alarms)


def _detector_judged(node: Node, offset: int) -> None:
    node.detector_judged = offset


def _reader_held(node: Node, reader: str, offset: int | None) -> None:
    node.readers_held[reader] = offset


def _readers_held(node: Node) -> str:
    """keytrail_event_log_reader_held for each reader of the event log the node runs: its consumer,
    its detector, and its Kafka shipper (a zero for each reading, so that an alert sees it from the start)."""
    if node.audit is None:  # no event log
        return ""
    consumer = node.consumer.held_at if node.consumer is not None else node.readers_held.get("consumer")
    held = {"consumer": consumer} | node.audit.readers_held()
    if node.settings.detector:
        held["detector"] = node.readers_held.get("detector")
    return render_readers_held(held)


def reload_files(node: Node) -> None:
    """SIGHUP: the principals file read again, then the settings file (--config), each saying in
    the log whether it was."""
    reload_principals(node.app.credentials)
    if node.settings_reload is not None:
        node.settings_reload()


def reload_principals(credentials: CredentialStore) -> None:
    """Re-read the principals file (SIGHUP), saying in the log whether it was."""
    try:
        credentials.reload()
        log.warning("principals file reloaded")
    except ValueError as exc:
        log.error("principals file not reloaded: %s", exc)


class _StoreRefusal:
    """The key store refusing the scheduler's tick, said in the log when it starts, when its reason
    changes and when it ends, not on every tick: a PostgreSQL store that no longer matches its
    ledger refuses every call until the node restarts, a database away times out each one, and a
    line every few seconds would bury the one line that says why (the store's own)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def refused(self, reason: str) -> None:
        if reason != self.reason:
            log.error("scheduled key maintenance failed: %s (said again only once it runs, or fails otherwise)",
                      reason)
        self.reason = reason

    def ran(self) -> None:
        if self.reason is not None:
            log.warning("scheduled key maintenance runs again (the key store answers)")
        self.reason = None


async def _say_overdue_refusals(app: KmsApp) -> None:
    """Let the log of requests refused before authentication say, within seconds of its minute's
    end, what it held back, rather than at a next refusal that may never come."""
    while True:
        await asyncio.sleep(REFUSALS_SAID_EVERY_SECONDS)
        app.refused.say_overdue()


async def _scheduler(node: Node) -> None:
    """Apply due deletions and rotations even for keys nobody touches."""
    refusal, steps = _StoreRefusal(), WallClockSteps()
    steps.step()
    while True:
        await asyncio.sleep(node.settings.scheduler_interval_seconds)
        _say_wall_clock_step(*steps.step())
        try:
            await node.service.run_due()
        except KmsError as exc:  # the key store refusing calls: its own log line said why
            refusal.refused(exc.message)
            continue
        except _STORE_ERRORS as exc:  # its database stopped (connection refused) or unreadable: no bug
            refusal.refused(f"the key store failed: {_reason(exc)}")
            continue
        except Exception:
            log.exception("scheduled key maintenance failed")
            continue
        refusal.ran()


def _say_wall_clock_step(stepped: float, passed: float) -> None:
    """One line when the wall clock stepped: rotations fall due, and calls are dated, by it (deletions
    and expiries after a hold, kms/due_work.py), so a node that rotated keys, or logged calls dated
    before those already logged, after an NTP step or a date set by hand said nothing of why."""
    if not stepped:
        return
    how = (f"the wall clock stepped {duration(round(abs(stepped)))} {'ahead' if stepped > 0 else 'back'} "
           f"({duration(round(passed))} passed by a clock no step moves)")
    if stepped > 0:
        log.warning("%s: rotations due by the new time are carried out, deletions and expiries of imported material "
                    "it alone made due are held for %g h (a line names them), and calls are dated by it", how,
                    STEP_HOLD_SECONDS / 3600)
    else:
        log.warning("%s: calls are dated before those already logged until it is past them again", how)


_Part = tuple[str, Callable[[], Awaitable[object]]]


def _stop_stages(node: Node) -> list[list[_Part]]:
    """The background tasks first, so that what they audit is in the log before it takes no more.
    Then what reads the log (children, consumer, detector) and the audit trail's finish (its last
    records, the final digest, shipping) side by side, each bounded by its own stop time: a broker
    or hook that never answers costs the stop one of those times, not their sum. Then the audit
    trail's files and the key store."""
    readers: list[_Part] = [(f"{child.spec.name} child", child.stop) for child in node.children]
    readers.append(("metrics consumer", lambda: _stop_consumer(node)))
    if node.detector is not None:
        readers.append(("detector", node.detector.close))
    if node.audit is not None:
        readers.append(("audit trail's last records and shipping", node.audit.finish))
    if node.uses is not None and isinstance(node.service.store, LastUseStore):
        readers.append(("the keys' last uses for the other nodes",
                        functools.partial(share_last_uses, node.uses, node.service.store)))
    stages: list[list[_Part]] = [[("background tasks", lambda: _cancel(node.background))], readers]
    if node.audit is not None:
        stages.append([("audit trail", node.audit.close)])
    return [*stages, [("key store", node.service.store.close)]]


async def _stop_consumer(node: Node) -> None:
    if node.consumer is not None and node.consumer_task is not None:
        node.consumer.stop()  # it checkpoints and exports what it has, then ends
        with contextlib.suppress(Exception):
            await asyncio.wait_for(node.consumer_task, timeout=15)


async def _cancel(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
