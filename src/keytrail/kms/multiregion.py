"""Multi-Region keys: one key id in several Regions, sharing key material and rotation.

AWS KMS developer guide, "Multi-Region keys": each Region holds its own `Key` row with the same
key id and materials; every copy carries the whole set (`primary_region`, `replica_regions`), so
DescribeKey anywhere shows the full MultiRegionConfiguration. Policy, description, tags, grants,
aliases and enabled state stay per Region. Changes to shared properties are computed on the
primary, persisted to every copy, and announced as `SynchronizeMultiRegionKey` records (calls KMS
makes itself: CloudTrail logs them as AwsApiCall, under its internal identity).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from keytrail.kms import owed_calls
from keytrail.kms.keys import Key
from keytrail.kms.model import CallRecord, KeyState, Origin

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = [
    "activate_replica",
    "announced",
    "copies",
    "is_primary",
    "is_replica",
    "key_type",
    "lock_region",
    "move_primary",
    "put_announced",
    "replica_of",
    "rotation_copies",
    "save_with_replicas",
    "scheduled_deletion",
    "synchronize",
    "without_replica",
]


def lock_region(region: str, key_id: str) -> str:
    """The Region a key's lock is named in: none for a multi-Region key, whose copies share it."""
    return "*" if key_id.startswith("mrk-") else region


def is_replica(key: Key) -> bool:
    return key.multi_region and key.primary_region not in (None, key.region)


def is_primary(key: Key) -> bool:
    return key.multi_region and not is_replica(key)


def key_type(key: Key) -> str:
    """The kms:MultiRegionKeyType condition value (and MultiRegionKeyType)."""
    return "REPLICA" if is_replica(key) else "PRIMARY"


def replica_of(
    primary: Key, region: str, now: datetime, policy: str, description: str, tags: tuple[tuple[str, str], ...]
) -> Key:
    """A new replica: same id, spec, usage, origin, material and rotations (the on-demand ones count
    towards its limit too: they are in its ListKeyRotations); its own policy, description and
    tags. It is `Creating` until the next scheduler tick, or PendingImport when the primary's
    material is imported (AWS requires importing the same material into each replica): it then
    names each material of the primary, to import, in the primary's order."""
    external = primary.origin is Origin.EXTERNAL
    return replace(
        primary,
        region=region,
        creation_date=now,
        policy=policy,
        description=description,
        tags=tags,
        state=KeyState.PENDING_IMPORT if external else KeyState.CREATING,
        materials=tuple(m.without_secret() for m in primary.materials) if external else primary.materials,
        expiration_model=None,
        deletion_date=None,
        pending_window_days=None,
        replica_regions=(*primary.replica_regions, region),
    )


async def copies(svc: KmsService, key: Key) -> list[Key]:
    """The key's copies in its other Regions (primary and replicas), as stored."""
    regions = [key.primary_region or key.region, *key.replica_regions]
    found = []
    for region in regions:
        if region != key.region:
            other = await svc.store.get_key(key.account, region, key.key_id)
            if other is not None:
                found.append(other)
    return found


async def synchronize(svc: KmsService, keys: list[Key]) -> None:
    """Persist changed shared properties on every copy at once (due work), then record each copy's
    `SynchronizeMultiRegionKey` call."""
    await put_announced(svc, keys, keys, by_call=False)


def _synchronization(svc: KmsService, key: Key) -> CallRecord:
    """The `SynchronizeMultiRegionKey` record of a changed copy: an AwsApiCall of KMS's own, with no
    serviceEventDetails; entries since December 2022 carry the copy's ARN in responseElements.keyId
    (ct-synchronize-multi-region-key)."""
    return svc.internal_call_record("SynchronizeMultiRegionKey", key, response_elements={"keyId": key.arn})


def announced(
    svc: KmsService, keys: list[Key], first: Sequence[CallRecord] = (), *, by_call: bool,
) -> AbstractAsyncContextManager[owed_calls.Written]:
    """Within it, the task's writes (the ones that change `keys`) owe each copy's
    `SynchronizeMultiRegionKey` record in their transaction, after the records `first`; after it,
    the records are made durable (kms/owed_calls.py): a node stopped in between leaves them owed,
    not lost. `by_call`: the writes are the change of the call being served, which a record refused
    once they are done does not fail (`owed_calls.owed_with_writes`)."""
    return owed_calls.owed_with_writes(svc, [*first, *(_synchronization(svc, key) for key in keys)], by_call=by_call)


async def put_announced(
    svc: KmsService, keys: list[Key], changed: list[Key], first: Sequence[CallRecord] = (), *, by_call: bool,
) -> None:
    """Store `keys` in one transaction with the records `first` and the `SynchronizeMultiRegionKey`
    records of the copies `changed` among them, then record those (`by_call`: see `announced`)."""
    async with announced(svc, changed, first, by_call=by_call):
        await svc.store.put_keys(keys)


async def activate_replica(svc: KmsService, key: Key) -> Key:
    """A replica leaves `Creating` for `Enabled` on the scheduler tick after ReplicateKey."""
    active = key.with_state(KeyState.ENABLED)
    await synchronize(svc, [active])
    return active


async def save_with_replicas(svc: KmsService, primary: Key) -> None:
    """Store `primary` and, in the same transaction, every replica given its materials and
    rotation schedule (a replica left without the new material could not decrypt what the primary
    encrypts), then record the replicas' `SynchronizeMultiRegionKey`: EnableKeyRotation's and
    DisableKeyRotation's change."""
    replicas = await rotation_copies(svc, primary)
    await put_announced(svc, [primary, *replicas], replicas, by_call=True)


async def rotation_copies(svc: KmsService, primary: Key) -> list[Key]:
    """The replicas of `primary` given its materials, rotation schedule and count of on-demand
    rotations (none: not a primary). The count is shared as the rotations are: a replica made
    primary (UpdatePrimaryRegion) must not start the limit of on-demand rotations afresh."""
    if not is_primary(primary):
        return []
    return [
        replace(
            replica,
            materials=primary.materials,
            rotation_enabled=primary.rotation_enabled,
            rotation_period_days=primary.rotation_period_days,
            next_rotation_date=primary.next_rotation_date,
            on_demand_rotations=primary.on_demand_rotations,
        )
        for replica in await copies(svc, primary)
    ]


async def move_primary(svc: KmsService, primary: Key, new_region: str, first: Sequence[CallRecord] = ()) -> None:
    """UpdatePrimaryRegion: `new_region`'s replica becomes the primary, the old primary a replica;
    the write owes the records `first` before each copy's `SynchronizeMultiRegionKey`."""
    regions = [primary.region, *primary.replica_regions]
    replicas = tuple(r for r in regions if r != new_region)
    changed = [
        replace(k, primary_region=new_region, replica_regions=replicas)
        for k in [primary, *await copies(svc, primary)]
    ]
    await put_announced(svc, changed, changed, first, by_call=True)


def scheduled_deletion(key: Key, now: datetime, window_days: int) -> Key:
    """ScheduleKeyDeletion: a primary with replicas waits in PendingReplicaDeletion until the last
    replica is deleted; only then does its own waiting period start."""
    if is_primary(key) and key.replica_regions:
        return replace(
            key, state=KeyState.PENDING_REPLICA_DELETION, deletion_date=None, pending_window_days=window_days
        )
    return key.scheduled_for_deletion(now, window_days)


async def without_replica(svc: KmsService, deleted: Key) -> list[Key]:
    """The other copies of a replica being deleted, its Region dropped: a primary waiting in
    PendingReplicaDeletion starts its own waiting period once no replica is left. They are
    stored with the deletion (`KeyStore.delete_key`), else a primary could wait forever. Its
    period runs from the replica's deletion, when that replica's waiting period ended, however
    late the tick that deletes it (as its `DeleteKey` event is dated)."""
    if not is_replica(deleted):
        return []
    now = deleted.deletion_date or svc.now()
    changed = []
    for other in await copies(svc, deleted):
        other = replace(other, replica_regions=tuple(r for r in other.replica_regions if r != deleted.region))
        if other.state is KeyState.PENDING_REPLICA_DELETION and not other.replica_regions:
            other = replace(
                other,
                state=KeyState.PENDING_DELETION,
                deletion_date=now + timedelta(days=other.pending_window_days or 30),
            )
        changed.append(other)
    return changed
