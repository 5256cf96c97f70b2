"""Wiring of one keytrail node: store, clock, authorizer, audit trail, service, HTTP app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from keytrail import __version__
from keytrail.api.app import ApiSettings, KmsApp
from keytrail.api.credentials import CredentialStore
from keytrail.clock import Clock, ManualClock, SystemClock
from keytrail.config import ServeSettings
from keytrail.kms.authz import Authorizer
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.model import AuditSink, CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

__all__ = ["Node", "build_node"]

log = logging.getLogger("keytrail")


class _UnrecordedSink:
    """Placeholder until the audit trail is wired: records nothing."""

    async def record(self, call: CallRecord) -> None:
        return None


@dataclass
class Node:
    """A running node's parts; `app` is what the HTTP server serves."""

    settings: ServeSettings
    service: KmsService
    app: KmsApp
    clock: Clock
    background: list[asyncio.Task[Any]] = field(default_factory=list)


def _authorizer(clock: Clock) -> Authorizer:
    return PolicyAuthorizer(clock)


def _audit_sink(settings: ServeSettings) -> AuditSink:
    return _UnrecordedSink()


def build_node(settings: ServeSettings, credentials: CredentialStore) -> Node:
    """Build every part of a node from its settings (nothing starts until the app's lifespan)."""
    data_dir = settings.data_dir
    clock: Clock = ManualClock(follow_wall=True) if settings.dev_clock else SystemClock()
    store = SqliteStore(data_dir / "keys.db", RootKey.load(data_dir))
    deps = ServiceDeps(store=store, clock=clock, audit=_audit_sink(settings), authorizer=_authorizer(clock))
    service = KmsService(deps)
    api = ApiSettings(
        max_body_bytes=settings.max_body_bytes,
        dev_clock=clock if isinstance(clock, ManualClock) else None,
        on_clock_advanced=service.run_due,
        health=lambda: {"version": __version__},
    )
    node = Node(settings, service, KmsApp(service, credentials, api), clock)
    api.startup.append(lambda: _start(node, credentials))
    api.shutdown.append(lambda: _stop(node))
    return node


async def _start(node: Node, credentials: CredentialStore) -> None:
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, _reload_principals, credentials)
    node.background.append(asyncio.create_task(_scheduler(node)))
    await node.service.run_due()


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
    await node.service.store.close()
