"""What the clock makes due, carried out: a key's deletion after its waiting period, its automatic
rotations, its imported material's expiry, a replica's activation and the events it still owes
(`apply_due`, as a call finds the key), and the scheduler's tick over every key, the audit records
calls' changes still owe and the extensions' upkeep (`run_due`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING

from keytrail.kms import errors, multiregion, owed_calls, service_events
from keytrail.kms.importing import expire_material, material_expired
from keytrail.kms.keys import Key
from keytrail.kms.loop_slices import in_slices
from keytrail.kms.material import cached_secrets, forget_deleted, forget_unheld
from keytrail.kms.model import KeyState

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["apply_due", "is_due", "run_due"]

log = logging.getLogger(__name__)

# Keys the scheduler's sweep looks at between two passes of the event loop. One with nothing due
# takes ≈ 1 µs, but the sweep never waited on anything, so it was one loop step: 20,000 keys held
# every call 16-19 ms of CPU each tick, 100,000 keys ≈ 0.1 s (a call's answer ≈ 0.2 ms). A slice is
# ≈ 1 ms.
SWEEP_SLICE_KEYS = 1000


async def apply_due(svc: KmsService, key: Key) -> Key | None:
    """Carry out what the clock says is due for `key`: deletion after its waiting period, the
    service events an earlier change still owes, its imported material's expiry, a replica's
    activation, automatic rotations. Returns the key as it now is, or None once deleted."""
    now = svc.clock.now()
    if not is_due(key, now):
        return key
    # Deletion and expiry cannot be undone: judged by the clock less a step ahead just seen, so
    # that a clock set days ahead by mistake does not delete keys for good (kms/due_work.py).
    judged = svc.due_work.held.judged_at(now)
    if svc.audit_refuses():  # made now, the change would stand without its RotateKey or DeleteKey event
        raise errors.KMSInternalException(
            f"The audit spool cannot persist events: what is due for {key.arn} waits until it can.")
    # The key's lock keeps out calls changing it, here and on other nodes (which would
    # otherwise apply the same due rotation or deletion again); the due lock, other due work.
    async with svc.key_lock(key.account, key.region, key.key_id), svc.due_work.lock:
        current = await svc.store.get_key(key.account, key.region, key.key_id)
        if current is None:
            return None
        if (deletion_date := _deletion_due(current, judged)) is not None:
            await _delete_due(svc, current, deletion_date, judged)
            return None
        current = await service_events.record_owed(svc, current)  # a change of an earlier tick or call
        if material_expired(current, judged):
            current = await expire_material(svc, current, judged)
        _note_held(svc, current, now)
        if current.state is KeyState.CREATING:
            current = await multiregion.activate_replica(svc, current)
        from keytrail.kms.rotation import rotate_key

        # Once per period the clock passed, each at its due date (a dev clock moved a year
        # ahead rotates a 90-day key four times, as that year would have).
        while _rotation_due(current, now):
            current = await rotate_key(svc, current, "AUTOMATIC", current.next_rotation_date)
        return current


def _note_held(svc: KmsService, key: Key, now: datetime) -> None:
    """Tell the hold of `key`'s deletion or expiry due by `now` but left, judged by the time less the
    step ahead held."""
    if _deletion_due(key, now) is not None:
        svc.due_work.held.found(key.arn, "deletion")
    elif material_expired(key, now):
        svc.due_work.held.found(key.arn, "expiry of imported material")


async def _expire_before(svc: KmsService, key: Key, deletion_date: datetime) -> Key:
    """`key` without the imported material that expired while it waited for deletion, each with its
    DeleteExpiredKeyMaterial (at its ValidTo, before the DeleteKey): a tick late for both (the node
    was down, a dev clock moved on) recorded the deletion alone. Material that would have expired
    after it goes with the key, unrecorded, as it would have; none once the key's DeleteKey is
    written on it (by an earlier tick, whose deletion this finishes)."""
    if service_events.owes_event(key, "DeleteKey") or not material_expired(key, deletion_date):
        return key
    return await expire_material(svc, key, deletion_date)


async def _delete_due(svc: KmsService, key: Key, deletion_date: datetime, judged: datetime) -> None:
    """Delete `key`, its waiting period over, after expiring the material that expired while it
    waited (`_expire_before`). Its `DeleteKey` event (done when the period ended, however late the
    tick that notices it) is written on the key first and recorded before the row goes: a refused
    record leaves the key for the next tick, not deleted unrecorded."""
    key = await _expire_before(svc, key, deletion_date)
    if not service_events.owes_event(key, "DeleteKey"):
        key = service_events.with_event(key, svc.deps.new_id(), "DeleteKey", {"keyId": key.key_id},
                                        deletion_date)
        await svc.store.put_key(key)
    await service_events.record_events(svc, key)
    changed = await multiregion.without_replica(svc, key)
    async with multiregion.announced(svc, changed, by_call=False):
        await svc.store.delete_key(key, changed)
        forget_deleted(key, changed)  # what a copy still holds (a multi-Region key's) stays cached
    delete = svc.origin_deleters.get(key.origin)
    if delete is not None:  # after the row: a delete that fails leaves the key whole for the next tick
        await delete(svc, key)
    await _delete_copies_now_due(svc, changed, judged)


async def _delete_copies_now_due(svc: KmsService, changed: list[Key], judged: datetime) -> None:
    """Delete a primary this replica's deletion has just moved to PendingDeletion if its own waiting
    period, counted from that replica's deletion date, is over as well (a tick long after both dates:
    a node that was down, a dev clock moved ahead). Left to the next tick, it stayed listed and its
    DeleteKey unrecorded after a dev-clock advance had answered. The copies share the lock held here.
    `judged`: the time the deletion that changed them was judged by (`apply_due`)."""
    for copy in changed:
        current = await svc.store.get_key(copy.account, copy.region, copy.key_id)
        if current is not None and (deletion_date := _deletion_due(current, judged)) is not None:
            await _delete_due(svc, current, deletion_date, judged)


async def run_due(svc: KmsService) -> None:
    """Apply every due deletion and rotation (the scheduler's tick), record the audit records
    still owed by calls' changes, then `tick_work`. A key whose due work fails (its audit record
    refused, a store write failed) is left for the next tick, and so is an owed record the spool
    refuses, logged when those left over or the reasons change; the ones after it still run."""
    svc.due_work.held.check()
    cached = cached_secrets()  # before the keys are read: a key made meanwhile is not among them
    keys = await svc.store.all_keys()
    failed = await _sweep(svc, keys)
    forget_unheld(cached, keys)  # material another node sharing the store deleted
    svc.due_work.held.say()
    svc.due_work.key_failures.tick(failed)
    svc.due_work.owed_failures.tick(await owed_calls.record_owed(svc))
    await _run_tick_work(svc)


async def _sweep(svc: KmsService, keys: list[Key]) -> list[tuple[str, Exception]]:
    """`apply_due` for each of `keys`, letting the loop's other work run after each slice of
    SWEEP_SLICE_KEYS; the keys whose due work failed, with why."""
    failed: list[tuple[str, Exception]] = []
    async for some in in_slices(keys, SWEEP_SLICE_KEYS):
        for key in some:
            try:
                await apply_due(svc, key)
            except Exception as exc:
                failed.append((key.arn, exc))
    return failed


async def _run_tick_work(svc: KmsService) -> None:
    """Run each `tick_work`, after dropping the expired import parameters; a failure is logged
    when its reason changes, not raised: it comes after the due work was done and recorded, and
    failing serve's start then had the failed start remove the digests signing those records
    (cli/serve.py), leaving the trail unusable."""
    failure = None
    works: list[Callable[[], Awaitable[None]]] = [partial(_drop_expired_import_parameters, svc), *svc.tick_work]
    for work in works:
        try:
            await work()
        except Exception as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if failure != svc.due_work.tick_work_failure:
                expected = isinstance(exc, errors.KmsError | OSError)  # the key store refusing: no bug
                log.error("scheduled upkeep failed (tried again at each tick, said again only when the "
                          "reason changes): %s", failure, exc_info=None if expected else exc)
    svc.due_work.tick_work_failure = failure


async def _drop_expired_import_parameters(svc: KmsService) -> None:
    """Delete GetParametersForImport's wrapping keys once their import token expired: no import
    takes the token then (ExpiredImportTokenException, which the token's own ValidTo tells), and a
    wrapping key kept would still unwrap a copy of the EncryptedKeyMaterial sent with it, material
    deleted since included. They used to stay until a later GetParametersForImport, a day on at the
    soonest, and for good on a node that got none."""
    await svc.store.delete_expired_import_parameters(svc.now())


def _rotation_due(key: Key, now: datetime) -> bool:
    # A multi-Region replica never rotates on its own: its primary's rotation reaches it.
    return (
        key.rotation_enabled and key.next_rotation_date is not None and key.next_rotation_date <= now
        and key.state is KeyState.ENABLED and not multiregion.is_replica(key)
    )


def _deletion_due(key: Key, now: datetime) -> datetime | None:
    """The key's deletion date once its waiting period is over, or once a node began deleting it
    (its DeleteKey written on it: that node's clock passed the date, and the event may already be in
    a trail); None while neither. Judged by this node's clock alone, a node whose clock is behind
    recorded the owed DeleteKey, kept the key (it could be cancelled and used again), then deleted it
    at its own date under a second DeleteKey of another eventID."""
    if key.state is not KeyState.PENDING_DELETION or key.deletion_date is None:
        return None
    if key.deletion_date <= now or service_events.owes_event(key, "DeleteKey"):
        return key.deletion_date
    return None


def is_due(key: Key, now: datetime) -> bool:
    """Whether `apply_due` has anything to carry out for `key` at `now`."""
    return (_deletion_due(key, now) is not None or _rotation_due(key, now) or material_expired(key, now)
            or key.state is KeyState.CREATING or service_events.owes(key))
