"""The per-call fast path: a CallRecord straight to its Avro single-object value.

Equal, byte for byte, to `encode(to_cloudtrail(call))` (the tests check it for every identity
type), but without building the CloudTrail dict and reading it back: it runs on every KMS call,
and measured in the server the two-step path cost about 30 µs of a ~100 µs Encrypt.
"""

from __future__ import annotations

from typing import Any

import orjson

from keytrail.audit.records import (
    EVENT_SOURCE,
    EVENT_VERSION,
    KMS_INTERNAL,
    error_code,
    resource,
    scrub,
    user_identity,
)
from keytrail.audit.schema import EventCodec
from keytrail.kms.model import CallRecord

__all__ = ["CallEncoder"]

_MAX_SHORT = 1024
_CACHE_LIMIT = 4096


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


class CallEncoder:
    """Encodes CallRecords with the current schema; caches the JSON of identities and resources."""

    def __init__(self, codec: EventCodec | None = None) -> None:
        codec = codec or EventCodec()
        self._header = codec.header
        self._body = codec.body
        self._identities: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}
        self._resources: dict[tuple[str, ...], str] = {}

    def encode(self, call: CallRecord) -> bytes:
        """The single-object encoded value of `call`'s CloudTrail record."""
        return self._header + self._body(self.avro_record(call))

    def avro_record(self, call: CallRecord) -> dict[str, Any]:
        """The Avro record of `call` (what `to_avro(to_cloudtrail(call))` returns)."""
        identity_json, identity = self._identity(call)
        context = call.context
        parameters = scrub(call.request_parameters)
        pairs = parameters.get("encryptionContext") if parameters else None
        extra = call.additional_event_data or None
        failed = call.error_code is not None
        return {
            "keyArn": call.resources[0] if call.resources else None,
            "recipientAccountId": call.account,
            "eventVersion": EVENT_VERSION, "eventID": call.event_id,
            "eventTime": call.event_time.replace(microsecond=0),
            "eventSource": EVENT_SOURCE, "eventName": call.event_name, "awsRegion": call.region,
            "eventType": call.event_type, "eventCategory": "Management", "managementEvent": True,
            "readOnly": call.read_only,
            "principalArn": identity.get("arn") if identity.get("type") != "AssumedRole"
            else identity["sessionContext"]["sessionIssuer"]["arn"],
            "accountId": identity.get("accountId") or call.account,
            "identityType": identity.get("type"), "accessKeyId": identity.get("accessKeyId"),
            "sourceIPAddress": context.source_ip if context else KMS_INTERNAL,
            "userAgent": context.user_agent[:_MAX_SHORT] if context else KMS_INTERNAL,
            "errorCode": error_code(call.error_code) if call.error_code is not None else None,
            "errorMessage": (call.error_message or "")[:_MAX_SHORT] if failed else None,
            "requestID": context.request_id if context else None,
            "encryptionContext": [{"key": str(k), "value": str(v)} for k, v in pairs.items()]
            if isinstance(pairs, dict) else [],
            "userIdentity": identity_json,
            "requestParameters": _json(parameters),
            "responseElements": _json(scrub(call.response_elements)),
            "additionalEventData": _json(extra),
            "serviceEventDetails": _json(call.service_event_details),
            "resources": self._resources_json(call.resources),
            "tlsDetails": _json(context.tls_details) if context and context.tls_details else None,
            "otherFields": None,
            "keyMaterialId": extra.get("keyMaterialId") if extra else None,
            "invokedBy": identity.get("invokedBy"),
        }

    def _identity(self, call: CallRecord) -> tuple[str, dict[str, Any]]:
        principal = call.context.principal if call.context else None
        if principal is not None and principal.type == "AssumedRole":  # creationDate varies per call
            identity = user_identity(call)
            return orjson.dumps(identity).decode(), identity
        key = (call.account,) if principal is None else (
            principal.type, principal.arn, principal.principal_id, principal.account,
            principal.access_key_id, principal.user_name)
        cached = self._identities.get(key)
        if cached is None:
            if len(self._identities) > _CACHE_LIMIT:
                self._identities.clear()
            identity = user_identity(call)
            cached = self._identities[key] = (orjson.dumps(identity).decode(), identity)
        return cached

    def _resources_json(self, arns: tuple[str, ...]) -> str | None:
        if not arns:
            return None
        cached = self._resources.get(arns)
        if cached is None:
            if len(self._resources) > _CACHE_LIMIT:
                self._resources.clear()
            cached = self._resources[arns] = orjson.dumps([resource(arn) for arn in arns]).decode()
        return cached
