"""The audit records state-changing calls owe in the key store (kms/owed_calls.py), checked the same
way over each store backend: SQLite in tests/unit/kms/test_owed_calls.py, PostgreSQL in
tests/integration/keystores/test_postgres_owed_calls.py. Each scenario takes `open_store`, which
opens the backend's store over the same data each time (a node starting again after a crash)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import AuditUnavailable, CallRecord
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.store import Store

__all__ = [
    "Crash",
    "Spool",
    "a_crash_between_the_write_and_the_record_is_recorded_at_the_next_start",
    "a_refused_record_of_a_call_that_changed_nothing_is_not_owed",
    "a_refused_record_of_a_change_is_recorded_once_the_spool_recovers",
    "a_tick_leaves_a_call_in_flight_its_record",
    "an_owed_record_dated_ahead_of_the_clock_is_recorded",
    "the_record_is_owed_with_the_change_and_settled_once_durable",
]

ACCOUNT = "111122223333"
OpenStore = Callable[[], Awaitable[Store]]
# The store's own clock moving past its grace (a store other nodes share counts it by a clock they
# all read, not a node's): None where the store has no grace.
PassGrace = Callable[[], Awaitable[None]] | None
TIGHT = ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow",'
         '"Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kms:*","Resource":"*"}]}')


class Crash(BaseException):
    """The node killed (`kill -9`) as the spool was about to make a record durable: nothing after runs."""


class Spool:
    """Allows every call and keeps its records; refuses (`refusing`), or refuses once the records
    named in `refuse_once` after its `ready()` passed (its disk filling meanwhile), or crashes the
    node at those in `crash_at`; `during` runs before a record is kept (what a node does meanwhile)."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.refusing = False
        self.refuse_once: set[str] = set()
        self.crash_at: set[str] = set()
        self.during: Callable[[CallRecord], Awaitable[None]] | None = None

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    def ready(self) -> None:
        if self.refusing:
            raise AuditUnavailable("the audit spool failed earlier and refuses records: disk full")

    async def record(self, call: CallRecord) -> None:
        self.ready()
        if call.event_name in self.crash_at:
            raise Crash
        if call.event_name in self.refuse_once:
            self.refuse_once.discard(call.event_name)
            raise AuditUnavailable("the audit spool could not write: disk full")
        if self.during is not None:
            await self.during(call)
        self.records.append(call)

    def named(self, name: str) -> list[CallRecord]:
        return [record for record in self.records if record.event_name == name]


def context(request_id: str = "req-1") -> CallContext:
    principal = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                          access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE", user_name="alice")
    return CallContext(principal=principal, region="us-east-1", request_id=request_id, user_agent="test/1.0")


def node(store: Store, spool: Spool, clock: ManualClock) -> KmsService:
    return KmsService(ServiceDeps(store=store, clock=clock, audit=spool, authorizer=spool))


async def _key(service: KmsService) -> str:
    return str((await service.execute("CreateKey", context("req-create"), {}))["KeyMetadata"]["Arn"])


async def _put_policy(service: KmsService, arn: str) -> Any:
    return await service.execute("PutKeyPolicy", context("req-policy"), {"KeyId": arn, "Policy": TIGHT})


async def the_record_is_owed_with_the_change_and_settled_once_durable(open_store: OpenStore) -> None:
    """As the spool takes the record, the change and the record it owes are both in the store (one
    transaction); once it is durable, nothing is owed."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    arn = await _key(service)
    seen: list[tuple[str, list[str]]] = []

    async def during(record: CallRecord) -> None:
        key = await store.get_key(ACCOUNT, "us-east-1", arn.rsplit("/", 1)[1])
        assert key is not None
        seen.append((key.policy, [owed.event_id for owed in await store.owed_records()]))

    spool.during = during
    await _put_policy(service, arn)
    [record] = spool.named("PutKeyPolicy")
    assert seen == [(TIGHT, [record.event_id])]
    assert await store.owed_records() == []
    await store.close()


async def a_crash_between_the_write_and_the_record_is_recorded_at_the_next_start(
        open_store: OpenStore, *, pass_grace: PassGrace = None) -> None:
    """Killed after its write and before its record: the next start (its first tick) records the
    call, under the eventID and requestID it had, as it stood at its write; once only (where other
    nodes share the store, once its grace passed: until then that start leaves it)."""
    store, spool, clock = await open_store(), Spool(), ManualClock()
    service = node(store, spool, clock)
    arn = await _key(service)
    spool.crash_at = {"CreateGrant"}
    with pytest.raises(Crash):
        await service.execute("CreateGrant", context("req-grant"), {
            "KeyId": arn, "GranteePrincipal": f"arn:aws:iam::{ACCOUNT}:role/reader", "Operations": ["Decrypt"]})
    await store.close()
    spool.crash_at = set()
    store = await open_store()
    restarted = node(store, spool, clock)
    [grant] = await store.list_grants(ACCOUNT, "us-east-1", arn.rsplit("/", 1)[1])  # the change stood
    await restarted.run_due()  # the node's start
    await _grace_passes(restarted, spool, "CreateGrant", pass_grace)
    await restarted.run_due()
    [record] = spool.named("CreateGrant")
    assert (record.request_id, record.resources, record.error_code) == ("req-grant", (arn,), None)
    assert record.response_elements == {"grantId": grant.grant_id, "keyId": arn}
    assert record.context is not None and record.context.principal.user_name == "alice"
    assert await store.owed_records() == []
    await store.close()


async def a_refused_record_of_a_change_is_recorded_once_the_spool_recovers(open_store: OpenStore) -> None:
    """The spool refuses the record after the change was written: the caller is told so, naming the
    spool; the change stands; the record is owed and is recorded at the first tick the spool takes
    it, with its eventID, requestID and response, and only then."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    arn = await _key(service)
    spool.refuse_once = {"DisableKey"}
    with pytest.raises(errors.KMSInternalException, match="audit spool .* request req-disable: what the call changed "
                                                         "stands, and its event is recorded once the spool can write"):
        await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    key = await store.get_key(ACCOUNT, "us-east-1", arn.rsplit("/", 1)[1])
    assert key is not None and key.state == "Disabled"
    [owed] = await store.owed_records()
    spool.refusing = True
    await service.run_due()
    assert spool.named("DisableKey") == []
    spool.refusing = False
    await service.run_due()
    await service.run_due()
    [record] = spool.named("DisableKey")
    assert (record.event_id, record.request_id, record.error_code) == (owed.event_id, "req-disable", None)
    assert record.response_elements == {"keyId": arn}
    assert await store.owed_records() == []
    await store.close()


async def a_refused_record_of_a_call_that_changed_nothing_is_not_owed(open_store: OpenStore) -> None:
    """A state-changing call refused before it wrote (no such key) owes nothing: its refused record
    fails it as before, saying the call was not performed."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    missing = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/00000000-0000-4000-8000-000000000000"
    spool.refuse_once = {"EnableKey"}
    with pytest.raises(errors.KMSInternalException, match="the call was not performed"):
        await service.execute("EnableKey", context("req-enable"), {"KeyId": missing})
    assert await store.owed_records() == []
    await service.run_due()
    assert spool.named("EnableKey") == []
    await store.close()


async def a_tick_leaves_a_call_in_flight_its_record(open_store: OpenStore) -> None:
    """A tick while a call's change is written and its record not yet durable does not take it up:
    the call records it, once."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    arn = await _key(service)

    async def tick(record: CallRecord) -> None:
        if record.event_name == "PutKeyPolicy":
            assert [owed.event_id for owed in await store.owed_records()] == [record.event_id]
            await service.run_due()

    spool.during = tick
    await _put_policy(service, arn)
    assert len(spool.named("PutKeyPolicy")) == 1
    assert await store.owed_records() == []
    await store.close()


async def a_crash_before_synchronize_multi_region_key_is_recorded_leaves_it_owed(
        open_store: OpenStore, *, pass_grace: PassGrace = None) -> None:
    """KMS's own SynchronizeMultiRegionKey is owed by the write it announces (ReplicateKey's, which
    changes the primary): killed before it is durable, the next start records it and the call."""
    store, spool, clock = await open_store(), Spool(), ManualClock()
    service = node(store, spool, clock)
    arn = str((await service.execute("CreateKey", context(), {"MultiRegion": True}))["KeyMetadata"]["Arn"])
    spool.crash_at = {"SynchronizeMultiRegionKey"}
    with pytest.raises(Crash):
        await service.execute("ReplicateKey", context("req-replicate"), {"KeyId": arn, "ReplicaRegion": "eu-west-1"})
    await store.close()
    spool.crash_at = set()
    store = await open_store()
    restarted = node(store, spool, clock)
    await restarted.run_due()  # the start (which also activates the replica: its own SynchronizeMultiRegionKey)
    await _grace_passes(restarted, spool, "ReplicateKey", pass_grace)
    await restarted.run_due()
    [synchronize] = [r for r in spool.named("SynchronizeMultiRegionKey") if r.resources == (arn,)]
    assert synchronize.internal_request_id is not None
    [replicate] = spool.named("ReplicateKey")
    assert (replicate.request_id, replicate.error_code) == ("req-replicate", None)
    assert replicate.response_elements is not None and "replicaKeyMetadata" in replicate.response_elements
    assert await store.owed_records() == []
    await store.close()


async def a_call_refused_at_its_write_owes_nothing(open_store: OpenStore) -> None:
    """CreateAlias of a name taken: the store's write changes nothing (the name is checked in its
    transaction), so nothing is owed; the refusal is recorded as before."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    arn = await _key(service)
    await service.execute("CreateAlias", context("req-alias"), {"AliasName": "alias/taken", "TargetKeyId": arn})
    with pytest.raises(errors.AlreadyExistsException):
        await service.execute("CreateAlias", context("req-again"), {"AliasName": "alias/taken", "TargetKeyId": arn})
    assert [r.error_code for r in spool.named("CreateAlias")] == [None, "AlreadyExistsException"]
    assert await store.owed_records() == []
    await store.close()


async def an_owed_record_dated_ahead_of_the_clock_is_recorded(
        open_store: OpenStore, *, pass_grace: PassGrace = None) -> None:
    """Killed after its write; the node starts again with its clock an hour behind the record's
    eventTime (the wall clock set back, or another node's ahead): the record is still recorded, at
    once where the store has one writer, else once the store's grace passed, not an hour later."""
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock(datetime(2026, 5, 1, 13, tzinfo=UTC)))
    arn = await _key(service)
    spool.crash_at = {"TagResource"}
    with pytest.raises(Crash):
        await service.execute("TagResource", context("req-tag"),
                              {"KeyId": arn, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
    await store.close()
    spool.crash_at = set()
    store, clock = await open_store(), ManualClock(datetime(2026, 5, 1, 12, tzinfo=UTC))
    restarted = node(store, spool, clock)
    await restarted.run_due()
    await _grace_passes(restarted, spool, "TagResource", pass_grace)
    await restarted.run_due()
    [record] = spool.named("TagResource")
    assert (record.request_id, record.event_time) == ("req-tag", datetime(2026, 5, 1, 13, tzinfo=UTC))
    assert await store.owed_records() == []
    await store.close()


async def _grace_passes(service: KmsService, spool: Spool, name: str, pass_grace: PassGrace) -> None:
    """Where the store has a grace, the record of `name` waits for it (the first tick left it), then
    the tick after it passed records it."""
    if pass_grace is None:
        return
    assert spool.named(name) == []
    await pass_grace()
    await service.run_due()
