"""`GET /_keytrail/health` of a node: unhealthy while the audit trail refuses records or the key
store does not answer, either of which fails every call."""

from __future__ import annotations

import asyncio
from typing import Any

from keytrail import __version__
from keytrail.audit.trail import AuditTrail
from keytrail.kms.errors import KmsError
from keytrail.kms.store import Store
from keytrail.kms.store_ledger import LedgerMismatch

__all__ = ["HEALTH_PARTS", "STORE_PROBE_EVERY", "STORE_PROBE_SECONDS", "Drain", "NodeHealth", "StoreProbe"]

# A load balancer may poll health many times a second: the key store is asked at most once a
# second, and a health answer waits for it at most STORE_PROBE_SECONDS (a hung database).
STORE_PROBE_EVERY = 1.0
STORE_PROBE_SECONDS = 2.0
# The parts of a node the health answer judges (NodeHealth), each named by its reason when it fails.
HEALTH_PARTS = ("audit", "keyStore")


class StoreProbe:
    """Whether the key store answers a trivial query: one query in flight at most, its outcome
    kept for `every` seconds after it ends."""

    def __init__(self, store: Store, every: float = STORE_PROBE_EVERY, seconds: float = STORE_PROBE_SECONDS) -> None:
        self._store, self._every, self._seconds = store, every, seconds
        self._probe: asyncio.Future[None] | None = None
        self._started = 0.0
        self._due = float("-inf")  # when the next query may start
        self._problem: str | None = None

    async def problem(self) -> str | None:
        """Why the key store cannot serve calls now, in one line; None while it answers."""
        loop = asyncio.get_running_loop()
        if self._probe is None and loop.time() >= self._due:
            self._started = loop.time()
            self._probe = asyncio.ensure_future(self._store.ping())
            self._probe.add_done_callback(self._ended)
        if self._probe is not None:  # not wait_for: it would wait out the cancellation sent to a hung database
            await asyncio.wait({self._probe}, timeout=max(0.0, self._started + self._seconds - loop.time()))
            if self._probe is not None:
                self._problem = f"the key store did not answer within {self._seconds:g} s"
        return self._problem

    def _ended(self, probe: asyncio.Future[None]) -> None:
        self._probe, self._due = None, asyncio.get_running_loop().time() + self._every
        error = None if probe.cancelled() else probe.exception()
        if isinstance(error, LedgerMismatch):  # it answers, but is refused (kms/postgres_ledger.py)
            self._problem = _reason(error)
        else:
            self._problem = None if error is None else f"the key store does not answer: {_reason(error)}"


def _reason(error: BaseException) -> str:
    if isinstance(error, KmsError) and error.__cause__ is not None:  # the driver's words: what is out of reach
        error = error.__cause__
    text = error.message if isinstance(error, KmsError) else str(error) or type(error).__name__
    return " ".join(text.split())[:300]  # one line, whatever the driver's message holds


class Drain:
    """Whether the node is draining: stopping (SIGTERM, `serve --drain-seconds`), it still serves calls
    but its health check fails, so that a load balancer stops sending it new ones before it stops
    accepting them. Set by the HTTP server, read by the health answer."""

    def __init__(self) -> None:
        self.began = False


class NodeHealth:
    """The health answer's body: the version, and "status": "unhealthy" (a 503) with the reasons, or
    "draining" (a 503 too) while a stop lets the load balancers take the node out first."""

    def __init__(self, audit: AuditTrail | None, store: StoreProbe, drain: Drain | None = None) -> None:
        self._audit, self._store, self._drain = audit, store, drain

    async def __call__(self) -> dict[str, Any]:
        problems = {"audit": self._audit.problem() if self._audit is not None else None,
                    "keyStore": await self._store.problem()}  # HEALTH_PARTS
        found = {name: problem for name, problem in problems.items() if problem}
        if self._drain is not None and self._drain.began:
            return {"version": __version__, "status": "draining", **found}
        return {"version": __version__, **({"status": "unhealthy", **found} if found else {})}
