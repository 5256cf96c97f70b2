"""The scheduler's ticks while the audit spool refuses records: what is due waits (done then, it
would stand without its event), and the keys left over are logged when they change and once when
they run, not on every tick."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from keytrail.clock import ForwardStepHold, ManualClock
from keytrail.kms import scheduled_work
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.due_work import HeldWork
from keytrail.kms.errors import KMSInternalException, NotFoundException
from keytrail.kms.keys import Key
from keytrail.kms.model import AuditUnavailable, CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.wrapping import wrap
from tests.support.loop_passes import LoopPasses

ACCOUNT = "111122223333"
DAY = 86400


class _Spool:
    """Allows every call; keeps the records, or refuses them all, as an audit spool that cannot
    write does (`ready` says so before a change is made)."""

    def __init__(self) -> None:
        self.refusing = False
        self.events: list[tuple[str, tuple[str, ...]]] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    def ready(self) -> None:
        if self.refusing:
            raise AuditUnavailable("the audit spool failed earlier and refuses records: disk full")

    async def record(self, call: CallRecord) -> None:
        self.ready()
        self.events.append((call.event_name, call.resources))


def _context() -> CallContext:
    principal = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                          access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE")
    return CallContext(principal=principal, region="us-east-1", request_id="req-1")


async def test_due_work_waits_while_the_spool_refuses_and_is_logged_when_the_keys_left_change(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))

    async def key() -> str:
        return str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])

    rotating = [await key(), await key()]
    for arn in rotating:
        await service.execute("EnableKeyRotation", _context(), {"KeyId": arn, "RotationPeriodInDays": 90})
    clock.advance(85 * DAY)
    deleted = await key()
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": deleted, "PendingWindowInDays": 7})
    clock.advance(6 * DAY)  # the rotations are due, the deletion a day later
    spool.refusing = True

    async def ticks(count: int) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="keytrail"):
            for _ in range(count):
                await service.run_due()
        return [record.getMessage().split(" (said again")[0] for record in caplog.records]

    left = ("scheduled key maintenance: {} key(s) left for the next tick, first {}: The audit spool cannot "
            "persist events: what is due for {} waits until it can.")
    assert await ticks(3) == [left.format(2, rotating[0], rotating[0])]
    clock.advance(2 * DAY)
    assert await ticks(2) == [left.format(3, rotating[0], rotating[0])]
    assert spool.events[-1][0] == "ScheduleKeyDeletion"  # nothing done unrecorded meanwhile
    spool.refusing = False
    assert await ticks(3) == ["scheduled key maintenance: the keys left over from earlier ticks ran"]
    assert sorted(spool.events[-3:]) == sorted([("RotateKey", (rotating[0],)), ("RotateKey", (rotating[1],)),
                                               ("DeleteKey", (deleted,))])


async def test_a_failed_upkeep_after_the_due_work_is_logged_and_does_not_fail_the_tick(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Raised after the due work was done and recorded, it failed serve's start (the first tick),
    # whose cleanup then removed the digests signing those records: the next start refused the trail.
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    arn = (await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"]
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": arn, "PendingWindowInDays": 7})
    clock.advance(8 * DAY)

    async def upkeep() -> None:
        raise OSError("connection reset by the database")

    service.tick_work.append(upkeep)
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        for _ in range(3):
            await service.run_due()
    assert spool.events[-1] == ("DeleteKey", (arn,))
    assert [record.getMessage() for record in caplog.records] == [
        "scheduled upkeep failed (tried again at each tick, said again only when the reason changes): "
        "OSError: connection reset by the database"]


async def test_the_sweep_lets_other_work_run_between_slices_of_keys_and_still_does_each_keys_due_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The tick's sweep of keys with nothing due never waited on anything, so it was one step of
    # the event loop: 20,000 keys held every call 16-19 ms of CPU each tick, 100,000 keys ≈ 0.1 s.
    monkeypatch.setattr(scheduled_work, "SWEEP_SLICE_KEYS", 2)
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))

    async def key() -> str:
        return str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])

    idle = [await key() for _ in range(5)]
    deleted = await key()
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": deleted, "PendingWindowInDays": 7})
    clock.advance(8 * DAY)
    seen: dict[str, int] = {}  # each key the sweep looked at: the loop's passes by then
    apply_due = scheduled_work.apply_due
    passes = LoopPasses()

    async def looked_at(svc: KmsService, found: Key) -> Key | None:
        seen[found.arn] = passes.count
        return await apply_due(svc, found)

    monkeypatch.setattr(scheduled_work, "apply_due", looked_at)
    async with passes:
        await service.run_due()
    assert sorted(seen) == sorted([*idle, deleted])
    assert len({seen[arn] for arn in idle}) == 3  # five keys with nothing due, in slices of two
    assert spool.events[-1] == ("DeleteKey", (deleted,))
    listed = await service.execute("ListKeys", _context(), {})
    assert sorted(key["KeyArn"] for key in listed["Keys"]) == sorted(idle)


class _SpoolThatFailsOnce(_Spool):
    """Ready, then refuses the first record of each event named in `failing`: a disk that fills
    between the spool's `ready()` and its write (the key store's write was made in between)."""

    def __init__(self, *failing: str) -> None:
        super().__init__()
        self.failing = set(failing)
        self.ids: list[tuple[str, str]] = []

    async def record(self, call: CallRecord) -> None:
        if call.event_name in self.failing:
            self.failing.discard(call.event_name)
            raise AuditUnavailable("the audit spool could not write: disk full")
        await super().record(call)
        self.ids.append((call.event_name, call.event_id))


async def test_a_rotation_or_deletion_whose_event_was_refused_after_its_write_is_recorded_after_a_restart(
        tmp_path: Path) -> None:
    # The key was written rotated (or deleted) before the spool refused its event: the next tick
    # found nothing due, and the rotation and the deletion stood with no record, ever.
    spool, clock, root = _SpoolThatFailsOnce("RotateKey", "DeleteKey"), ManualClock(), RootKey(os.urandom(32))

    def node() -> KmsService:
        return KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", root), clock=clock, audit=spool,
                                      authorizer=spool))

    service = node()
    rotating = str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])
    await service.execute("EnableKeyRotation", _context(), {"KeyId": rotating, "RotationPeriodInDays": 90})
    deleted = str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": deleted, "PendingWindowInDays": 7})
    clock.advance(91 * DAY)
    await service.run_due()  # both refused
    service = node()  # the node restarts
    await service.run_due()
    await service.run_due()
    owed = [(name, arns) for name, arns in spool.events if name in ("RotateKey", "DeleteKey")]
    assert sorted(owed) == [("DeleteKey", (deleted,)), ("RotateKey", (rotating,))]
    rotations = await service.execute("ListKeyRotations", _context(), {"KeyId": rotating})
    assert len(rotations["Rotations"]) == 1  # rotated once, recorded once


async def test_a_primary_waits_its_window_from_its_last_replica_deletion_however_late_the_tick(
        tmp_path: Path) -> None:
    # The replica's DeleteKey is dated when its waiting period ended; the primary's own period
    # started at the tick that noticed it, so a clock moved ahead (or a node down) added the gap.
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    created = await service.execute("CreateKey", _context(), {"MultiRegion": True})
    key_id = created["KeyMetadata"]["KeyId"]
    await service.execute("ReplicateKey", _context(), {"KeyId": key_id, "ReplicaRegion": "eu-west-2"})
    await service.run_due()
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": key_id, "PendingWindowInDays": 7})
    away = CallContext(principal=_context().principal, region="eu-west-2", request_id="req-2")
    replica = await service.execute("ScheduleKeyDeletion", away, {"KeyId": key_id, "PendingWindowInDays": 7})
    clock.advance(10 * DAY)  # the replica's deletion fell due 3 days ago
    await service.run_due()
    meta = (await service.execute("DescribeKey", _context(), {"KeyId": key_id}))["KeyMetadata"]
    assert (meta["KeyState"], meta["DeletionDate"]) == ("PendingDeletion", replica["DeletionDate"] + timedelta(days=7))


async def test_a_primary_whose_window_ended_with_its_last_replicas_is_deleted_by_the_same_tick(
        tmp_path: Path) -> None:
    # The tick that deleted the replica left the primary PendingDeletion with a date already past:
    # it stayed listed, its DeleteKey unrecorded, until the next tick (30 s on; a dev-clock advance
    # answered before it) or a call finding it.
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    arn = (await service.execute("CreateKey", _context(), {"MultiRegion": True}))["KeyMetadata"]["Arn"]
    key_id = arn.rsplit("/", 1)[1]
    await service.execute("ReplicateKey", _context(), {"KeyId": key_id, "ReplicaRegion": "eu-west-2"})
    await service.run_due()
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": key_id, "PendingWindowInDays": 7})
    away = CallContext(principal=_context().principal, region="eu-west-2", request_id="req-2")
    await service.execute("ScheduleKeyDeletion", away, {"KeyId": key_id, "PendingWindowInDays": 7})
    clock.advance(30 * DAY)  # the replica's deletion fell due on day 7, the primary's on day 14
    await service.run_due()
    listed = await service.execute("ListKeys", _context(), {})
    assert key_id not in [key["KeyId"] for key in listed["Keys"]]
    deletions = [resources for name, resources in spool.events if name == "DeleteKey"]
    assert deletions == [(arn.replace("us-east-1", "eu-west-2"),), (arn,)]


async def test_an_expiry_whose_event_was_refused_after_its_write_is_recorded_by_the_next_tick(tmp_path: Path) -> None:
    spool, clock = _SpoolThatFailsOnce("DeleteExpiredKeyMaterial"), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    arn = (await service.execute("CreateKey", _context(), {"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"]
    parameters = await service.execute("GetParametersForImport", _context(), {
        "KeyId": arn, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    imported = await service.execute("ImportKeyMaterial", _context(), {
        "KeyId": arn, "ImportToken": parameters["ImportToken"],
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
        "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": clock.now() + timedelta(days=10)})
    clock.advance(11 * DAY)
    await service.run_due()  # refused: the material is gone all the same
    await service.run_due()
    expired = [event_id for name, event_id in spool.ids if name == "DeleteExpiredKeyMaterial"]
    assert len(expired) == 1
    meta = (await service.execute("DescribeKey", _context(), {"KeyId": arn}))["KeyMetadata"]
    assert meta["KeyState"] == "PendingImport" and imported["KeyMaterialId"] == meta["CurrentKeyMaterialId"]


async def _imported_key_pending_deletion(service: KmsService, clock: ManualClock, expires_in_days: int) -> str:
    """An EXTERNAL key whose material expires in `expires_in_days`, scheduled for deletion in 7 days."""
    arn = str((await service.execute("CreateKey", _context(), {"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"])
    parameters = await service.execute("GetParametersForImport", _context(), {
        "KeyId": arn, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await service.execute("ImportKeyMaterial", _context(), {
        "KeyId": arn, "ImportToken": parameters["ImportToken"],
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
        "ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": clock.now() + timedelta(days=expires_in_days)})
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": arn, "PendingWindowInDays": 7})
    return arn


async def test_material_that_expired_while_its_key_awaited_deletion_is_recorded_by_a_late_tick(tmp_path: Path) -> None:
    # A tick after both the material's ValidTo and the key's deletion date (the node was down, a dev
    # clock moved on) recorded the DeleteKey alone: the expiry, done days before, was never in the trail.
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    expired_first = await _imported_key_pending_deletion(service, clock, expires_in_days=1)
    deleted_first = await _imported_key_pending_deletion(service, clock, expires_in_days=10)
    clock.advance(30 * DAY)
    await service.run_due()

    def service_events(arn: str) -> list[str]:
        return [name for name, resources in spool.events
                if resources == (arn,) and name in ("DeleteExpiredKeyMaterial", "DeleteKey")]

    assert service_events(expired_first) == ["DeleteExpiredKeyMaterial", "DeleteKey"]
    # Material that would expire after its key's deletion goes with the key, as it would have.
    assert service_events(deleted_first) == ["DeleteKey"]


async def _import(service: KmsService, context: CallContext, key_id: str, material: bytes,
                  valid_to: datetime | None = None) -> None:
    """Import `material` into the copy of `key_id` in the context's Region, expiring at `valid_to`."""
    parameters = await service.execute("GetParametersForImport", context, {
        "KeyId": key_id, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    expiry = ({"ExpirationModel": "KEY_MATERIAL_EXPIRES", "ValidTo": valid_to} if valid_to
              else {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"})
    await service.execute("ImportKeyMaterial", context, {
        "KeyId": key_id, "ImportToken": parameters["ImportToken"],
        "EncryptedKeyMaterial": wrap(parameters["PublicKey"], "RSAES_OAEP_SHA_256", material), **expiry})


async def test_a_primary_deleted_with_its_last_replica_first_records_the_expiry_of_its_material(
        tmp_path: Path) -> None:
    # The tick deleting the last replica deletes a primary whose own period has ended too, and must
    # first record the expiry of its material (day 10; its deletion, day 14) as any late tick does.
    # The replica is the copy made first (the primary moved), so the tick meets it first.
    spool, clock = _Spool(), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    home, away = _context(), CallContext(principal=_context().principal, region="eu-west-2", request_id="req-2")
    key_id = (await service.execute("CreateKey", home, {"Origin": "EXTERNAL", "MultiRegion": True}))[
        "KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    await _import(service, home, key_id, material)
    await service.execute("ReplicateKey", home, {"KeyId": key_id, "ReplicaRegion": "eu-west-2"})
    await _import(service, away, key_id, material, valid_to=clock.now() + timedelta(days=10))
    await service.execute("UpdatePrimaryRegion", home, {"KeyId": key_id, "PrimaryRegion": "eu-west-2"})
    await service.execute("ScheduleKeyDeletion", away, {"KeyId": key_id, "PendingWindowInDays": 7})
    await service.execute("ScheduleKeyDeletion", home, {"KeyId": key_id, "PendingWindowInDays": 7})
    clock.advance(30 * DAY)
    await service.run_due()
    primary = f"arn:aws:kms:eu-west-2:{ACCOUNT}:key/{key_id}"
    events = [name for name, resources in spool.events
              if resources == (primary,) and name in ("DeleteExpiredKeyMaterial", "DeleteKey")]
    assert events == ["DeleteExpiredKeyMaterial", "DeleteKey"]


async def test_a_call_meeting_due_work_whose_event_is_refused_is_told_which_event_not_a_request_it_never_made(
        tmp_path: Path) -> None:
    # The error named the RotateKey event's id as "request …": an id the caller never had.
    spool, clock = _SpoolThatFailsOnce("RotateKey"), ManualClock()
    service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                     clock=clock, audit=spool, authorizer=spool))
    arn = str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])
    await service.execute("EnableKeyRotation", _context(), {"KeyId": arn, "RotationPeriodInDays": 90})
    clock.advance(91 * DAY)
    with pytest.raises(KMSInternalException) as refused:
        await service.execute("Encrypt", _context(), {"KeyId": arn, "Plaintext": b"x"})
    assert refused.value.message == (
        f"The audit spool could not persist the RotateKey event of {arn}: it is recorded once the spool can.")
    await service.execute("Encrypt", _context(), {"KeyId": arn, "Plaintext": b"x"})
    # The refused call's own record (it failed), then the rotation, recorded by the next call that met it.
    assert [name for name, _ in spool.events[2:]] == ["Encrypt", "RotateKey", "Encrypt"]


async def test_a_key_another_node_began_deleting_is_deleted_by_a_node_whose_clock_is_behind(tmp_path: Path) -> None:
    """Two nodes on one store: the first passed the deletion date, wrote the key's DeleteKey and
    stopped before the row went (its record may be in its trail). The second, its clock behind the
    date, recorded that DeleteKey, kept the key (cancelled and used again), and later deleted it
    under a second DeleteKey of another eventID."""
    from keytrail.kms import service_events

    spool, root = _Spool(), RootKey(os.urandom(32))
    store = SqliteStore(tmp_path / "keys.db", root)
    behind = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=spool, authorizer=spool))
    arn = str((await behind.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])
    await behind.execute("ScheduleKeyDeletion", _context(), {"KeyId": arn, "PendingWindowInDays": 7})
    [key] = await store.all_keys()
    assert key.deletion_date is not None
    begun = service_events.with_event(key, "deletion-begun-elsewhere", "DeleteKey", {"keyId": key.key_id},
                                      key.deletion_date)
    await store.put_key(begun)  # as the first node left it
    with pytest.raises(NotFoundException, match="does not exist"):  # deleted first, as the trail says
        await behind.execute("CancelKeyDeletion", _context(), {"KeyId": arn})
    assert await store.all_keys() == []
    await behind.run_due()
    assert [name for name, _ in spool.events].count("DeleteKey") == 1


class _SteppedNode:
    """A service whose clock and wall clock move together as real time passes (`passes`) or as the
    wall clock steps (`steps`); the dev clock (`ManualClock.advance` alone) moves no wall clock."""

    def __init__(self, tmp_path: Path) -> None:
        self.spool, self.clock = _Spool(), ManualClock()
        self.wall, self.running = 1_800_000_000.0, 100.0
        self.service = KmsService(ServiceDeps(store=SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32))),
                                              clock=self.clock, audit=self.spool, authorizer=self.spool))
        self.service.due_work.held = HeldWork(ForwardStepHold(wall=lambda: self.wall, running=lambda: self.running))

    def passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall += seconds
        self.running += seconds

    def steps(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.wall += seconds

    def done(self, arn: str) -> list[str]:
        return [name for name, resources in self.spool.events
                if resources == (arn,) and name in ("DeleteExpiredKeyMaterial", "DeleteKey")]


async def test_deletions_and_expiries_due_only_by_a_step_ahead_are_held_and_those_due_by_time_passing_are_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # A wall clock stepped 2 days ahead (a VM restored with a wrong RTC) had the next tick delete the
    # keys and expire the material whose dates it jumped over, for good.
    node = _SteppedNode(tmp_path)
    service = node.service

    async def scheduled(**extra: object) -> str:
        arn = str((await service.execute("CreateKey", _context(), extra))["KeyMetadata"]["Arn"])
        await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": arn, "PendingWindowInDays": 7})
        return arn

    due_first = await scheduled()
    node.passes(1800)
    due_later = await scheduled()  # its date half an hour after the first's
    expiring = str((await service.execute("CreateKey", _context(), {"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"])
    await _import(service, _context(), expiring, os.urandom(32), node.clock.now() + timedelta(days=8))
    node.passes(7 * DAY - 1800)
    node.steps(2 * DAY)

    async def ticks() -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="keytrail"):
            await service.run_due()
            await service.run_due()
        return [record.getMessage() for record in caplog.records]

    [held] = await ticks()
    assert node.done(due_first) == ["DeleteKey"]  # due by the time that passed
    assert node.done(due_later) == [] and node.done(expiring) == []
    assert held.startswith("2 key(s) not deleted or expired, which fell due only by the wall clock's step 48.0 h "
                           "ahead, held for the next 1.0 h of running time: ")
    assert f"{due_later} (deletion), {expiring} (expiry of imported material)" in held
    meta = (await service.execute("DescribeKey", _context(), {"KeyId": due_later}))["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion"  # a call finding the key holds it too
    node.passes(1800)  # its date by the time that really passed: not held
    assert await ticks() == []
    assert node.done(due_later) == ["DeleteKey"] and node.done(expiring) == []
    node.passes(1800)  # the hold's hour is over: the new time is taken as the right one
    assert await ticks() == ["the hold on the wall clock's step ahead is over: the 2 key(s) it held are deleted "
                             "or expired now (the new time is taken as the right one)"]
    assert node.done(expiring) == ["DeleteExpiredKeyMaterial"]


async def test_a_clock_set_back_releases_the_hold_and_a_dev_clock_advance_is_never_held(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = _SteppedNode(tmp_path)
    service = node.service
    arn = str((await service.execute("CreateKey", _context(), {}))["KeyMetadata"]["Arn"])
    await service.execute("ScheduleKeyDeletion", _context(), {"KeyId": arn, "PendingWindowInDays": 7})
    node.steps(8 * DAY)
    await service.run_due()
    node.wall -= 8 * DAY  # the clock set right, the node's own with it
    node.clock = ManualClock(node.clock.now() - timedelta(days=8))
    service.clock = node.clock
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        await service.run_due()
    assert [record.getMessage() for record in caplog.records] == [
        "the wall clock went back: the 1 key(s) held since its step ahead fall due at their own dates again"]
    assert node.done(arn) == []
    node.clock.advance(8 * DAY)  # `serve --dev-clock`'s advance: the test clock moving on purpose
    await service.run_due()
    assert node.done(arn) == ["DeleteKey"]
