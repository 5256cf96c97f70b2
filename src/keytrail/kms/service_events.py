"""The service events (`RotateKey`, `DeleteKey`, `DeleteExpiredKeyMaterial`) a change to a key owes
the audit trail, kept on the key itself until recorded.

The key store and the audit spool are two files: a change written and its record refused (the
spool's disk filling between its `ready()` and the write) or a crash between the two left a
rotation or a deletion done with no record of it, ever, since the next tick found nothing due.
The event is now written in the same store write as the change it records (compute, persist with
its event, then announce); recording it empties the list. Until then the key is due
(`KmsService.apply_due`), so the next tick or call records it, under the same event id: an event
can be recorded twice only when the spool took it and the write that empties the list (or the
deletion) did not happen, and then with one `eventID`, as consumers deduplicate.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keytrail.kms.keys import Key
from keytrail.kms.keystores import key_store_event_data
from keytrail.kms.model import CallRecord

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["owes", "owes_event", "record_events", "record_owed", "with_event"]

UNRECORDED = "unrecorded_service_events"  # Key.extra: JSON dicts, oldest first


def with_event(key: Key, event_id: str, name: str, details: dict[str, Any], at: datetime) -> Key:
    """`key` owing the service event `name` done `at`, with its details."""
    event = {"id": event_id, "name": name, "time": at.isoformat(), "details": details}
    return replace(key, extra={**key.extra, UNRECORDED: [*key.extra.get(UNRECORDED, []), event]})


def owes(key: Key) -> bool:
    """Whether a change to `key` was written without its service event recorded."""
    return bool(key.extra.get(UNRECORDED))


def owes_event(key: Key, name: str) -> bool:
    return any(event["name"] == name for event in key.extra.get(UNRECORDED, []))


async def record_events(svc: KmsService, key: Key) -> None:
    """Record each event `key` owes, under the id it was given when the change was written."""
    for event in key.extra.get(UNRECORDED, []):
        # ct-delete-key: entries since December 2022 name the deleted key's ARN in
        # responseElements.keyId, though no caller gets a response, and the deletion of a key in a
        # custom key store names the store and its backing keys; RotateKey's and
        # DeleteExpiredKeyMaterial's responseElements stay null.
        deletion = event["name"] == "DeleteKey"
        await svc.audit(CallRecord(
            event_id=event["id"], event_name=event["name"], event_time=datetime.fromisoformat(event["time"]),
            region=key.region, account=key.account, context=None, request_parameters=None,
            service_event_details=event["details"], resources=(key.arn,), read_only=False,
            response_elements={"keyId": key.arn} if deletion else None,
            additional_event_data=(key_store_event_data(key) or None) if deletion else None,
        ))


async def record_owed(svc: KmsService, key: Key) -> Key:
    """Record the events `key` owes, then store it owing none; returns the key as stored."""
    if not owes(key):
        return key
    await record_events(svc, key)
    settled = replace(key, extra={name: value for name, value in key.extra.items() if name != UNRECORDED})
    await svc.store.put_key(settled)
    return settled
