"""A cross-account call's CloudTrail copies, linked by `sharedEventID`.

AWS logs a KMS call on a key of another account twice: in the caller's account and in the key
owner's (`recipientAccountId`), each copy with its own `eventID`, both with one `sharedEventID`; a
call AccessDenied is logged in the caller's account only (shared/reference/audit-anchors.md §1).
keytrail's event log holds one event per call (CONTRACTS.md §3): the caller's copy, with a
`sharedEventID` keytrail derives from its `eventID`. `audit export` adds each key owner's copy, whose
`eventID` is the caller copy's masked by the owner's account and whose `userIdentity` names the
caller as AWS shows it to the key owner, by account alone (`AWSAccount`), so that whoever reads the
files back (`audit import`, `report`, `consume`, `detect` over CloudTrail files) takes an owner copy
keytrail wrote for the call it copies, counted once (export files the owners' copies so that they
are read after the callers'). Copies AWS wrote are left as they are: their `sharedEventID` is
random, not derived.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable
from typing import Any

__all__ = ["as_caller_copy", "as_seen_by_key_owner", "crosses_accounts", "owner_copies", "shared_event_id"]

_NAMESPACE = uuid.UUID("6f1e3c52-8d0b-4c1a-9a57-2b7d4e9c0f13")  # keytrail's sharedEventIDs
_ACCESS_DENIED = "AccessDeniedException"
# The version and variant bits: a masked eventID stays a well-formed GUID of the same version.
_FORMAT_BITS = (0xF << 76) | (0x3 << 62)


def shared_event_id(event_id: str) -> str:
    """The sharedEventID keytrail gives the copies of the call logged as `event_id`."""
    return str(uuid.uuid5(_NAMESPACE, event_id))


def crosses_accounts(caller_account: str, resources: Iterable[str], error_code: str | None) -> bool:
    """Whether AWS logs the call in a key owner's account too: a key of `resources` (ARNs) is in
    another account than the caller's, and the call was not denied."""
    if error_code == _ACCESS_DENIED:
        return False
    for arn in resources:  # a loop, not any(): every call asks (≈ 0.3 µs against 0.6)
        account = _arn_account(arn)
        if account and account != caller_account:
            return True
    return False


def owner_copies(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The key owners' copies of a cross-account call keytrail logged (`event`, the caller's copy);
    none for any other record."""
    event_id, caller, shared = event.get("eventID"), event.get("recipientAccountId"), event.get("sharedEventID")
    if shared is None or not isinstance(event_id, str) or shared != shared_event_id(event_id):
        return []  # most records: one account's call
    owners = sorted({str(r.get("accountId")) for r in event.get("resources") or ()
                     if isinstance(r, dict) and r.get("accountId") not in (None, "", caller)})
    identity = as_seen_by_key_owner(event.get("userIdentity"))
    try:
        return [{**event, "userIdentity": identity, "eventID": _masked(event_id, owner), "recipientAccountId": owner}
                for owner in owners]
    except ValueError:  # an eventID that is no GUID (keytrail's are): its copies could not be told apart
        return []


def as_seen_by_key_owner(identity: Any) -> Any:
    """The caller's userIdentity in a key owner's copy: CloudTrail names a caller of another account
    by its account and principal id alone (type `AWSAccount`: no ARN, user name or access key of
    that account; audit-anchors.md §1.2)."""
    if not isinstance(identity, dict):
        return identity
    seen = {"type": "AWSAccount", "principalId": identity.get("principalId"), "accountId": identity.get("accountId")}
    return {name: value for name, value in seen.items() if value is not None}


def as_caller_copy(event: dict[str, Any]) -> dict[str, Any]:
    """The caller's copy of the call when `event` is a key owner's copy `owner_copies` made (its
    caller named as the key owner sees it: the owner's files alone tell no more), else `event`
    itself."""
    event_id, owner, shared = event.get("eventID"), event.get("recipientAccountId"), event.get("sharedEventID")
    if not (isinstance(event_id, str) and isinstance(owner, str) and isinstance(shared, str)):
        return event
    try:
        original = _masked(event_id, owner)  # the mask undoes itself
    except ValueError:  # not a GUID: no copy keytrail made
        return event
    if shared != shared_event_id(original):
        return event
    identity = event.get("userIdentity")
    caller = identity.get("accountId") if isinstance(identity, dict) else None
    return {**event, "eventID": original, "recipientAccountId": caller}


def _masked(event_id: str, account: str) -> str:
    mask = int.from_bytes(hashlib.sha256(account.encode()).digest()[:16], "big") & ~_FORMAT_BITS
    return str(uuid.UUID(int=uuid.UUID(event_id).int ^ mask))


def _arn_account(arn: str) -> str:
    parts = arn.split(":", 5)
    return parts[4] if len(parts) > 4 else ""
