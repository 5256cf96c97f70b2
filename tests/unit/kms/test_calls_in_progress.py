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
