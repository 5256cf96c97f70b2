"""AuditTrail: the `AuditSink` the KMS core reports to.

Each call becomes a CloudTrail record, Avro single-object encoded, group-committed to the
segment log in `<data-dir>/audit/log/` (the embedded event log), hash-chained and periodically
signed; with a Kafka bootstrap a shipper process (audit/shipping.py) delivers it to
`keytrail.audit.v1` at least once.
`record` returns only once the record is durable, and raises when it cannot be (the KMS core
then fails the call with KMSInternalException naming the audit spool).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keytrail.audit.call_encoder import CallEncoder
from keytrail.audit.integrity import (
    IMPORT_ORIGIN,
    ChainWriter,
    IntegrityFileUnusable,
    IntegrityPaths,
    beside,
    signed_end,
)
from keytrail.audit.schema import EventCodec
from keytrail.audit.shipper import AUDIT_TOPIC, ShippedOffset
from keytrail.audit.shipping import ShipperProcess
from keytrail.audit.spool import Spool, SpoolError
from keytrail.children import Child
from keytrail.clock import ForwardStepHold
from keytrail.kms.model import CallRecord, CallsInProgress
from keytrail.owner_only import sync_folder
from keytrail.transport.segment_log import CutRefused, SegmentLog, event_log_dir

__all__ = ["AuditSettings", "AuditTrail", "SpoolError", "audit_paths"]

log = logging.getLogger(__name__)


#: How long a closed segment outlives retention, for the node's own readers of the log: its metrics
#: consumer and its detector read every record within a second or so of its write. A byte budget
#: below one segment's size deleted each segment as it closed, before they had read its last
#: records (460 of 12,000 calls never counted). A time, not their positions: a reader stopped or
#: failing must not hold the log, and with it the calls, once the disk fills.
READER_GRACE_S = 60.0


@dataclass(frozen=True, slots=True)
class AuditSettings:
    """Everything the audit trail is configured by.

    `max_unshipped_bytes` applies with Kafka only: beyond it (shipping stuck) calls fail.
    Retention deletes closed segments older than `retention_hours` or beyond
    `retention_bytes` (None: keep), never a segment Kafka has not acknowledged, and never one
    closed less than `reader_grace_s` ago (the node's consumer and detector read it meanwhile).
    `fsync_helper`: fsync in a helper process rather than a thread (audit/syncer.py says why).
    """

    data_dir: Path
    kafka_bootstrap: str | None = None
    partitions: int = 3  # of the topic, if the shipper creates it
    replication_factor: int = 1  # likewise
    max_unshipped_bytes: int = 1 << 30
    segment_bytes: int = 64 << 20
    retention_hours: float | None = None
    retention_bytes: int | None = None
    reader_grace_s: float = READER_GRACE_S
    digest_interval_s: float = 3600.0
    topic: str = AUDIT_TOPIC
    fsync_helper: bool = True
    imported: bool = False  # `audit import`: the digests mark the records added as imported


def audit_paths(data_dir: Path) -> tuple[Path, IntegrityPaths]:
    """The event log directory and the integrity files of a node's data directory."""
    log_dir = event_log_dir(data_dir)
    return log_dir, beside(log_dir)


def _open_writer(log_dir: Path, integrity: IntegrityPaths, segment_bytes: int) -> SegmentLog:
    """Open the event log as its writer, which cuts a crash's torn tail. Never records the newest
    digest signs or Kafka acknowledged: those were durable before, so bytes that are no record
    below them are damage. Cut, they left the log and the start was refused anyway ("signed
    records are gone"): refused first, the log stays as it was, for `verify` and a restore."""
    signed, shipped = signed_end(integrity) or 0, ShippedOffset(log_dir.parent / "shipped-offset")
    try:
        return SegmentLog(log_dir, segment_bytes=segment_bytes, writable=True, keep_below=max(signed, shipped.value))
    except CutRefused as refused:
        raise IntegrityFileUnusable(_damaged_below(refused, signed, shipped)) from None


def _damaged_below(refused: CutRefused, signed: int, shipped: ShippedOffset) -> str:
    """Why the start is refused when the records after a damaged one are signed or shipped."""
    log_dir = refused.segment.parent
    if signed > refused.offset:
        kept, undo = f"the newest digest signs records up to offset {signed - 1}", ""
    else:
        kept = f"Kafka acknowledged records up to offset {shipped.value - 1} ({shipped.path})"
        undo = (f", or, to go on without the records from offset {refused.offset} on (Kafka keeps them), write "
                f"{refused.offset} into {shipped.path}")
    return (f"the audit log {log_dir} is damaged at record offset {refused.offset} ({refused.segment.name}), and "
            f"{kept}: nothing was cut (`keytrail audit verify` names the damage); restore {log_dir} from a backup"
            f"{undo}, or move {log_dir.parent} aside to start a new trail")


def _require_shipped_records(log: SegmentLog) -> None:
    """Kafka acknowledged only durable records, so a log that ends before the shipped offset lost
    records it shipped (cut back, or restored from a backup without its shipped-offset). New records
    would take their offsets, below the one the shipper ships from: none would reach Kafka, and once
    the log grew past it verify would no longer see the cut. Refuse to open, as for a log cut below
    its last digest."""
    shipped, end = ShippedOffset(log.directory.parent / "shipped-offset"), log.end_offset()
    if shipped.value > end:
        raise IntegrityFileUnusable(
            f"the audit log ends at offset {end} but Kafka acknowledged records up to offset {shipped.value - 1} "
            f"({shipped.path}): records it shipped are gone (`keytrail audit verify` names them); restore "
            f"{log.directory} from a backup, or, if the log was restored from an older backup on purpose, write "
            f"{end} into {shipped.path} so that the calls from there on are shipped (Kafka keeps those the "
            "restore undid)")


class AuditTrail:
    """See the module docstring. Use `open`, then `await start()`, and `await close()`."""

    def __init__(self, settings: AuditSettings, now: Callable[[], datetime] | None = None,
                 in_progress: CallsInProgress | None = None) -> None:
        self.settings = settings
        self._now = now or (lambda: datetime.now(UTC))
        log_dir, integrity = audit_paths(settings.data_dir)
        self.log = _open_writer(log_dir, integrity, settings.segment_bytes)
        self.integrity = integrity
        try:
            _require_shipped_records(self.log)
            chain = ChainWriter(integrity, self.log, digest_interval_s=settings.digest_interval_s)
        except BaseException:
            self.log.close()  # releases the writer lock it took
            raise
        try:
            chain.begin(self._now(), origin=IMPORT_ORIGIN if settings.imported else None)
        except BaseException:
            chain.close()
            self.log.close()
            raise
        # Retention's age judged by the wall clock less a step ahead just seen: a clock set days
        # ahead by mistake deleted at once, for good, every segment the step aged past the
        # retention (and past a reader's grace), as it held key deletions (kms/due_work.py).
        self.step_hold = ForwardStepHold()
        self.spool = Spool(self.log, chain, self._now, maintenance=self._apply_retention, in_progress=in_progress,
                           sync_helper=settings.fsync_helper)
        self.codec = EventCodec()
        self.encoder = CallEncoder(self.codec)
        self.shipped = ShippedOffset(log_dir.parent / "shipped-offset")
        # Unshipped bytes: those found on open, plus what the spool made durable, minus what shipped.
        self._unshipped_on_open = self.log.bytes_from(self.shipped.value) if settings.kafka_bootstrap else 0
        self._over_cap = False
        self._shipper: ShipperProcess | None = None

    @classmethod
    def open(cls, settings: AuditSettings, now: Callable[[], datetime] | None = None,
             in_progress: CallsInProgress | None = None) -> AuditTrail:
        """Open (creating or recovering) the audit trail of `settings.data_dir`; `in_progress`, the
        service's count of calls in progress, sizes the group commits (audit/spool.py)."""
        return cls(settings, now, in_progress)

    async def __aenter__(self) -> AuditTrail:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start the spool writer and, with Kafka, the shipper process."""
        self.spool.start()
        if self.settings.kafka_bootstrap:
            self._shipper = ShipperProcess(
                self.settings.kafka_bootstrap, self.log.directory, self.shipped, topic=self.settings.topic,
                partitions=self.settings.partitions, replication_factor=self.settings.replication_factor,
                durable_end=lambda: self.spool.durable_end,
            )
            self.spool.on_durable = self._shipper.durable
            self._shipper.start()

    def children(self) -> list[Child]:
        """The child processes the trail supervises (the shipper, with Kafka), for /metrics."""
        return [self._shipper.child] if self._shipper is not None else []

    def readers_held(self) -> dict[str, int | None]:
        """The event log's readers the trail runs (the shipper, with Kafka), each with the offset it
        is held at in front of a record it cannot read, or None, for /metrics."""
        return {"audit shipper": self._shipper.held_at} if self._shipper is not None else {}

    def kafka_losses(self) -> int | None:
        """Times the shipper found the broker lost audit records it had acknowledged, since this
        start; None without Kafka. For /metrics: the log's ERROR line is the only other sign."""
        return self._shipper.losses if self._shipper is not None else None

    @property
    def shipper_pid(self) -> int | None:
        """The shipper process's id, while there is one (benchmarks count its CPU)."""
        return self._shipper.pid if self._shipper is not None else None

    def ready(self) -> None:
        """SpoolError now if `record` is sure to refuse (over the cap, a failed spool): the KMS core
        asks before a state change, which it could not announce once made."""
        self._check_cap()
        self.spool.ready()

    async def record(self, call: CallRecord) -> None:
        """AuditSink: make the CloudTrail record of `call` durable, or raise SpoolError."""
        self._check_cap()
        await self.spool.submit(self.encoder.encode(call))

    async def append_event(self, event: dict[str, Any]) -> int:
        """Make one CloudTrail record dict durable (imports use this too); return its offset."""
        self._check_cap()
        return await self.spool.append(self.codec.encode(event))

    def problem(self) -> str | None:
        """Why calls are refused now (their records cannot be kept), for the health check; None
        while the trail takes records."""
        if self.unshipped_bytes() > self.settings.max_unshipped_bytes:
            return f"the audit spool is over its cap of {self.settings.max_unshipped_bytes} bytes not shipped to Kafka"
        return self.spool.problem()

    def unshipped_bytes(self) -> int:
        """Bytes of the log Kafka has not acknowledged (0 without Kafka): calls are refused past
        `settings.max_unshipped_bytes`."""
        if not self.settings.kafka_bootstrap:
            return 0
        shipped = self._shipper.shipped_bytes if self._shipper is not None else 0
        return self._unshipped_on_open + self.spool.durable_bytes - shipped

    def _check_cap(self) -> None:
        if not self.settings.kafka_bootstrap:
            return
        unshipped = self.unshipped_bytes()
        over = unshipped > self.settings.max_unshipped_bytes
        if over != self._over_cap:  # logged when it starts and ends, not per call (see AuditUnavailable)
            self._over_cap = over
            if over:
                log.error("audit spool over its cap of %d bytes not shipped to Kafka: calls are refused until "
                          "shipping catches up", self.settings.max_unshipped_bytes)
            else:
                log.warning("audit spool back under its cap: calls are taken again")
        if over:
            raise SpoolError(
                f"the audit spool holds {unshipped} bytes not yet shipped to Kafka, over its "
                f"cap of {self.settings.max_unshipped_bytes}: refusing calls until shipping catches up"
            )

    @property
    def spool_depth(self) -> int:
        """Records in the spool that Kafka has not acknowledged yet (0 without Kafka)."""
        if not self.settings.kafka_bootstrap:
            return 0
        return max(0, self.log.end_offset() - self.shipped.value)

    async def flush_shipping(self, timeout: float = 30.0) -> bool:
        """Wait until Kafka acknowledged every durable record (True), or the timeout passed."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.shipped.value < self.spool.durable_end:
            if asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def finish(self, ship_timeout: float = 5.0) -> None:
        """Stop taking records and commit the queued ones (`spool.drain`: the final signed digest),
        give the shipper up to `ship_timeout` seconds to deliver them while the broker takes them,
        then stop it. A node does this beside stopping its other children, not after them; `close`
        does it too."""
        try:
            await self.spool.drain()
        finally:  # a final digest that could not be signed leaves the records to ship all the same
            if self._shipper is not None:
                await self._shipper.finish(ship_timeout)

    async def close(self, ship_timeout: float = 5.0) -> None:
        """`finish`, then release everything."""
        try:
            await self.finish(ship_timeout)
        finally:
            await self.spool.close()

    def _apply_retention(self) -> None:
        """Writer thread, when a segment closes and at each digest: delete closed segments past the
        retention age or size, never one holding records Kafka has not acknowledged; note the floor
        for `verify`, and drop the stored hashes of the records deleted (a trim whose copy is done
        takes its last step at the next retention, the floor moved or not)."""
        settings = self.settings
        if settings.retention_hours is None and settings.retention_bytes is None:
            return
        now = self.step_hold.judged_now()
        segments = self.log.segment_info()
        limit = self.shipped.value if settings.kafka_bootstrap else self.log.end_offset()
        keep_from = _retention_point(segments, settings, now)
        floor = self.log.kept_from(min(keep_from, limit))
        if floor > segments[0][0]:
            # The floor first: a crash between the two leaves segments below a floor (which
            # `verify` skips), never segments gone above it (which it reports as tampering).
            self.spool.chain.write_retention_floor(floor)
            self.log.delete_before(floor)
            # The deletions on disk before the hashes go: a power loss must not bring back
            # records whose hashes are dropped, which `verify` could no longer check.
            sync_folder(self.log.directory)
            self.spool.chain.drop_hashes_before(floor)
        else:
            self.spool.chain.finish_dropping_hashes()


def _retention_point(segments: list[tuple[int, int, float]], settings: AuditSettings, now: float) -> int:
    """The first offset to keep: closed segments (all but the last) go when too old or when
    the log is over its byte budget, once they closed (their last write) the grace ago."""
    hours, max_bytes = settings.retention_hours, settings.retention_bytes
    total = sum(size for _, size, _ in segments)
    keep = segments[0][0]
    for (_, size, mtime), (next_base, _, _) in itertools.pairwise(segments):
        too_old = hours is not None and now - mtime > hours * 3600
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big) or now - mtime < settings.reader_grace_s:
            break
        total -= size
        keep = next_base
    return keep
