"""KMS events read straight from Avro audit values (the embedded event log's, the audit topic's).

The rules need a dozen fields of a record. Rebuilding whole CloudTrail dicts first (fastavro per
value, then every JSON field) cost ~45 µs an event; here the bodies of the values are framed as
one in-memory Avro container per writer schema, polars reads only those fields (~3 µs of CPU an
event, in a worker thread: polars releases the GIL), and each row becomes the `KmsEvent` that
`read_kms_event` makes of the CloudTrail record the value decodes to (~2 µs: userIdentity and
resources are parsed once per distinct string, requestParameters/responseElements only when a
rule reads them).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import orjson
import polars as pl

from keytrail.detect.events import KMS_SOURCE, NETWORK_ACTIVITY, KmsEvent, caller, key_arns, text
from keytrail.pipeline.decode import known_writer, read_writer_columns
from keytrail.transport.cloudtrail_records import original_event_id

__all__ = ["EVENT_FIELDS", "AvroRow", "avro_events", "avro_rows", "events_of"]

log = logging.getLogger(__name__)

#: The Avro fields `read_kms_event` looks at (every schema version has them).
EVENT_FIELDS = ("eventID", "eventTime", "eventSource", "eventName", "awsRegion", "errorCode", "errorMessage",
                "userIdentity", "resources", "requestParameters", "responseElements", "sourceIPAddress",
                "accessKeyId", "otherFields", "serviceEventDetails", "recipientAccountId", "eventType")
_HEADER = 10  # C3 01 + the writer schema's 8-byte fingerprint
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
_EMPTY: Mapping[str, Any] = MappingProxyType({})


async def avro_events(values: Sequence[bytes], *, chunk: int) -> AsyncIterator[list[KmsEvent]]:
    """The KMS events of `values` in order, `chunk` at a time: the values are decoded in a worker
    thread, each chunk of events is built when the caller asks for it (one short loop step)."""
    rows = await avro_rows(values)
    for start in range(0, len(rows), chunk):
        yield events_of(rows[start : start + chunk])


async def avro_rows(values: Sequence[bytes], *, from_event_log: bool = False) -> list[AvroRow]:
    """The EVENT_FIELDS of each value, decoded in a worker thread; what polars raises when a body
    is damaged propagates (`events_of` then turns rows into events a chunk at a time).
    `from_event_log`: as `decode.read_writer_columns` takes it."""
    columns = await asyncio.to_thread(_columns, values, from_event_log)
    return list(zip(*(columns[name] for name in EVENT_FIELDS), strict=True))


def _columns(values: Sequence[bytes], from_event_log: bool) -> dict[str, list[Any]]:
    """EVENT_FIELDS of `values` as Python lists (eventTime in epoch ms), one row per value in order.
    Worker thread: polars runs on its own thread pool, where a query started from the event loop
    would queue behind the metrics consumer's. Values of an unknown writer schema are left out
    with a warning (the audit layer wrote them all; a stranger is not an event)."""
    frames = []
    for prefix, run in itertools.groupby(values, key=lambda value: value[:_HEADER]):
        same_writer = list(run)
        if not known_writer(prefix):
            log.warning("detector: skipping %d values of unknown writer schema %s", len(same_writer), prefix.hex())
            continue
        frames.append(read_writer_columns(prefix, same_writer, EVENT_FIELDS, from_event_log=from_event_log))
    if not frames:
        return {name: [] for name in EVENT_FIELDS}
    frame = pl.concat(frames, how="vertical_relaxed").with_columns(pl.col("eventTime").dt.epoch("ms"))
    return {name: frame[name].to_list() for name in EVENT_FIELDS}


# One value's EVENT_FIELDS, in that order (eventTime in epoch ms): a plain tuple, as zip makes it,
# unpacked in `_event` (a named tuple per row cost ~0.5 µs an event).
AvroRow = tuple[str, int, str, str, str | None, str | None, str | None, str | None, str | None, str | None, str | None,
                str | None, str | None, str | None, str | None, str | None, str | None]
_SOURCE, _EVENT_ID, _EVENT_TYPE = 2, 0, 16


def events_of(rows: Sequence[AvroRow]) -> list[KmsEvent]:
    """The events of rows; other services' rows are skipped, unreadable ones skipped with a
    warning, as `read_kms_event` does with the records they decode to."""
    events = []
    for row in rows:
        if row[_SOURCE] != KMS_SOURCE or row[_EVENT_TYPE] == NETWORK_ACTIVITY:
            continue
        try:
            events.append(_event(row))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            log.warning("skipping unreadable CloudTrail record %s: %r", row[_EVENT_ID], exc)
    return events


def _event(row: AvroRow) -> KmsEvent:
    (event_id, epoch_ms, _, event_name, region, error_code, error_message,
     user_identity, resources, request_parameters, response_elements, source_ip, access_key_id, other_fields,
     service_event_details, recipient_account, _) = row
    principal, account, identity_type, invoked_by, principal_id = _caller(user_identity)
    request, response, others = _object(request_parameters), _object(response_elements), _object(other_fields)
    return KmsEvent(
        event_id=event_id,
        event_time=_time(epoch_ms),
        event_name=event_name,
        key_arns=_resource_arns(resources) or key_arns(None, request, response),
        principal_arn=principal,
        account_id=account or recipient_account or None,  # as the metrics consumers attribute it
        region=region,
        identity_type=identity_type,
        invoked_by=invoked_by,
        error_code=error_code or None,
        error_message=error_message,
        request_parameters=request,
        response_elements=response,
        source_ip=source_ip or None,
        access_key_id=access_key_id or None,
        shared_event_id=text(others.get("sharedEventID")),
        original_event_id=original_event_id(others),  # an imported corrected copy
        service_event_details=_object(service_event_details),
        principal_id=principal_id,
    )


# Memos of the per-event work on the strings a stream repeats: a node's callers, keys and seconds
# recur from call to call, so most events cost a dictionary lookup instead of a JSON parse.
@lru_cache(maxsize=4096)
def _caller(user_identity: str | None) -> tuple[str | None, str | None, str | None, str | None, str | None]:
    """(principal ARN, accountId, type, invokedBy, principalId) of a userIdentity."""
    return caller(_json(user_identity) or {})


@lru_cache(maxsize=4096)
def _resource_arns(resources: str | None) -> tuple[str, ...]:
    """The key ARNs of a `resources` list (empty: the event names its key elsewhere, if at all)."""
    return key_arns(_json(resources), _EMPTY, _EMPTY)


@lru_cache(maxsize=4096)
def _time(epoch_ms: int) -> datetime:
    """An eventTime; ValueError past a date's range (years 1 to 9999): a damaged long the columnar
    reader reads as any other, whose OverflowError passed over its whole batch (`events_of`)."""
    try:
        return _EPOCH + epoch_ms * _MILLISECOND
    except OverflowError:
        raise ValueError(f"eventTime {epoch_ms} ms is past a date's range") from None


def _json(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _object(text: str | None) -> Mapping[str, Any]:
    return _EMPTY if text is None else _JsonObject(text)


class _JsonObject(Mapping[str, Any]):
    """A JSON object parsed on first use: only lifecycle and policy events' rules read
    requestParameters/responseElements, so most events never pay for the parse. A value that is
    not an object reads as empty, as the dict reader has it; so does one that is not JSON (the
    audit layer writes none: the record it came from was already judged by then)."""

    __slots__ = ("_text", "_value")

    def __init__(self, text: str) -> None:
        self._text = text
        self._value: Mapping[str, Any] | None = None

    def _parsed(self) -> Mapping[str, Any]:
        if self._value is None:
            try:
                value = orjson.loads(self._text)
            except orjson.JSONDecodeError:
                log.warning("detector: unreadable JSON object in an audit value, read as empty")
                value = None
            self._value = value if isinstance(value, dict) else _EMPTY
        return self._value

    def __getitem__(self, name: str) -> Any:
        return self._parsed()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())

    def __repr__(self) -> str:
        return repr(self._parsed())
