"""CallRecord → CloudTrail record dict, in the shape AWS CloudTrail logs KMS events (eventVersion 1.11).

Field names, casing and presence rules follow the CloudTrail record-contents and userIdentity
pages and the KMS "Logging AWS KMS API calls with AWS CloudTrail" examples.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from keytrail.kms.model import CallRecord

if TYPE_CHECKING:
    from keytrail.kms.context import Principal

__all__ = [
    "EVENT_SOURCE",
    "EVENT_VERSION",
    "KMS_INTERNAL",
    "error_code",
    "format_event_time",
    "key_account",
    "origin",
    "resource",
    "scrub",
    "tls_details",
    "to_cloudtrail",
    "user_identity",
]

EVENT_VERSION = "1.11"
EVENT_SOURCE = "kms.amazonaws.com"
KMS_INTERNAL = "AWS Internal"
_MAX_SHORT = 1024  # CloudTrail truncates userAgent, errorCode and errorMessage at 1 KB
# CloudTrail shows KMS's AccessDeniedException as errorCode "AccessDenied".
_ERROR_CODES = {"AccessDeniedException": "AccessDenied"}
# Defence in depth: the KMS core already strips these, but a record must never carry them.
_SECRET_NAMES = frozenset({
    "plaintext", "ciphertextBlob", "sourceCiphertextBlob", "encryptedKeyMaterial", "importToken",
    "keyMaterial", "signature", "mac", "privateKeyPlaintext", "privateKeyCiphertextBlob",
    "sharedSecret", "ciphertextForRecipient", "keyStorePassword", "xksProxyAuthenticationCredential",
})


def to_cloudtrail(record: CallRecord) -> dict[str, Any]:
    """The CloudTrail record for one KMS call or service event (see module docstring)."""
    event: dict[str, Any] = {
        "eventVersion": EVENT_VERSION,
        "userIdentity": user_identity(record),
        "eventTime": format_event_time(record.event_time),
        "eventSource": EVENT_SOURCE,
        "eventName": record.event_name,
        "awsRegion": record.region,
    }
    event["sourceIPAddress"], event["userAgent"] = origin(record)
    if record.error_code is not None:
        event["errorCode"] = error_code(record.error_code)
        if record.error_message:  # none for a message-less error (InvalidCiphertextException), as CloudTrail
            event["errorMessage"] = record.error_message[:_MAX_SHORT]
    event["requestParameters"] = scrub(record.request_parameters)
    event["responseElements"] = scrub(record.response_elements)
    if record.additional_event_data:
        event["additionalEventData"] = record.additional_event_data
    if record.request_id is not None:
        event["requestID"] = record.request_id
    event["eventID"] = record.event_id
    event["readOnly"] = record.read_only
    if record.resources:
        event["resources"] = [resource(arn) for arn in record.resources]
    event["eventType"] = record.event_type
    event["managementEvent"] = True
    event["recipientAccountId"] = record.account
    if record.shared_event_id is not None:  # the caller's copy of a cross-account call
        event["sharedEventID"] = record.shared_event_id
    if record.service_event_details is not None:
        event["serviceEventDetails"] = record.service_event_details
    event["eventCategory"] = "Management"
    details = tls_details(record)
    if details is not None:
        event["tlsDetails"] = dict(details)
    return event


def format_event_time(moment: datetime) -> str:
    """CloudTrail's eventTime form: UTC, whole seconds, `Z` suffix."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def error_code(code: str) -> str:
    """CloudTrail's spelling of a KMS error code (AccessDeniedException → AccessDenied), 1 KB cap."""
    return _ERROR_CODES.get(code, code)[:_MAX_SHORT]


def key_account(arn: str) -> str:
    """The account field of an ARN (`arn:aws:kms:region:ACCOUNT:key/id`)."""
    parts = arn.split(":", 5)
    return parts[4] if len(parts) > 4 else ""


def origin(record: CallRecord) -> tuple[str, str]:
    """sourceIPAddress and userAgent of `record`. A request a service makes (KMS's own, or the entry
    KMS writes in another Region for a caller: invokedBy) names the service in both, as CloudTrail
    writes every record a service makes for a principal (invokedBy config.amazonaws.com, AWS
    Internal), not the caller's address and program."""
    if record.invoked_by is not None:
        return record.invoked_by, record.invoked_by
    context = record.context
    if context is None:
        return KMS_INTERNAL, KMS_INTERNAL
    return context.source_ip, context.user_agent[:_MAX_SHORT]


def tls_details(record: CallRecord) -> Mapping[str, str] | None:
    """tlsDetails of `record`: the caller's TLS session, for the calls it sent itself (not for an
    entry KMS writes for it, invokedBy: KMS made that request)."""
    context = record.context
    if context is None or record.invoked_by is not None or not context.tls_details:
        return None
    return context.tls_details


def user_identity(record: CallRecord) -> dict[str, Any]:
    """CloudTrail's userIdentity for the caller of `record` (KMS-internal for service events)."""
    if record.context is None:  # KMS-internal identity: no `type` (RotateKey, DeleteKey)
        return {"accountId": record.account, "invokedBy": KMS_INTERNAL}
    principal = record.context.principal
    identity: dict[str, Any] = {
        "type": str(principal.type),
        "principalId": principal.principal_id,
        "arn": principal.arn,
        "accountId": principal.account,
        "accessKeyId": principal.access_key_id,
    }
    if principal.type == "AssumedRole":
        identity["sessionContext"] = _session_context(principal, record.event_time)
    elif principal.user_name:
        identity["userName"] = principal.user_name
    if record.invoked_by is not None:
        identity["invokedBy"] = record.invoked_by
    return identity


def _session_context(principal: Principal, event_time: datetime) -> dict[str, Any]:
    role_arn = principal.role_arn or principal.arn
    issuer = {
        "type": "Role",
        "principalId": principal.principal_id.split(":", 1)[0],
        "arn": role_arn,
        "accountId": principal.account,
        "userName": role_arn.rsplit("/", 1)[-1],
    }
    # keytrail issues no STS sessions of its own: the session is as old as the call.
    attributes = {"creationDate": format_event_time(event_time), "mfaAuthenticated": "false"}
    return {"sessionIssuer": issuer, "attributes": attributes}


def resource(arn: str) -> dict[str, str]:
    """One `resources` entry for a KMS key ARN."""
    return {"accountId": key_account(arn), "type": "AWS::KMS::Key", "ARN": arn}


def scrub(values: dict[str, Any] | None) -> dict[str, Any] | None:
    """`values` without any member that could hold a secret (defence in depth)."""
    if values is None:
        return None
    if _SECRET_NAMES.isdisjoint(values):
        return values
    return {name: value for name, value in values.items() if name not in _SECRET_NAMES}
