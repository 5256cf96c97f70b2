"""Wiring of one keytrail node: store, clock, authorizer, audit trail, service, consumers,
detector and the HTTP app. Nothing here holds logic of its own; it only connects the pieces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from keytrail import __version__
from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.cli.tail import follow_event_log
from keytrail.clock import Clock, ManualClock, SystemClock
from keytrail.config import ServeSettings
from keytrail.detect.hooks import HooksConfig
from keytrail.detect.runner import DetectorRunner
from keytrail.kms.authz import Authorizer
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

__all__ = ["Node", "build_node"]

log = logging.getLogger("keytrail")
DETECTOR_TICK_SECONDS = 5.0


class _UnrecordedSink:
    """Audit off (`serve --no-audit`, benchmarks only): records nothing."""

    async def record(self, call: CallRecord) -> None:
        return None


@dataclass
class Node:
    """A running node's parts; `app` is what the HTTP server serves."""

    settings: ServeSettings
    service: KmsService
    app: KmsApp
    clock: Clock
    audit: AuditTrail | None
    detector: DetectorRunner | None = None
    background: list[asyncio.Task[Any]] = field(default_factory=list)
    on_clock_advanced: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _authorizer(clock: Clock) -> Authorizer:
    return PolicyAuthorizer(clock)


def build_node(settings: ServeSettings, credentials: CredentialStore) -> Node:
    """Build every part of a node from its settings (nothing starts until the app's lifespan)."""
    data_dir = settings.data_dir
    clock: Clock = ManualClock(follow_wall=True) if settings.dev_clock else SystemClock()
    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir))
    audit = None
    if settings.audit:
        audit = AuditTrail.open(AuditSettings(data_dir=data_dir, kafka_bootstrap=settings.kafka), now=clock.now)
    deps = ServiceDeps(store=store, clock=clock, audit=audit or _UnrecordedSink(), authorizer=_authorizer(clock))
    service = KmsService(deps)
    api = ApiSettings(max_body_bytes=settings.max_body_bytes, health=lambda: {"version": __version__},
                      dev_clock=clock if isinstance(clock, ManualClock) else None)
    node = Node(settings, service, KmsApp(service, credentials, api), clock, audit)
    node.on_clock_advanced.append(service.run_due)
    api.on_clock_advanced = lambda: _clock_advanced(node)
    api.startup.append(lambda: _start(node, credentials))
    api.shutdown.append(lambda: _stop(node))
    return node


async def _clock_advanced(node: Node) -> None:
    for hook in node.on_clock_advanced:
        await hook()


async def _start(node: Node, credentials: CredentialStore) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, _reload_principals, credentials)
    if node.audit is not None:
        await node.audit.start()
        _start_detector(node)
    node.background.append(asyncio.create_task(_scheduler(node)))
    await node.service.run_due()


def _start_detector(node: Node) -> None:
    settings = node.settings
    hooks = HooksConfig().with_flags(mqtt=settings.mqtt, kafka=settings.kafka)
    runner = DetectorRunner.open(settings.data_dir, hooks=hooks, clock=node.clock)
    node.detector = runner
    node.on_clock_advanced.append(lambda: _detector_catch_up(node))
    node.background.append(asyncio.create_task(_run_detector(node, runner)))


async def _run_detector(node: Node, runner: DetectorRunner) -> None:
    """Feed the detector every event of the log, and tick its time-based rules."""
    loop = asyncio.get_running_loop()
    last_tick = loop.time()
    async for records in follow_event_log(node.settings.data_dir):
        try:
            if records:
                await runner.feed(records)
            if loop.time() - last_tick >= DETECTOR_TICK_SECONDS:
                await runner.tick()
                last_tick = loop.time()
        except Exception:
            log.exception("detector failed on a batch; continuing")


async def _detector_catch_up(node: Node) -> None:
    """After the dev clock moves, evaluate time-based rules at once."""
    if node.detector is not None:
        await node.detector.tick()


def _reload_principals(credentials: CredentialStore) -> None:
    try:
        credentials.reload()
        log.warning("principals file reloaded")
    except ValueError as exc:
        log.error("principals file not reloaded: %s", exc)


async def _scheduler(node: Node) -> None:
    """Apply due deletions and rotations even for keys nobody touches."""
    while True:
        await asyncio.sleep(node.settings.scheduler_interval_seconds)
        try:
            await node.service.run_due()
        except Exception:
            log.exception("scheduled key maintenance failed")


async def _stop(node: Node) -> None:
    for task in node.background:
        task.cancel()
    await asyncio.gather(*node.background, return_exceptions=True)
    if node.detector is not None:
        await node.detector.close()
    if node.audit is not None:
        await node.audit.close()
    await node.service.store.close()
