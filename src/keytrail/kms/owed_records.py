"""The audit records a change owes, kept in the key store with the change until the spool took them
(the transactional outbox of API calls: kms/owed_calls.py says how the service uses it).

Here: a record as the JSON body of an `owed_records` row, and `Owing`, which both stores use to
write the record of the call a task is serving in the same transaction as each of its writes.
The body holds what the CloudTrail record holds (parameters already stripped of secrets), never
key material; the row is authenticated and counted in the ledger like every other row, so a
record cannot be forged into the trail, nor a change's record deleted, through the store.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import datetime
from enum import Enum
from typing import Any

from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord
from keytrail.kms.store import OwedWrites

__all__ = ["Owing", "record_from_doc", "record_to_doc"]


def _json_value(value: Any) -> Any:
    # What json cannot write (a datetime, an enum) in the form the trail shows it, anything else as
    # its text: failing here would fail the call's write, and with it the change, for its record's sake.
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    return str(value)


def _principal_doc(principal: Principal) -> dict[str, Any]:
    # Not its identity policies: no record shows them, and they would only grow the row.
    return {"arn": principal.arn, "account": principal.account, "type": str(principal.type),
            "access_key_id": principal.access_key_id, "principal_id": principal.principal_id,
            "user_name": principal.user_name, "role_arn": principal.role_arn, "session_name": principal.session_name}


def _context_doc(context: CallContext | None) -> dict[str, Any] | None:
    if context is None:
        return None
    return {"principal": _principal_doc(context.principal), "region": context.region,
            "request_id": context.request_id, "source_ip": context.source_ip, "user_agent": context.user_agent,
            "secure_transport": context.secure_transport, "tls_details": context.tls_details}


def record_to_doc(record: CallRecord) -> str:
    """The body of `record`'s row."""
    return json.dumps({
        "event_id": record.event_id, "event_name": record.event_name, "event_time": record.event_time.isoformat(),
        "region": record.region, "account": record.account, "context": _context_doc(record.context),
        "request_parameters": record.request_parameters, "response_elements": record.response_elements,
        "additional_event_data": record.additional_event_data,
        "service_event_details": record.service_event_details, "resources": list(record.resources),
        "read_only": record.read_only, "error_code": record.error_code, "error_message": record.error_message,
        "internal_request_id": record.internal_request_id, "shared_event_id": record.shared_event_id,
        "invoked_by": record.invoked_by,
    }, default=_json_value, sort_keys=True)


def _context_from(doc: dict[str, Any] | None) -> CallContext | None:
    if doc is None:
        return None
    principal = Principal(**{**doc["principal"], "type": IdentityType(doc["principal"]["type"])})
    return CallContext(principal=principal, region=doc["region"], request_id=doc["request_id"],
                       source_ip=doc["source_ip"], user_agent=doc["user_agent"],
                       secure_transport=doc["secure_transport"], tls_details=doc["tls_details"])


def record_from_doc(body: str) -> CallRecord:
    """The record a row's (verified) body holds."""
    doc = json.loads(body)
    return CallRecord(
        event_id=doc["event_id"], event_name=doc["event_name"], event_time=datetime.fromisoformat(doc["event_time"]),
        region=doc["region"], account=doc["account"], context=_context_from(doc["context"]),
        request_parameters=doc["request_parameters"], response_elements=doc["response_elements"],
        additional_event_data=doc["additional_event_data"], service_event_details=doc["service_event_details"],
        resources=tuple(doc["resources"]), read_only=doc["read_only"], error_code=doc["error_code"],
        error_message=doc["error_message"], internal_request_id=doc["internal_request_id"],
        # Absent from the rows of versions before these fields: their records had neither.
        shared_event_id=doc.get("shared_event_id"), invoked_by=doc.get("invoked_by"),
    )


class _Owed:
    """The record a task's call owes, as the store asks for it at each write."""

    __slots__ = ("record", "writes")

    def __init__(self, record: Callable[[], CallRecord]) -> None:
        self.record, self.writes = record, OwedWrites()


class Owing:
    """The records each task's writes owe (a store's `owing`, nested: a call's own, and those of the
    SynchronizeMultiRegionKey calls its write makes), for the store's write transactions."""

    def __init__(self) -> None:
        self._current: ContextVar[tuple[_Owed, ...]] = ContextVar(f"owing-{id(self)}", default=())

    @asynccontextmanager
    async def owing(self, record: Callable[[], CallRecord]) -> AsyncIterator[OwedWrites]:
        """Within it, each write of this task writes `record()` too, in its transaction."""
        owed = _Owed(record)
        token = self._current.set((*self._current.get(), owed))
        try:
            yield owed.writes
        finally:
            self._current.reset(token)

    def records(self) -> list[CallRecord]:
        """The records this task's write must carry now (none: it owes none)."""
        return [owed.record() for owed in self._current.get()]

    def sending(self) -> None:
        """Note that this task's write is committing with its records (its answer may be lost)."""
        for owed in self._current.get():
            owed.writes.sent = True

    def written(self) -> None:
        """Note that this task's write committed with its records."""
        for owed in self._current.get():
            owed.writes.written = True
