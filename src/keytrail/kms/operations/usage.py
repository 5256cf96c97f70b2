"""GetKeyLastUsage: when a key was last used for cryptography, from the audit stream."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from keytrail.clock import as_utc
from keytrail.kms import errors
from keytrail.kms.calls import Call, Operation, Response

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS"]


async def get_key_last_usage(svc: KmsService, call: Call) -> Response:
    key = await svc.find_key(call, call.params["KeyId"], allow_alias=False)
    await svc.authorize(call, "kms:GetKeyLastUsage", key)
    source = svc.deps.last_usage
    if source is None:
        raise errors.UnsupportedOperationException("Key usage tracking is not running on this node.")
    tracking_start, last = await source.last_usage(key.arn)
    start = _tracking_start_of(key.creation_date, tracking_start)
    if last is not None and as_utc(last.timestamp) < start:
        # A use is whole seconds (its record's eventTime), a creation is not: a key used in the
        # second it was made read as used before its tracking began.
        start = as_utc(last.timestamp)
    response: Response = {"KeyId": key.arn, "KeyCreationDate": key.creation_date, "TrackingStartDate": start}
    # "If the key has not been used since tracking began, this response element is an empty object."
    response["KeyLastUsage"] = {} if last is None else {
        "Operation": last.operation, "Timestamp": last.timestamp, "CloudTrailEventId": last.event_id,
        **({"KmsRequestId": last.request_id} if last.request_id else {}),
    }
    return response


def _tracking_start_of(created: datetime, tracking_start: datetime | None) -> datetime:
    """TrackingStartDate: "the date from which KMS began recording cryptographic activity for this
    key, or the date the KMS key was created, whichever is later" (GetKeyLastUsage); a key made
    after tracking began answered the node's tracking start, before the key existed. With nothing
    counted yet (None: a new node's first seconds) the key's creation: the node's audit log holds
    its every call since, the consumer has only not read them yet."""
    return as_utc(created) if tracking_start is None else max(as_utc(created), as_utc(tracking_start))



OPERATIONS: dict[str, Operation] = {"GetKeyLastUsage": Operation(get_key_last_usage, read_only=True)}
