"""The audit record of an API call as it stands, and its request parameters as CloudTrail logs them.

Built by the service for every call it reports (kms/service.py) and by the owed-calls outbox for
the record a state-changing call's writes carry (kms/owed_calls.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from keytrail.kms import errors
from keytrail.kms.calls import Call, Operation
from keytrail.kms.model import CallRecord
from keytrail.shared_events import crosses_accounts, shared_event_id

__all__ = ["call_record", "cloudtrail_date", "cloudtrail_parameters", "cloudtrail_values"]


def call_record(name: str, operation: Operation, call: Call, error: errors.KmsError | None, event_id: str,
                event_time: datetime) -> CallRecord:
    """The audit record of `call` as it stands (`error`: how it failed; no responseElements then)."""
    context = call.context
    error_code = error.code if error else None
    resources = tuple(call.resources)
    return CallRecord(
        event_id=event_id,
        event_name=name,
        event_time=event_time,
        region=context.region,
        account=context.account,
        context=context,
        request_parameters=cloudtrail_parameters(call.params, call.extra_request_parameters),
        response_elements=call.response_elements if error is None else None,
        additional_event_data=call.additional_event_data or None,
        resources=resources,
        read_only=operation.read_only,
        error_code=error_code,
        error_message=error.message if error else None,
        shared_event_id=shared_event_id(event_id) if crosses_accounts(context.account, resources, error_code) else None,
    )


_SECRET_PARAMETERS = frozenset({"KeyStorePassword", "XksProxyAuthenticationCredential", "GrantToken", "GrantTokens"})
# Not secret, yet not logged: CreateCustomKeyStore's entry holds the store's name and cluster only
# (ct-create-keystore).
_NOT_LOGGED = _SECRET_PARAMETERS | {"TrustAnchorCertificate"}
# Request parameters CloudTrail logs under a name of its own (ct-create-keystore, ct-update-keystore).
_LOGGED_AS = {"CloudHsmClusterId": "clusterId"}
# Maps whose keys are the caller's (encryption contexts): logged as sent, never camel-cased.
_VERBATIM = frozenset({"EncryptionContext", "EncryptionContextSubset", "EncryptionContextEquals",
                       "SourceEncryptionContext", "DestinationEncryptionContext"})


@lru_cache(maxsize=1024)  # names are the botocore model's members (validation drops others)
def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


def _cloudtrail_value(name: str, value: Any) -> Any:
    if type(value) is str or name in _VERBATIM:  # most parameters are strings
        return value
    if isinstance(value, dict):
        return {_camel(k): _cloudtrail_value(k, v) for k, v in value.items()
                if not isinstance(v, bytes | bytearray)}
    if isinstance(value, list):
        return [_cloudtrail_value(name, v) for v in value]
    if isinstance(value, datetime):
        return cloudtrail_date(value)
    return value


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def cloudtrail_date(moment: datetime) -> str:
    """A date inside requestParameters or responseElements as CloudTrail writes KMS's, in UTC:
    "Aug 10, 2022, 10:38:27 PM" (ct-createkey's creationDate, ct-importkeymaterial's validTo);
    eventTime alone is ISO 8601. English month names whatever the process's locale."""
    utc = moment.astimezone(UTC) if moment.tzinfo else moment
    hour = utc.hour % 12 or 12
    return (f"{_MONTHS[utc.month - 1]} {utc.day}, {utc.year}, {hour}:{utc.minute:02d}:{utc.second:02d} "
            f"{'AM' if utc.hour < 12 else 'PM'}")


def cloudtrail_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Members of a request or response as CloudTrail logs them: camelCase names at every level
    (ct-replicate-key's multiRegionConfiguration.primaryKey.arn), CloudTrail's dates, no blobs."""
    return {_camel(name): _cloudtrail_value(name, value) for name, value in values.items()
            if not isinstance(value, bytes | bytearray)}


def cloudtrail_parameters(params: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any] | None:
    """Request parameters as CloudTrail logs them: camelCase names (or CloudTrail's own), and no
    plaintext, ciphertext, signatures, key material or passwords (every blob member is dropped); null when
    none is left to log, as CloudTrail writes it (ct-retire-grant: a call by grant token alone)."""
    out = {  # strings, most parameters, as they are: no call each
        _LOGGED_AS.get(name) or _camel(name): value if type(value) is str else _cloudtrail_value(name, value)
        for name, value in params.items() if not isinstance(value, bytes | bytearray) and name not in _NOT_LOGGED
    }
    out.update(extra)
    return out or None
