"""The audit record of an API call that changes state, owed in the key store with the change.

The key store and the audit spool are two files: a call that wrote its change and then had its
record refused (the spool's disk filling between its `ready()` and the write) or was stopped
between the two (`kill -9`) left a change (a policy, a grant, a key) standing with no record, ever.
Now every write of such a call carries its record, in the same store transaction, as the call
stands at that write (kms/owed_records.py); once the call is done its record, under the same
`eventID` and `requestID`, is made durable and the row deleted. A record the spool refused stays
owed (with what the call finally did), and the caller is told so in a KMSInternalException naming
the spool; the node's start and each tick record what is still owed (`record_owed`). A record is
written twice only if the node stops after the spool took it and before its row was deleted, or a
tick took up another node's call still in flight, and then with one `eventID`: consumers
deduplicate on it. Read-only calls (Encrypt, Decrypt, GenerateDataKey, …) write nothing and owe
nothing: they take the path of before. The SynchronizeMultiRegionKey records KMS makes itself are
owed the same way by the write that changes the copies they announce (`owed_with_writes`): one the
spool refuses after a call's own write stays owed without failing the call, whose own record answers.
A call that failed at a COMMIT never answered owes its final record over the row its write may have
left, and records it from there (`_record_unanswered`): not the error now and the write's row again
later.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from keytrail.kms import errors
from keytrail.kms.call_records import call_record
from keytrail.kms.calls import Call, Operation, Response
from keytrail.kms.model import CallRecord

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService
    from keytrail.kms.store import OwedWrites

__all__ = ["OwedCall", "Written", "changed_unrecorded", "owed_with_writes", "record_owed", "run_owing"]

log = logging.getLogger(__name__)

# The "Region" of the locks a tick holds while it records an owed record (`key_lock_if_free`, with no
# account: no key's lock is named so).
_OWED_LOCKS = "owed-records"


@dataclass(frozen=True, slots=True)
class OwedCall:
    """A state-changing call in flight: its record's event id and time are fixed as it starts, so
    the record written with its changes and the one recorded after are one event."""

    name: str
    operation: Operation
    call: Call
    event_id: str
    event_time: datetime

    def record(self, error: errors.KmsError | None = None) -> CallRecord:
        """The call's record as it stands now (`error`: how it failed)."""
        return call_record(self.name, self.operation, self.call, error, self.event_id, self.event_time)


async def run_owing(svc: KmsService, name: str, operation: Operation, call: Call) -> Response:
    """Run a state-changing call with its record owed by each of its writes; answer once the record is
    durable. KMSInternalException naming the spool if it is not (the change, if made, stays owed)."""
    owed = OwedCall(name, operation, call, svc.deps.new_id(), svc.clock.now())
    svc.in_flight.add(owed.event_id)
    try:
        async with svc.store.owing(owed.record) as writes:
            try:
                response = await svc.handle(operation, call)
            except errors.KmsError as error:
                failure: errors.KmsError | None = error
            except Exception:
                log.exception("internal error in %s (request %s)", name, call.context.request_id)
                failure = errors.KMSInternalException("An internal error occurred.")
            else:
                failure = None
        await _record(svc, owed.record(failure), writes)
        if failure is not None:
            raise failure
        return response
    finally:
        svc.in_flight.discard(owed.event_id)


async def _record(svc: KmsService, record: CallRecord, writes: OwedWrites) -> None:
    """Make the call's `record` durable, then delete the row its writes owed (if they made one)."""
    if not writes.written and writes.sent:
        await _record_unanswered(svc, record)
        return
    if not writes.written:
        await svc.audit(record)
        return
    try:
        await svc.audit(record)
    except errors.KmsError:
        await _keep_owed(svc, record)
        svc.left_owed.add(record.event_id)  # done: the next tick takes it up, whatever the store's grace
        raise changed_unrecorded(record) from None
    await _settle(svc, record)


async def _record_unanswered(svc: KmsService, record: CallRecord) -> None:
    """The call failed at a write whose COMMIT was sent and never answered (PostgreSQL's connection
    lost): the change and its owed row, the call as it stood at the write, may stand. Its final
    `record` (the error it answers) is written over that row, or as a new one, and recorded from
    there: a tick finds nothing left to record again, under the same eventID, saying otherwise."""
    try:
        await svc.store.owe_record(record)
    except Exception as exc:
        log.warning("the write of request %s was sent and its commit never answered, and the key store refuses its "
                    "final audit record (%s): if the write stood, a tick records it again as it stood then, under the "
                    "same eventID %s, after this record of the error", record.request_id, exc, record.event_id)
        await svc.audit(record)
        return
    try:
        await svc.audit(record)
    except errors.KmsError:  # its row holds this record: the next tick records it; the call's own error stands
        svc.left_owed.add(record.event_id)
        return
    await _settle(svc, record)


async def _keep_owed(svc: KmsService, record: CallRecord) -> None:
    """Owe the call's final `record` (its response, its error) in place of the one its last write
    carried; if the store refuses that too, the one it carried stays owed."""
    try:
        await svc.store.owe_record(record)
    except Exception as exc:
        log.warning("the final audit record of request %s could not replace the one its change owes (that one is "
                    "recorded once the spool can write): %s", record.request_id, exc)


# A store that refuses the owed rows' deletes refuses them for every call at once (its connection
# limit reached, a privilege revoked): said once in this many seconds, with how many more, where a
# line per call (90 of 93 calls under a connection limit) buried the outage's own line.
SETTLE_FAILURES_SAID_EVERY_SECONDS = 60.0


@dataclass(slots=True)
class _SettleFailures:
    said_at: float = float("-inf")  # monotonic time of the last line
    unsaid: int = 0  # failures since it

    def say(self, event_id: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self.said_at < SETTLE_FAILURES_SAID_EVERY_SECONDS:
            self.unsaid += 1
            return
        more = f" ({self.unsaid} more since the last such line)" if self.unsaid else ""
        log.warning("audit record %s is durable but stays owed in the key store (recorded again, under the same "
                    "eventID, by a later tick): %s%s", event_id, exc, more)
        self.said_at, self.unsaid = now, 0


_settle_failures = _SettleFailures()


async def _settle(svc: KmsService, record: CallRecord) -> None:
    """Delete the owed row of a durable record; if the store refuses, a tick records it again (same
    eventID) and deletes it then: the call succeeded, and is answered so."""
    try:
        await svc.store.settle_record(record.event_id)
    except Exception as exc:
        _settle_failures.say(record.event_id, exc)


@dataclass(slots=True)
class Written:
    """Whether the writes of an `owed_with_writes` block are done: its end says so, or the block
    itself where it records more after them (a rotation its `RotateKey` event)."""

    done: bool = False


@asynccontextmanager
async def owed_with_writes(svc: KmsService, records: Sequence[CallRecord], *, by_call: bool) -> AsyncIterator[Written]:
    """Within it, the task's writes owe `records` too (the SynchronizeMultiRegionKey calls KMS makes
    for the copies they change), in their transactions; after it, each is recorded and settled.

    `by_call`: the writes are the change of the call being served, not due work. Once they are done
    a record the spool refuses does not fail the call: it stays owed (the next tick records it, under
    its eventID) and the call's own record, owed by the same write, decides the answer (success, or
    "what the call changed stands"). Failing it had the caller told, and the trail say, that the call
    failed or was not performed over a change that stood. Due work still fails: the tick logs it."""
    ids = {record.event_id for record in records}
    svc.in_flight |= ids  # not a tick's to take up meanwhile
    written = Written()
    try:
        async with contextlib.AsyncExitStack() as stack:
            writes = [await stack.enter_async_context(svc.store.owing(partial(_same, record))) for record in records]
            try:
                yield written
            except BaseException as exc:  # after its write, maybe (a service event refused): the next tick records them
                svc.left_owed |= ids
                if not _stands(by_call, written.done, exc):
                    raise
                return
        written.done = True
        for record, owed in zip(records, writes, strict=True):
            try:
                await _record(svc, record, owed)
            except BaseException as exc:
                svc.left_owed |= ids  # the ones after it too
                if not _stands(by_call, owed.written, exc):
                    raise
                return
    finally:
        svc.in_flight -= ids


def _stands(by_call: bool, written: bool, exc: BaseException) -> bool:
    """Whether a call goes on after `exc`: its change is `written`, with the record the spool refused
    (or any other KmsError after the write) owed in the store."""
    return by_call and written and isinstance(exc, errors.KmsError)


def _same(record: CallRecord) -> CallRecord:
    return record


async def record_owed(svc: KmsService) -> list[tuple[str, Exception]]:
    """Record each record the store owes whose call is done, under its own eventID, then delete its
    row; the records left for the next tick, with why. The node's start and each scheduler tick run
    this. A call is done if this node's call left its record owed, or (not in flight here) its row is
    past the store's grace (`_done`): where other nodes write the store, one may still be making it
    durable."""
    failed: list[tuple[str, Exception]] = []
    async with svc.owed_lock:  # two passes at once (a tick, a dev clock moved) would record each twice
        # The calls in flight as the rows were read, not only when the pass reaches their row: one done
        # meanwhile (while an earlier record was made durable) has recorded and settled its own, and
        # its row as read is stale.
        busy = set(svc.in_flight)
        try:
            owed = await svc.store.owed_records()
            # After the rows were read: a row written again since is within its grace here, not taken.
            recent = await svc.store.owed_within_grace()
        except Exception as exc:  # never raised: serve's first pass must not fail after its due work was recorded
            return [("the key store's owed records", exc)]
        busy |= svc.in_flight
        svc.left_owed &= {record.event_id for record in owed}  # another node's tick may have taken some up
        for record in owed:
            if not _done(svc, record.event_id, busy, recent):
                continue
            try:
                taken = await _take_up(svc, record.event_id)
            except Exception as exc:
                failed.append((_named(record), exc))
            else:
                if taken:
                    svc.left_owed.discard(record.event_id)
    return failed


def _done(svc: KmsService, event_id: str, busy: set[str], recent: set[str]) -> bool:
    """Whether no call is left to make the record of `event_id` durable: none here had it in flight
    (`busy`, as the rows were read), and this node's call left it owed, or its row is past the
    store's grace (not `recent`). The store counts the grace (`owed_within_grace`), not this node
    from the record's eventTime by its own clock: a node whose clock was moved ahead (--dev-clock)
    took up another node's call in flight, and one set back held an abandoned record as long."""
    if event_id in busy or event_id in svc.in_flight:
        return False
    return event_id in svc.left_owed or event_id not in recent


async def _take_up(svc: KmsService, event_id: str) -> bool:
    """Record the owed record of `event_id` and settle it, holding its lock, unless another node's tick
    holds it (False: it is at work on it) or settled it since this tick read it (True, nothing done):
    the ticks of several nodes sharing a PostgreSQL store would otherwise each record it."""
    async with svc.store.key_lock_if_free("", _OWED_LOCKS, event_id) as free:
        if not free:
            return False
        record = await svc.store.owed_record(event_id)  # as it is now: maybe settled, or its final form
        if record is not None:
            await svc.deps.audit.record(record)  # the sink's own refusal, not `svc.audit`'s answer to a caller
            await svc.store.settle_record(event_id)
        return True


def _named(record: CallRecord) -> str:
    return f"{record.event_name} of request {record.request_id} (eventID {record.event_id})"


def changed_unrecorded(record: CallRecord) -> errors.KmsError:
    """What a caller whose change was made but whose record the spool refused gets."""
    return errors.KMSInternalException(
        f"The audit spool could not persist the event for request {record.request_id}: what the call changed "
        "stands, and its event is recorded once the spool can write."
    )
