"""A CloudTrail KMS record, read once into the few typed fields the rules look at.

The detector works on CloudTrail dicts exactly as AWS writes them (audit-anchors §1); this module
is the only place that knows where each field lives in that dict.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple

from keytrail.audit.schema import is_key_arn, key_arn_in_message, principal_arn
from keytrail.audit.schema import key_arns as resource_key_arns
from keytrail.kms.key_use import CRYPTO_OPERATIONS
from keytrail.transport.cloudtrail_records import original_event_id

__all__ = [
    "CRYPTO_OPERATIONS",
    "KMS_SOURCE",
    "NETWORK_ACTIVITY",
    "KmsEvent",
    "caller",
    "caller_id",
    "key_arns",
    "parse_time",
    "principal_arn",
    "read_event",
    "read_kms_event",
    "text",
]


class KmsEvent(NamedTuple):
    """The fields of one CloudTrail KMS record that detection rules need. A named tuple, not a
    frozen dataclass: the detector makes one per call it judges, and a frozen dataclass's
    field-by-field `object.__setattr__` made that a tenth of its per-event CPU."""

    event_id: str
    event_time: datetime
    event_name: str
    key_arns: tuple[str, ...]
    principal_arn: str | None
    account_id: str | None
    region: str | None
    identity_type: str | None
    invoked_by: str | None
    error_code: str | None
    error_message: str | None
    request_parameters: Mapping[str, Any]
    response_elements: Mapping[str, Any]
    # Where a call came from, for the alarms that send someone looking for the caller.
    source_ip: str | None = None
    access_key_id: str | None = None
    # CloudTrail's sharedEventID: an organization trail holds a cross-account call twice (the
    # caller's account's copy and the key owner's, each with its own eventID), which is one call.
    shared_event_id: str | None = None
    # A corrected copy's original (addendum reason UPDATED_DATA): the same call, logged again.
    original_event_id: str | None = None
    # What KMS did on its own (an AwsServiceEvent): DeleteExpiredKeyMaterial names the material here.
    service_event_details: Mapping[str, Any] = MappingProxyType({})
    # userIdentity.principalId: what tells apart SAML and web identity users, which have no ARN and
    # (as CloudTrail documents them) no access key.
    principal_id: str | None = None

    @property
    def call_id(self) -> str:
        """What tells one call from another, as the pipeline tells them: its sharedEventID, else
        the eventID of the record it corrects, else its eventID."""
        return self.shared_event_id or self.original_event_id or self.event_id

    @property
    def key_arn(self) -> str | None:
        """The resolved key ARN (ReEncrypt: the source key)."""
        return self.key_arns[0] if self.key_arns else None

    @property
    def judged_key_arn(self) -> str | None:
        """The key an alarm on this event is about: of a failed call, the first of its keys its
        errorMessage names (`… on resource: <ARN> because …`, `<ARN> is disabled.`), else
        `key_arn`, else the key ARN its errorMessage names. A ReEncrypt lists its source key first,
        and one refused on its destination must be told of that key, not the source the caller may
        use (where its policy or state would be checked in vain). A denial imported without
        `resources` (a Decrypt's request names no key) still names its key in the message."""
        message = self.error_message or ""
        named = next((arn for arn in self.key_arns if arn in message), self.key_arn)
        return named or key_arn_in_message(message)

    @property
    def succeeded(self) -> bool:
        return self.error_code is None

    @property
    def is_crypto(self) -> bool:
        return self.event_name in CRYPTO_OPERATIONS




@lru_cache(maxsize=4096)  # consecutive events share their second
def parse_time(text: str) -> datetime:
    """CloudTrail's eventTime (`2025-05-20T20:46:16Z`) as an aware datetime; one without an offset
    is UTC, as CloudTrail's times are (a naive time would not compare with the others)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


KMS_SOURCE = "kms.amazonaws.com"
#: The eventType of a CloudTrail network activity event (a call through a VPC endpoint): it repeats a
#: call that has its own record, or records one the endpoint policy refused before it reached KMS.
#: Not a call to judge, nor use of a key; and as it may carry the call's sharedEventID, taken as one
#: it made the call's own record a duplicate (an AccessDenied Decrypt raised no alarm). The metrics
#: consumers leave it out alike (pipeline/runner.py).
NETWORK_ACTIVITY = "AwsVpceEvent"


def read_kms_event(record: Mapping[str, Any]) -> KmsEvent | None:
    """None for another service's record and for a network activity event (see NETWORK_ACTIVITY);
    ValueError when a KMS record lacks eventTime/eventName."""
    if record.get("eventSource", KMS_SOURCE) != KMS_SOURCE or record.get("eventType") == NETWORK_ACTIVITY:
        return None
    try:
        return read_event(record)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"unreadable CloudTrail record {record.get('eventID')}: {exc!r}") from None


def read_event(record: Mapping[str, Any]) -> KmsEvent:
    """Read one CloudTrail record; raises KeyError/ValueError when eventTime or eventName is missing."""
    identity = record.get("userIdentity") or {}
    request = _mapping(record.get("requestParameters"))
    response = _mapping(record.get("responseElements"))
    principal, account, identity_type, invoked_by, principal_id = caller(identity)
    return KmsEvent(
        event_id=str(record.get("eventID") or ""),
        event_time=parse_time(record["eventTime"]),
        event_name=str(record["eventName"]),
        key_arns=key_arns(record.get("resources"), request, response),
        principal_arn=principal,
        account_id=account or text(record.get("recipientAccountId")),  # as the metrics consumers attribute it
        region=text(record.get("awsRegion")),
        identity_type=identity_type,
        invoked_by=invoked_by,
        error_code=text(record.get("errorCode")),
        error_message=text(record.get("errorMessage")),
        request_parameters=request,
        response_elements=response,
        source_ip=text(record.get("sourceIPAddress")),
        access_key_id=text(identity.get("accessKeyId")),
        shared_event_id=text(record.get("sharedEventID")),
        original_event_id=original_event_id(record),
        service_event_details=_mapping(record.get("serviceEventDetails")),
        principal_id=principal_id,
    )


def caller(identity: Mapping[str, Any]) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """(principal ARN, accountId, type, invokedBy, principalId) of a userIdentity."""
    return (principal_arn(identity), text(identity.get("accountId")), text(identity.get("type")),
            text(identity.get("invokedBy")), text(identity.get("principalId")))


def caller_id(event: KmsEvent) -> str:
    """Who made a call, for the rules and the ledger, which count a caller's calls: its principal
    ARN; a caller with no ARN (a SAML or web identity user, an AWS service, a key owner's copy of
    another account's call) by its account and what tells it apart there: its access key, else its
    principalId, else the service that called (invokedBy). So two such callers are not one, and
    stolen federated credentials are watched as any."""
    if event.principal_arn:
        return event.principal_arn
    return f"caller {event.account_id or ''}/{event.access_key_id or event.principal_id or event.invoked_by or ''}"


def text(value: Any) -> str | None:
    """A record's string field as a string, None when absent or empty: an imported record may hold
    a number or a list there, which the rules' string tests and the alarm schema cannot take."""
    if value is None or value == "":
        return None
    return value if type(value) is str else str(value)


def key_arns(resources: Any, request: Mapping[str, Any], response: Mapping[str, Any]) -> tuple[str, ...]:
    """The key ARNs a record names, as the pipeline reads them: the key ARNs of resources[] (an
    alias listed there, as DeleteAlias's first, is no key); else requestParameters.keyId when it
    is a key ARN (it may be an alias or a bare key id)."""
    arns = resource_key_arns(resources)
    if arns:
        return arns
    key_id = request.get("keyId")
    if isinstance(key_id, str) and key_id.startswith("arn:") and is_key_arn(key_id):
        return (key_id,)
    metadata = _mapping(response.get("keyMetadata"))
    return (str(metadata["arn"]),) if metadata.get("arn") else ()


def _mapping(value: Any) -> Mapping[str, Any]:
    if type(value) is dict:  # the common case, without the slower ABC check
        return value
    return value if isinstance(value, Mapping) else _EMPTY


_EMPTY: Mapping[str, Any] = MappingProxyType({})
