"""A change to a multi-Region key is stored on every copy at once, on both stores: when the
operation fails half-way (its audit record cannot be made durable, the process dies), no copy is
left with material or settings the others lack."""

from __future__ import annotations

import os
from datetime import UTC, datetime

import asyncpg
import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors, service_events
from keytrail.kms.model import AuditUnavailable, CallRecord
from keytrail.kms.postgres_store import PostgresStore
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.test_concurrent_writes import StoreFactory, backend, open_store, replicated_key
from tests.integration.keystores.test_postgres_store import Node

pytestmark = pytest.mark.integration
__all__ = ["backend", "open_store"]  # the fixtures, imported for this module's tests

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class _RefusingSink:
    """An audit sink whose disk fills up at the first record named `refuse`."""

    def __init__(self, refuse: str) -> None:
        self.refuse, self.records = refuse, list[CallRecord]()

    async def record(self, record: CallRecord) -> None:
        if record.event_name == self.refuse:
            raise AuditUnavailable("disk full")
        self.records.append(record)


async def test_a_key_whose_due_work_fails_leaves_the_keys_after_it_their_rotations(
    open_store: StoreFactory,
) -> None:
    store, clock = await open_store(), ManualClock(NOW)
    node = Node(store, clock, "us-east-1")
    for _ in range(3):
        key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        await node("EnableKeyRotation", KeyId=key_id, RotationPeriodInDays=90)
    first, *others = await store.all_keys()  # in the order the scheduler visits them
    clock.advance(91 * 86400)
    sink = node.svc.deps.audit
    keep, refuse = sink.record, _RefusingSink("RotateKey").record

    refused: list[str] = []

    async def refuse_the_first_key(record: CallRecord) -> None:
        if first.arn in record.resources and record.event_name == "RotateKey":
            refused.append(record.event_name)
        await (refuse if first.arn in record.resources else keep)(record)

    sink.record = refuse_the_first_key  # type: ignore[method-assign]
    await node.svc.run_due()  # logged, not raised: the scheduler's tick goes on
    assert refused and len(others) == 2  # the first key's due work did fail: the test is not vacuous
    for key in others:
        rotations = (await node("ListKeyRotations", KeyId=key.key_id))["Rotations"]
        assert [r["RotationType"] for r in rotations] == ["AUTOMATIC"]


async def test_a_rotation_cut_short_leaves_every_region_with_the_same_material(open_store: StoreFactory) -> None:
    store, _clock, east, _west, key_id = await replicated_key(open_store)
    east.svc.deps.audit.record = _RefusingSink("RotateKey").record  # type: ignore[method-assign]
    # The rotation was written: the call stands, its RotateKey event left owed for the next tick.
    await east("RotateKeyOnDemand", KeyId=key_id)
    primary = await store.get_key("111122223333", "us-east-1", key_id)
    replica = await store.get_key("111122223333", "eu-west-1", key_id)
    assert primary is not None and replica is not None
    assert len(primary.materials) == 2 and replica.materials == primary.materials
    assert service_events.owes_event(primary, "RotateKey")


async def test_a_replica_deletion_cut_short_still_starts_the_primarys_waiting_period(
    open_store: StoreFactory,
) -> None:
    _store, clock, east, west, key_id = await replicated_key(open_store)
    await west("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    assert (await east("ScheduleKeyDeletion", KeyId=key_id))["KeyState"] == "PendingReplicaDeletion"
    clock.advance(8 * 86400)
    sink = east.svc.deps.audit
    sink.record = _RefusingSink("DeleteKey").record  # type: ignore[method-assign]
    await east.svc.run_due()  # its DeleteKey record refused: logged, the key left for the next tick
    del sink.record  # the disk has room again
    await east.svc.run_due()  # the next scheduler pass, or the next start
    primary = (await east("DescribeKey", KeyId=key_id))["KeyMetadata"]
    assert primary["KeyState"] == "PendingDeletion"
    assert primary["MultiRegionConfiguration"]["ReplicaKeys"] == []


async def test_a_primary_region_update_cut_short_leaves_one_primary(open_store: StoreFactory) -> None:
    store, _clock, east, west, key_id = await replicated_key(open_store)
    sink = east.svc.deps.audit
    sink.record = _RefusingSink("SynchronizeMultiRegionKey").record  # type: ignore[method-assign]
    # The move was written: the call stands, its copies' SynchronizeMultiRegionKey records owed.
    await east("UpdatePrimaryRegion", KeyId=key_id, PrimaryRegion="eu-west-1")
    assert {r.event_name for r in await store.owed_records()} == {"SynchronizeMultiRegionKey"}
    del sink.record
    await east.svc.run_due()
    assert await store.owed_records() == []
    primaries = {
        (await node("DescribeKey", KeyId=key_id))["KeyMetadata"]["MultiRegionConfiguration"]["PrimaryKey"]["Region"]
        for node in (east, west)
    }
    assert primaries == {"eu-west-1"}


async def test_a_replication_whose_primary_cannot_be_written_leaves_no_replica(dsn: str) -> None:
    store, clock = await PostgresStore.connect(dsn, RootKey(os.urandom(32))), ManualClock(NOW)
    east, west = Node(store, clock, "us-east-1"), Node(store, clock, "eu-west-1")
    key_id = (await east("CreateKey", MultiRegion=True))["KeyMetadata"]["KeyId"]
    connection = await asyncpg.connect(dsn)
    await connection.execute(_REFUSE_PRIMARY_UPDATES)  # the database fails the primary's write
    with pytest.raises(errors.KMSInternalException):
        await east("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
    await connection.execute("DROP TRIGGER refuse ON kms_keys")
    await connection.close()
    with pytest.raises(errors.NotFoundException):
        await west("DescribeKey", KeyId=key_id)
    await store.close()


_REFUSE_PRIMARY_UPDATES = """
CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN RAISE EXCEPTION 'no space left on device'; END $$;
CREATE TRIGGER refuse BEFORE UPDATE ON kms_keys FOR EACH ROW
    WHEN (OLD.region = 'us-east-1') EXECUTE FUNCTION refuse();
"""
