"""The audit record of a state-changing call, owed in the PostgreSQL key store (real server at
127.0.0.1:5432) with its change: the scenarios of tests/unit/kms/test_owed_calls.py, and the grace
a tick gives a record another node's call may still be making durable, counted by the database's
clock (a row's `written_at`): the tests move it on by dating the rows back, never by a node's clock."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.model import CallRecord
from keytrail.kms.postgres_store import OWED_GRACE_SECONDS, PostgresStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService
from keytrail.kms.store import Store
from tests.support import owed_calls
from tests.support.owed_calls import Spool, context, node
from tests.support.postgres import PostgresProxy, fetch, fetch_value

pytestmark = pytest.mark.integration


def _opener(dsn: str) -> Callable[[], Awaitable[Store]]:
    root = RootKey(os.urandom(32))

    async def open_store() -> Store:
        return await PostgresStore.connect(dsn, root)

    return open_store


async def _date_back(dsn: str, seconds: float) -> None:
    """The database's clock moving on by `seconds` for the owed rows: each dated that much earlier."""
    await fetch(dsn, "UPDATE kms_owed_records SET written_at = written_at - make_interval(secs => $1)", seconds)


async def _dated(dsn: str, seconds: float) -> None:
    """The owed rows dated `seconds` before now by the database's clock."""
    await fetch(dsn, "UPDATE kms_owed_records SET written_at = clock_timestamp() - make_interval(secs => $1)", seconds)


def _grace_passes(dsn: str) -> Callable[[], Awaitable[None]]:
    return lambda: _date_back(dsn, OWED_GRACE_SECONDS)


async def test_the_record_is_owed_with_the_change_and_settled_once_durable(dsn: str) -> None:
    await owed_calls.the_record_is_owed_with_the_change_and_settled_once_durable(_opener(dsn))


async def test_a_crash_between_the_write_and_the_record_is_recorded_once_its_grace_is_over(dsn: str) -> None:
    # Another node may share the store: a restarted node cannot tell a dead call from theirs.
    await owed_calls.a_crash_between_the_write_and_the_record_is_recorded_at_the_next_start(
        _opener(dsn), pass_grace=_grace_passes(dsn))


async def test_a_crash_before_synchronize_multi_region_key_is_recorded_leaves_it_owed(dsn: str) -> None:
    await owed_calls.a_crash_before_synchronize_multi_region_key_is_recorded_leaves_it_owed(
        _opener(dsn), pass_grace=_grace_passes(dsn))


async def test_a_refused_record_of_a_change_is_recorded_once_the_spool_recovers(dsn: str) -> None:
    await owed_calls.a_refused_record_of_a_change_is_recorded_once_the_spool_recovers(_opener(dsn))


async def test_a_refused_record_of_a_call_that_changed_nothing_is_not_owed(dsn: str) -> None:
    await owed_calls.a_refused_record_of_a_call_that_changed_nothing_is_not_owed(_opener(dsn))


async def test_a_call_refused_at_its_write_owes_nothing(dsn: str) -> None:
    await owed_calls.a_call_refused_at_its_write_owes_nothing(_opener(dsn))


async def test_a_tick_leaves_a_call_in_flight_its_record(dsn: str) -> None:
    await owed_calls.a_tick_leaves_a_call_in_flight_its_record(_opener(dsn))


async def test_a_record_another_node_owes_waits_for_its_grace(dsn: str) -> None:
    # Node A's call wrote its change and is (for all node B knows) about to record it: B's ticks
    # leave it until the grace is over by the database's clock (B's own moved on changes nothing),
    # then record it once.
    open_store, clock = _opener(dsn), ManualClock()
    spool_a, spool_b = Spool(), Spool()
    store_a, store_b = await open_store(), await open_store()
    a, b = node(store_a, spool_a, clock), node(store_b, spool_b, clock)
    arn = str((await a.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    spool_a.crash_at = {"TagResource"}
    with pytest.raises(owed_calls.Crash):
        await a.execute("TagResource", context("req-tag"), {"KeyId": arn, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
    [(rows,)] = await fetch(dsn, "SELECT count(*) FROM kms_owed_records")
    assert rows == 1
    await b.run_due()
    clock.advance(OWED_GRACE_SECONDS)  # the nodes' clock: not the grace's
    await b.run_due()
    await _dated(dsn, OWED_GRACE_SECONDS - 30)  # 30 s of grace left: a tick on a loaded machine is within it
    await b.run_due()
    assert spool_b.named("TagResource") == []
    await _dated(dsn, OWED_GRACE_SECONDS)
    await b.run_due()
    await b.run_due()
    [record] = spool_b.named("TagResource")
    assert (record.request_id, record.resources) == ("req-tag", (arn,))
    assert await store_b.owed_records() == []
    await store_a.close()
    await store_b.close()


async def test_two_nodes_ticking_at_once_record_an_abandoned_record_once(dsn: str) -> None:
    # Node A died after its write. Once the grace is over, B's tick takes the record up, and C's tick
    # runs while B is making it durable: C finds it taken, and leaves it to B.
    open_store, clock, spool = _opener(dsn), ManualClock(), Spool()
    store_a = await open_store()
    a = node(store_a, spool, clock)
    arn = str((await a.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    spool.crash_at = {"TagResource"}
    with pytest.raises(owed_calls.Crash):
        await a.execute("TagResource", context("req-tag"), {"KeyId": arn, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
    await store_a.close()
    spool.crash_at = set()
    store_b, store_c = await open_store(), await open_store()
    b, c = node(store_b, spool, clock), node(store_c, spool, clock)
    await _date_back(dsn, OWED_GRACE_SECONDS)
    _ticks_once_while_tagging_is_recorded(spool, c)  # C's tick, while B's holds the record
    await b.run_due()
    await c.run_due()
    [record] = spool.named("TagResource")
    assert record.request_id == "req-tag"
    assert await store_c.owed_records() == []
    await store_b.close()
    await store_c.close()


async def test_an_owed_record_dated_ahead_of_the_clock_is_recorded_after_the_grace(dsn: str) -> None:
    await owed_calls.an_owed_record_dated_ahead_of_the_clock_is_recorded(_opener(dsn), pass_grace=_grace_passes(dsn))


async def test_a_node_whose_clock_was_moved_ahead_leaves_another_nodes_call_its_record(dsn: str) -> None:
    # Node B runs with --dev-clock moved an hour ahead. Node A's TagResource wrote its change and is
    # making its record durable when B ticks: B leaves the record to A (it was written just now by
    # the database's clock), so the trail has it once. B measured its age from the record's eventTime
    # by its own clock: an hour, past the grace, and it recorded it too, under the same eventID.
    open_store, spool, moved = _opener(dsn), Spool(), ManualClock()
    moved.advance(3600)
    store_a, store_b = await open_store(), await open_store()
    a, b = node(store_a, spool, ManualClock()), node(store_b, spool, moved)
    arn = str((await a.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    _ticks_once_while_tagging_is_recorded(spool, b)
    await a.execute("TagResource", context("req-tag"), {"KeyId": arn, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
    [record] = spool.named("TagResource")
    assert record.request_id == "req-tag"
    assert await store_b.owed_records() == []
    await store_a.close()
    await store_b.close()


def _ticks_once_while_tagging_is_recorded(spool: Spool, ticking: KmsService) -> None:
    """`ticking` runs its due work once, while the spool takes a TagResource record."""
    async def tick(record: CallRecord) -> None:
        if record.event_name == "TagResource":
            spool.during = None
            await ticking.run_due()

    spool.during = tick


async def _refused_disable(store: Store) -> CallRecord:
    """A DisableKey whose record the spool refused, by a node whose clock is a day ahead: owed."""
    spool, clock = Spool(), ManualClock()
    clock.advance(86400)
    service = node(store, spool, clock)
    arn = str((await service.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    spool.refuse_once = {"DisableKey"}
    with pytest.raises(errors.KMSInternalException):
        await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    [owed] = await store.owed_records()
    return owed


async def test_an_owed_row_is_dated_by_the_database_and_again_at_each_write(dsn: str) -> None:
    # The grace counts from the row's last write by the database's clock, whatever the node's says:
    # a call's later write (its final record, after the spool refused it) starts it again.
    store = await _opener(dsn)()
    owed = await _refused_disable(store)
    age = await fetch_value(dsn, "SELECT clock_timestamp() - written_at FROM kms_owed_records")
    assert timedelta(0) <= age < timedelta(seconds=OWED_GRACE_SECONDS)
    assert await store.owed_within_grace() == {owed.event_id}
    await _date_back(dsn, OWED_GRACE_SECONDS)
    assert await store.owed_within_grace() == set()
    await store.owe_record(owed)
    assert await store.owed_within_grace() == {owed.event_id}
    await _dated(dsn, -3600)  # dated an hour ahead (its column edited): not held back for that hour, nor for good
    assert await store.owed_within_grace() == set()
    await store.close()


async def test_a_store_made_before_the_owed_rows_were_dated_gets_the_column(dsn: str) -> None:
    # A database a node of before made: opening it adds `written_at`, its rows dated as of then
    # (a record owed then waits its grace from the upgrade, never less), and rows verify as before.
    open_store = _opener(dsn)
    store = await open_store()
    owed = await _refused_disable(store)
    await fetch(dsn, "ALTER TABLE kms_owed_records DROP COLUMN written_at")
    await store.close()
    store = await open_store()
    assert await store.owed_within_grace() == {owed.event_id}
    assert await store.owed_records() == [owed]
    await store.close()


# PostgreSQL's answer to COMMIT (CommandComplete, tag "COMMIT"): sent once the transaction committed.
_COMMITTED = b"C\x00\x00\x00\x0bCOMMIT\x00"


class _CommitAnswerLosingProxy(PostgresProxy):
    """Forwards TCP to PostgreSQL; once `armed`, hangs up on the first connection whose server sends
    the answer to a COMMIT, instead of passing it on: the server committed, the client never knows."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False

    async def _forward(self, data: bytes, writer: asyncio.StreamWriter, source: asyncio.StreamWriter,
                       from_server: bool) -> bool:
        if from_server and self.armed and _COMMITTED in data:
            self.armed = False
            source.close()
            return False
        return await super()._forward(data, writer, source, from_server)


async def test_a_commit_whose_answer_is_lost_is_recorded_once_as_answered(dsn: str) -> None:
    # TagResource's write commits, and the connection drops before its answer: the call fails
    # (KMSInternalException) though the tag stands. Its record, the error it answered, is written
    # over the row its write left and recorded from there, once. Before, the error was recorded
    # and the row kept the call as it stood at its write: a tick recorded that too after the grace,
    # a second record with the same eventID saying the call succeeded.
    async with _CommitAnswerLosingProxy().running() as proxy:
        root, spool = RootKey(os.urandom(32)), Spool()
        # No ledger checks in the background: their transactions' COMMITs are not the call's.
        store = await PostgresStore.connect(dsn.replace(":5432/", f":{proxy.port}/"), root, check_every=3600)
        service = node(store, spool, ManualClock())
        arn = str((await service.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
        proxy.armed = True
        with pytest.raises(errors.KMSInternalException):
            await service.execute("TagResource", context("req-tag"),
                                  {"KeyId": arn, "Tags": [{"TagKey": "t", "TagValue": "v"}]})
        assert not proxy.armed  # the COMMIT's answer was the one lost
        key = await store.get_key(owed_calls.ACCOUNT, "us-east-1", arn.rsplit("/", 1)[1])
        assert key is not None and key.tags == (("t", "v"),)  # the change stands
        await _date_back(dsn, OWED_GRACE_SECONDS)
        await service.run_due()
        [record] = spool.named("TagResource")
        assert (record.request_id, record.error_code) == ("req-tag", "KMSInternalException")
        assert await store.owed_records() == []
        await store.close()
