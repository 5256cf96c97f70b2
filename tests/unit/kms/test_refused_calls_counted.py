"""Each caller's call the audit sink refused to record (no crypto without audit) is told to
`ServiceDeps.audit_refused` once, whichever way it was refused: such a call leaves no record, so
this is the only count of it (serve's keytrail_audit_refused_calls_total). A tick's retries of a
record a change owes are no call and are not counted again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.model import AuditUnavailable
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.owed_calls import Spool, context


def _service(tmp_path: Path, spool: Spool, refused: list[Exception]) -> KmsService:
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    return KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=spool, authorizer=spool,
                                  audit_refused=refused.append))


async def _key(service: KmsService) -> str:
    return str((await service.execute("CreateKey", context("req-create"), {}))["KeyMetadata"]["Arn"])


async def test_a_read_only_call_whose_record_is_refused_is_counted_once(tmp_path: Path) -> None:
    spool, refused = Spool(), []
    service = _service(tmp_path, spool, refused)
    arn = await _key(service)
    spool.refusing = True
    with pytest.raises(errors.KMSInternalException, match="the call was not performed"):
        await service.execute("Encrypt", context("req-encrypt"), {"KeyId": arn, "Plaintext": b"x"})
    assert [type(refusal) for refusal in refused] == [AuditUnavailable]
    await service.store.close()


async def test_a_change_refused_before_it_is_made_is_counted_once(tmp_path: Path) -> None:
    spool, refused = Spool(), []
    service = _service(tmp_path, spool, refused)
    arn = await _key(service)
    spool.refusing = True  # ready() refuses: the change is not made
    with pytest.raises(errors.KMSInternalException, match="the call was not performed"):
        await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    assert len(refused) == 1
    await service.store.close()


async def test_a_change_whose_record_is_refused_is_counted_once_and_not_at_each_tick_retrying_it(
        tmp_path: Path) -> None:
    spool, refused = Spool(), []
    service = _service(tmp_path, spool, refused)
    arn = await _key(service)
    spool.refuse_once = {"DisableKey"}
    with pytest.raises(errors.KMSInternalException, match="what the call changed stands"):
        await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    assert len(refused) == 1
    spool.refusing = True
    await service.run_due()  # its owed record refused again, and the tick's own work: no call of anyone's
    await service.run_due()
    assert len(refused) == 1
    assert spool.named("DisableKey") == []
    await service.store.close()


async def test_calls_the_sink_records_are_not_counted(tmp_path: Path) -> None:
    spool, refused = Spool(), []
    service = _service(tmp_path, spool, refused)
    arn = await _key(service)
    await service.execute("Encrypt", context("req-encrypt"), {"KeyId": arn, "Plaintext": b"x"})
    await service.execute("DisableKey", context("req-disable"), {"KeyId": arn})
    assert refused == []
    await service.store.close()
