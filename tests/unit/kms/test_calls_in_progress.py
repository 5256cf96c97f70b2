"""KmsService counts the calls it is serving (the audit spool sizes its group commits by it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import AuditUnavailable, CallRecord, CallsInProgress
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

ACCOUNT = "111122223333"


class CountingSink:
    """Allows everything; as audit sink, notes how many calls were in progress at each record."""

    def __init__(self, in_progress: CallsInProgress) -> None:
        self.in_progress = in_progress
        self.counts: list[tuple[str, str | None, int]] = []

    def authorize(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(Verdict.ALLOW)

    async def record(self, call: CallRecord) -> None:
        self.counts.append((call.event_name, call.error_code, self.in_progress.count))


def _context() -> CallContext:
    principal = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                          access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE")
    return CallContext(principal=principal, region="us-east-1", request_id="req-1")


async def test_a_call_is_in_progress_until_its_record_is_made_whatever_its_outcome(tmp_path: Path) -> None:
    in_progress = CallsInProgress()
    sink = CountingSink(in_progress)
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=sink, authorizer=sink,
                                     in_progress=in_progress))
    created = await service.execute("CreateKey", _context(), {})
    with pytest.raises(errors.NotFoundException):
        await service.execute("DescribeKey", _context(), {"KeyId": "alias/none"})
    with pytest.raises(errors.UnknownOperationException):
        await service.execute("NoSuchOperation", _context(), {})
    assert created["KeyMetadata"]["KeyId"]
    assert sink.counts == [("CreateKey", None, 1), ("DescribeKey", "NotFoundException", 1)]
    assert in_progress.count == 0


class RefusingSink(CountingSink):
    async def record(self, call: CallRecord) -> None:
        raise AuditUnavailable("the disk is full")


async def test_a_call_the_audit_refuses_names_its_request_id(tmp_path: Path) -> None:
    # The id the client got as x-amzn-RequestId: the event id was never shown to anyone.
    sink = RefusingSink(CallsInProgress())
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=sink, authorizer=sink,
                                     new_id=lambda: "event-id"))
    with pytest.raises(errors.KMSInternalException, match="the event for request req-1: "):
        await service.execute("GenerateRandom", _context(), {"NumberOfBytes": 8})


async def test_a_state_change_the_audit_already_refuses_is_not_made(tmp_path: Path) -> None:
    # Made first and refused its record after, it would stand unaudited while the caller is told it
    # failed (and retries: a second key). A trail over its cap (Kafka unreachable) refuses up front.
    from keytrail.audit.spool import SpoolError
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    settings = AuditSettings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:1", max_unshipped_bytes=3000)
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    sink = CountingSink(CallsInProgress())
    async with AuditTrail.open(settings) as trail:
        with pytest.raises(SpoolError):
            for i in range(100):
                await trail.record(encrypt_call(i))
        service = KmsService(ServiceDeps(store=store, clock=ManualClock(), audit=trail, authorizer=sink))
        with pytest.raises(errors.KMSInternalException, match="audit spool"):
            await service.execute("CreateKey", _context(), {})
    assert await store.all_keys() == []
