"""The audit record of a state-changing call, owed in the SQLite key store with its change
(kms/owed_calls.py): written in the change's transaction, deleted once durable, and recorded by the
next start or tick when the spool refused it or the node died in between (the same scenarios run
over PostgreSQL in tests/integration/keystores/test_postgres_owed_calls.py)."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord, KeyState
from keytrail.kms.owed_records import record_from_doc, record_to_doc
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Store
from keytrail.kms.store_ledger import LedgerMismatch
from tests.support import owed_calls
from tests.support.owed_calls import ACCOUNT, Spool, context, node


def _opener(path: Path) -> Callable[[], Awaitable[Store]]:
    root = RootKey(os.urandom(32))

    async def open_store() -> Store:
        return SqliteStore(path, root)

    return open_store


async def test_the_record_is_owed_with_the_change_and_settled_once_durable(tmp_path: Path) -> None:
    await owed_calls.the_record_is_owed_with_the_change_and_settled_once_durable(_opener(tmp_path / "keys.db"))


async def test_a_crash_between_the_write_and_the_record_is_recorded_at_the_next_start(tmp_path: Path) -> None:
    await owed_calls.a_crash_between_the_write_and_the_record_is_recorded_at_the_next_start(
        _opener(tmp_path / "keys.db"))


async def test_a_crash_before_synchronize_multi_region_key_is_recorded_leaves_it_owed(tmp_path: Path) -> None:
    await owed_calls.a_crash_before_synchronize_multi_region_key_is_recorded_leaves_it_owed(
        _opener(tmp_path / "keys.db"))


async def test_a_refused_record_of_a_change_is_recorded_once_the_spool_recovers(tmp_path: Path) -> None:
    await owed_calls.a_refused_record_of_a_change_is_recorded_once_the_spool_recovers(_opener(tmp_path / "keys.db"))


async def test_a_refused_record_of_a_call_that_changed_nothing_is_not_owed(tmp_path: Path) -> None:
    await owed_calls.a_refused_record_of_a_call_that_changed_nothing_is_not_owed(_opener(tmp_path / "keys.db"))


async def test_a_call_refused_at_its_write_owes_nothing(tmp_path: Path) -> None:
    await owed_calls.a_call_refused_at_its_write_owes_nothing(_opener(tmp_path / "keys.db"))


async def test_a_tick_leaves_a_call_in_flight_its_record(tmp_path: Path) -> None:
    await owed_calls.a_tick_leaves_a_call_in_flight_its_record(_opener(tmp_path / "keys.db"))


async def test_the_owed_row_is_in_the_file_with_the_change_and_its_ledger(tmp_path: Path) -> None:
    # Read from keys.db itself while the spool holds the record: the policy and the owed row were
    # committed together, and the ledger counts the row (a deleted one would be refused at open).
    path = tmp_path / "keys.db"
    store, spool = await _opener(path)(), Spool()
    service = node(store, spool, ManualClock())
    arn = str((await service.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    found: list[tuple[str, ...]] = []

    async def read_the_file(record: CallRecord) -> None:
        with sqlite3.connect(path) as db:
            found.extend(row for (row,) in db.execute("SELECT event_id FROM owed_records"))
        db.close()

    spool.during = read_the_file
    await service.execute("UpdateKeyDescription", context("req-describe"), {"KeyId": arn, "Description": "d"})
    assert found == [spool.named("UpdateKeyDescription")[0].event_id]
    await store.close()


async def test_an_owed_record_deleted_outside_keytrail_is_refused_as_the_store_opens(tmp_path: Path) -> None:
    # Deleting the row would have the change stand without its record: the ledger shows it.
    path, open_store = tmp_path / "keys.db", _opener(tmp_path / "keys.db")
    store, spool = await open_store(), Spool()
    service = node(store, spool, ManualClock())
    arn = str((await service.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])
    spool.crash_at = {"ScheduleKeyDeletion"}
    with pytest.raises(owed_calls.Crash):
        await service.execute("ScheduleKeyDeletion", context("req-delete"), {"KeyId": arn})
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM owed_records")
    db.close()
    with pytest.raises(LedgerMismatch, match="owed_records 0 row"):
        await open_store()


async def test_a_refused_synchronize_multi_region_key_is_recorded_once_the_spool_recovers(tmp_path: Path) -> None:
    # KMS's own call, recorded after the copies were written: refused, it stays owed too, and the
    # call stands (tests/unit/kms/test_refused_follow_up_records.py).
    store, spool = await _opener(tmp_path / "keys.db")(), Spool()
    service = node(store, spool, ManualClock())
    arn = str((await service.execute("CreateKey", context(), {"MultiRegion": True}))["KeyMetadata"]["Arn"])
    spool.refuse_once = {"SynchronizeMultiRegionKey"}
    await service.execute("ReplicateKey", context("req-replicate"), {"KeyId": arn, "ReplicaRegion": "eu-west-1"})
    assert await store.get_key(ACCOUNT, "eu-west-1", arn.rsplit("/", 1)[1]) is not None
    [replicate] = spool.named("ReplicateKey")  # the caller's answer, as it was
    assert replicate.error_code is None
    assert spool.named("SynchronizeMultiRegionKey") == []
    # Owed by the same write and recorded before it: the CreateKey KMS writes in the replica's Region.
    assert [r.region for r in spool.named("CreateKey")] == ["us-east-1", "eu-west-1"]
    [owed] = await store.owed_records()
    await service.run_due()  # (which also activates the replica: its own SynchronizeMultiRegionKey)
    [synchronize] = [r for r in spool.named("SynchronizeMultiRegionKey") if r.event_id == owed.event_id]
    assert synchronize.resources == (arn,) and synchronize.internal_request_id == owed.internal_request_id
    assert await store.owed_records() == []
    await store.close()


async def test_calls_that_only_read_owe_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Encrypt, Decrypt, GenerateDataKey: no owed record, no store write, the path of before.
    store, spool = await _opener(tmp_path / "keys.db")(), Spool()
    service = node(store, spool, ManualClock())
    arn = str((await service.execute("CreateKey", context(), {}))["KeyMetadata"]["Arn"])

    def owing(record: Callable[[], CallRecord]) -> None:
        raise AssertionError("a call that only reads entered the outbox")

    monkeypatch.setattr(store, "owing", owing)
    blob = (await service.execute("Encrypt", context("req-e"), {"KeyId": arn, "Plaintext": b"x"}))["CiphertextBlob"]
    await service.execute("Decrypt", context("req-d"), {"CiphertextBlob": blob})
    await service.execute("GenerateDataKey", context("req-g"), {"KeyId": arn, "KeySpec": "AES_256"})
    assert [r.event_name for r in spool.records[-3:]] == ["Encrypt", "Decrypt", "GenerateDataKey"]
    await store.close()


def test_an_owed_record_reads_back_as_it_was_written() -> None:
    # An assumed role over TLS, datetimes and enums among the values: the record recovered after a
    # crash is the one the call would have recorded (identity policies aside: no record shows them).
    principal = Principal(arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/s", account=ACCOUNT,
                          type=IdentityType.ASSUMED_ROLE, access_key_id="ASIAAPP0000000000001", principal_id="AROA:s",
                          role_arn=f"arn:aws:iam::{ACCOUNT}:role/app", session_name="s")
    call = CallContext(principal=principal, region="eu-west-1", request_id="req-x", source_ip="10.0.0.1",
                       user_agent="aws-cli/2", secure_transport=True, tls_details={"tlsVersion": "TLSv1.3"})
    record = CallRecord("e-1", "ScheduleKeyDeletion", datetime(2026, 5, 1, 12, tzinfo=UTC), "eu-west-1", ACCOUNT, call,
                        {"keyId": "k", "pendingWindowInDays": 7}, {"keyState": KeyState.PENDING_DELETION,
                                                                  "deletionDate": datetime(2026, 5, 8, tzinfo=UTC)},
                        additional_event_data={"keyMaterialId": "ab"}, resources=("arn:k",), error_code=None,
                        shared_event_id="5b0a8b27-1f4e-5c3a-9d1e-0a1b2c3d4e5f", invoked_by="kms.amazonaws.com")
    back = record_from_doc(record_to_doc(record))
    assert back == replace(record, response_elements={"keyState": "PendingDeletion",
                                                      "deletionDate": "2026-05-08T00:00:00+00:00"})


def test_an_owed_row_of_an_earlier_version_reads_back_without_the_fields_it_lacked() -> None:
    # Rows written before sharedEventID and invokedBy were kept: recovered after an upgrade, not refused.
    record = CallRecord("e-2", "DisableKey", datetime(2026, 5, 1, 12, tzinfo=UTC), "eu-west-1", ACCOUNT, None,
                        {"keyId": "k"}, resources=("arn:k",))
    earlier = {name: value for name, value in json.loads(record_to_doc(record)).items()
               if name not in ("shared_event_id", "invoked_by")}
    assert record_from_doc(json.dumps(earlier)) == record


async def test_a_tick_does_not_record_again_a_call_done_while_it_recorded_another(tmp_path: Path) -> None:
    # The tick reads the owed records while a PutKeyPolicy is in flight, its record owed; while the
    # tick records an older owed record, the call makes its own durable and settles it. The tick
    # then finds that call no longer in flight: it must not take its (stale) row up a second time.
    store = await _opener(tmp_path / "keys.db")()
    spool, clock = Spool(), ManualClock()
    service = node(store, spool, clock)
    arn = str((await service.execute("CreateKey", context("req-create"), {}))["KeyMetadata"]["Arn"])
    spool.refuse_once = {"DisableKey"}
    with pytest.raises(errors.KMSInternalException):
        await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    clock.advance(1)
    blocked, go = asyncio.Event(), asyncio.Event()
    put: asyncio.Task[Any] | None = None

    async def during(record: CallRecord) -> None:
        if record.event_name == "PutKeyPolicy" and not go.is_set():
            blocked.set()
            await go.wait()
        elif record.event_name == "DisableKey":  # the tick, at the older record: the call finishes meanwhile
            go.set()
            assert put is not None
            await put

    spool.during = during
    put = asyncio.create_task(service.execute("PutKeyPolicy", context("req-policy"), {
        "KeyId": arn, "Policy": owed_calls.TIGHT}))
    await blocked.wait()
    await service.run_due()
    assert [len(spool.named(name)) for name in ("DisableKey", "PutKeyPolicy")] == [1, 1]
    assert await store.owed_records() == []
    await store.close()


async def test_an_owed_record_dated_ahead_of_the_clock_is_recorded_at_once(tmp_path: Path) -> None:
    await owed_calls.an_owed_record_dated_ahead_of_the_clock_is_recorded(_opener(tmp_path / "keys.db"))


async def test_get_parameters_for_import_owes_its_record_with_the_parameters_it_stores(tmp_path: Path) -> None:
    # CloudTrail marks GetParametersForImport readOnly, yet it stores the import token's parameters
    # (a wrapping key pair for 24 hours): killed between that write and its record, the next start
    # records the call, as it does a change's.
    open_store = _opener(tmp_path / "keys.db")
    store, spool, clock = await open_store(), Spool(), ManualClock()
    service = node(store, spool, clock)
    arn = str((await service.execute("CreateKey", context("req-create"), {"Origin": "EXTERNAL"}))["KeyMetadata"]["Arn"])
    spool.crash_at = {"GetParametersForImport"}
    with pytest.raises(owed_calls.Crash):
        await service.execute("GetParametersForImport", context("req-params"), {
            "KeyId": arn, "WrappingAlgorithm": "RSAES_OAEP_SHA_256", "WrappingKeySpec": "RSA_2048"})
    await store.close()
    spool.crash_at = set()
    store = await open_store()
    await node(store, spool, clock).run_due()
    [record] = spool.named("GetParametersForImport")
    assert (record.request_id, record.read_only, record.resources) == ("req-params", True, (arn,))
    assert await store.owed_records() == []
    await store.close()


async def test_a_refused_rotate_key_event_leaves_rotate_key_on_demand_recorded_as_done(tmp_path: Path) -> None:
    """The spool refusing the RotateKey service event after the rotation was written failed the
    RotateKeyOnDemand call, and its record said "the call was not performed" (naming the RotateKey's
    event id as the request) though the key had rotated. The call now succeeds with its record, and
    the RotateKey it still owes is recorded by the next tick."""
    store, spool = await _opener(tmp_path / "keys.db")(), Spool()
    service = node(store, spool, ManualClock())
    arn = (await service.execute("CreateKey", context("req-create"), {}))["KeyMetadata"]["Arn"]
    spool.refuse_once = {"RotateKey"}
    assert await service.execute("RotateKeyOnDemand", context("req-rotate"), {"KeyId": arn}) == {"KeyId": arn}
    [record] = spool.named("RotateKeyOnDemand")
    assert (record.request_id, record.error_code, record.error_message) == ("req-rotate", None, None)
    key = await store.get_key(ACCOUNT, "us-east-1", arn.rsplit("/", 1)[1])
    assert key is not None and len(key.materials) == 2
    assert spool.named("RotateKey") == []
    await service.run_due()
    [rotated] = spool.named("RotateKey")
    assert rotated.service_event_details is not None and rotated.service_event_details["rotationType"] == "ON_DEMAND"
    assert await store.owed_records() == []
    await store.close()


def test_rows_the_store_will_not_settle_are_said_once_a_minute_with_how_many_more(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # A store refusing the deletes (its connection limit reached) refuses them for every call: a line
    # each (90 of 93 calls) buried the outage's own line.
    from types import SimpleNamespace

    from keytrail.kms import owed_calls as module

    now = [1000.0]
    monkeypatch.setattr(module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    failures = module._SettleFailures()
    for n in range(3):
        failures.say(f"event-{n}", OSError("too many connections for role"))
    now[0] += module.SETTLE_FAILURES_SAID_EVERY_SECONDS
    failures.say("event-3", OSError("too many connections for role"))
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 2
    assert said[0].startswith("audit record event-0 is durable but stays owed") and said[0].endswith("for role")
    assert said[1].startswith("audit record event-3 ") and said[1].endswith(
        "for role (2 more since the last such line)")
