"""The last use of each key, shared by the nodes of one key store (PostgreSQL, docker-compose.yml).

A node's GetKeyLastUsage and kms:TrailingDaysWithoutKeyUsage read its own consumer's state, which
counts the calls of its own audit log only: a key used through node A a second ago read as unused
on node B, and AWS's guard (a Deny of DisableKey and ScheduleKeyDeletion while the days without
use are fewer than N) let B disable it. So each node also notes the successful cryptographic uses
of its calls once their records are durable (`UseOutbox.note`), writes the latest use of each key
to the store about once a second (`share_uses`), and answers the later of its consumer's use and
the store's (`SharedLastUsage`). A use the store cannot tell (its database away, its row refused)
is an error, never "unused": that would open the guard.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from keytrail.clock import as_utc
from keytrail.kms.errors import KmsError
from keytrail.kms.key_use import CRYPTO_OPERATIONS
from keytrail.kms.model import CallRecord, KeyLastUsage, LastUsageSource

__all__ = [
    "SHARE_EVERY_SECONDS", "KeyUse", "LastUseStore", "SharedLastUsage", "UseOutbox", "share_last_uses", "share_uses",
    "uses_in",
]

log = logging.getLogger(__name__)

# How often a node writes the uses it noted: the other nodes see a use this much later than its own
# consumer does (about 1-3 s), at one write transaction a second per node while keys are used.
SHARE_EVERY_SECONDS = 1.0

KeyRow = tuple[str, str, str]  # account, Region, key id: the store's row of a key


@dataclass(frozen=True, slots=True)
class KeyUse:
    """One successful cryptographic use of a key, as GetKeyLastUsage reports it; `timestamp` is
    the record's eventTime (whole seconds, UTC), as the consumer counts it."""

    key_arn: str
    operation: str
    timestamp: datetime
    event_id: str
    request_id: str | None
    principal_arn: str | None

    @property
    def row(self) -> KeyRow:
        return key_row(self.key_arn)

    @property
    def usage(self) -> KeyLastUsage:
        return KeyLastUsage(self.operation, self.timestamp, self.event_id, self.request_id)


def key_row(key_arn: str) -> KeyRow:
    """(account, Region, key id) of `arn:<partition>:kms:<region>:<account>:key/<id>`."""
    _, _, _, region, account, resource = key_arn.split(":", 5)
    return account, region, resource.removeprefix("key/")


def uses_in(record: CallRecord) -> list[KeyUse]:
    """The key uses a durable record shows: a successful cryptographic call uses each key of its
    resources (ReEncrypt: its source and its destination, as the consumer counts both)."""
    if record.error_code is not None or record.event_name not in CRYPTO_OPERATIONS or record.context is None:
        return []
    moment = record.event_time.astimezone(UTC).replace(microsecond=0)
    principal = record.context.principal.policy_arn
    return [KeyUse(arn, record.event_name, moment, record.event_id, record.request_id, principal)
            for arn in record.resources if arn.split(":", 5)[-1].startswith("key/")]


def later(first: KeyUse | None, second: KeyUse) -> KeyUse:
    """The later of two uses of a key; on the same second the second, as it was noted after."""
    return second if first is None or second.timestamp >= first.timestamp else first


@runtime_checkable
class LastUseStore(Protocol):
    """A key store that several nodes share keeps each key's latest use (PostgresStore)."""

    async def put_last_uses(self, uses: list[KeyUse]) -> None:
        """Keep each use that is later than its key's stored one; a deleted key's is dropped."""
        ...

    async def get_last_use(self, account: str, region: str, key_id: str) -> KeyUse | None:
        """The key's latest use any node stored (None: none); KmsError when the store cannot tell."""
        ...


class UseOutbox:
    """The latest use of each key noted since the last write to the store."""

    def __init__(self) -> None:
        self._uses: dict[str, KeyUse] = {}

    def note(self, record: CallRecord) -> None:
        """Note the uses of a call whose record is durable (the audit sink returned)."""
        for use in uses_in(record):
            self._uses[use.key_arn] = later(self._uses.get(use.key_arn), use)

    def take(self) -> list[KeyUse]:
        taken, self._uses = list(self._uses.values()), {}
        return taken

    def give_back(self, uses: list[KeyUse]) -> None:
        """Uses a write failed to keep, noted again behind those noted since (which are later)."""
        for use in uses:
            noted = self._uses.get(use.key_arn)
            self._uses[use.key_arn] = use if noted is None else later(use, noted)

    async def flush(self, store: LastUseStore) -> None:
        """Write what is noted to `store`; on failure it stays noted for the next flush."""
        uses = self.take()
        if not uses:
            return
        try:
            await store.put_last_uses(uses)
        except BaseException:
            self.give_back(uses)
            raise


async def share_uses(outbox: UseOutbox, store: LastUseStore, every: float = SHARE_EVERY_SECONDS) -> None:
    """Flush `outbox` to `store` every `every` seconds, until cancelled. A store that refuses (its
    database away: its own log line says so) is said once, and again once it takes them."""
    failing: str | None = None
    while True:
        await asyncio.sleep(every)
        try:
            await outbox.flush(store)
        except Exception as exc:
            reason = exc.message if isinstance(exc, KmsError) else f"{type(exc).__name__}: {exc}"
            if reason != failing:
                log.error("the last uses of keys could not be shared with the other nodes: %s (kept, and tried "
                          "again each second)", reason, exc_info=None if isinstance(exc, KmsError) else exc)
            failing = reason
            continue
        if failing is not None:
            log.warning("the last uses of keys are shared with the other nodes again")
            failing = None


async def share_last_uses(outbox: UseOutbox, store: LastUseStore) -> None:
    """The stop's last flush of `outbox`. A store that refuses it (its database away) is said, not
    failed: the uses are in this node's audit log, and its next start shares what its consumer
    counted (cli/node.py); a stop that failed for it exited 1 though nothing was lost."""
    try:
        await outbox.flush(store)
    except Exception as exc:
        reason = exc.message if isinstance(exc, KmsError) else f"{type(exc).__name__}: {exc}"
        log.warning("the last uses of keys since the last second were not shared with the other nodes: %s (the "
                    "next start shares them)", reason)


class SharedLastUsage:
    """GetKeyLastUsage's source on a node of a shared store: the later of the node's own consumer's
    use and the store's. A store that cannot tell raises its KmsError (the call's AWS error)."""

    def __init__(self, local: LastUsageSource, store: LastUseStore) -> None:
        self._local, self._store = local, store

    async def last_usage(self, key_arn: str) -> tuple[datetime | None, KeyLastUsage | None]:
        tracking_start, local = await self._local.last_usage(key_arn)
        shared = await self._store.get_last_use(*key_row(key_arn))
        if shared is None or (local is not None and as_utc(local.timestamp) >= shared.timestamp):
            return tracking_start, local
        # Tracking began no later than a use some node tracked: this node's own may have begun after.
        if tracking_start is not None and as_utc(tracking_start) > shared.timestamp:
            tracking_start = shared.timestamp
        return tracking_start, shared.usage
