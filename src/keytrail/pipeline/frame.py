"""CloudTrail KMS records → one polars DataFrame with a fixed schema.

Built column by column from plain lists (no per-row DataFrame work). The detector may import it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import polars as pl

from keytrail.audit.schema import KEY_ARN_IN_MESSAGE, as_object, as_text, key_arn, key_arn_in_message, principal_arn
from keytrail.pipeline.lastused import CRYPTO_OPERATIONS
from keytrail.transport.cloudtrail_records import original_event_id

__all__ = ["CRYPTO_OPERATIONS", "FRAME_SCHEMA", "OTHER_ACCOUNT", "empty_frame", "frame_from_avro", "frame_from_records"]

log = logging.getLogger(__name__)

FRAME_SCHEMA: dict[str, pl.DataType] = {
    "eventID": pl.String(),
    # One cross-account call is logged twice, to the caller's and to the key owner's account, each
    # copy with its own eventID and this shared one (CloudTrail sharedEventID): a trail of both
    # accounts (an organization trail) holds the call twice. Null for same-account calls.
    "sharedEventID": pl.String(),
    "eventTime": pl.Datetime("us", "UTC"),
    "eventName": pl.String(),
    "keyArn": pl.String(),  # the first key ARN in resources: the resolved key, never requestParameters.keyId
    "destinationKeyArn": pl.String(),  # ReEncrypt: resources[1].ARN
    "replicaKeyArn": pl.String(),  # ReplicateKey: the new replica
    "principalArn": pl.String(),  # role sessions attributed to sessionIssuer.arn
    "accountId": pl.String(),  # the calling account (the one that pays for the request)
    "recipientAccountId": pl.String(),
    "awsRegion": pl.String(),
    "errorCode": pl.String(),
    "readOnly": pl.Boolean(),
    "eventType": pl.String(),
    "requestID": pl.String(),
    "keySpec": pl.String(),  # CreateKey / ReplicateKey: spec of the new key
    "keyManager": pl.String(),
    "keyPairSpec": pl.String(),  # GenerateDataKeyPair*: spec of the data key pair
    # Successful Sign/Verify/Encrypt/Decrypt/ReEncrypt/DeriveSharedSecret/Encapsulate/Decapsulate:
    # the kind of key its algorithm reveals (RSA_*, ECC_*, SM2, ML_DSA_*, ML_KEM_*; the size is not
    # in the record), so requests on keys created before the logs start still price as asymmetric.
    "keyFamily": pl.String(),
    "logOffset": pl.Int64(),  # position in the source partition's log: orders same-second events
}

#: The userIdentity type of a key owner's copy of a call from another account: CloudTrail names the
#: caller there by its account alone (`accountId`, no ARN), which stands for the caller's ARN in
#: principalArn (as `keytrail audit events` names it) where no copy naming the caller came with it.
OTHER_ACCOUNT = "AWSAccount"

_NEW_KEY_EVENTS = ["CreateKey", "ReplicateKey"]
_KEY_PAIR_EVENTS = ["GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"]
#: The request parameter naming the algorithm of the (source) key, per operation.
_ALGORITHM_PARAMS = {
    "Sign": "signingAlgorithm",
    "Verify": "signingAlgorithm",
    "Encrypt": "encryptionAlgorithm",
    "Decrypt": "encryptionAlgorithm",
    "ReEncrypt": "sourceEncryptionAlgorithm",
}


def empty_frame() -> pl.DataFrame:
    """A frame with the fixed schema and no rows."""
    return pl.DataFrame(schema=FRAME_SCHEMA)


def frame_from_records(
    records: Iterable[Mapping[str, Any]], offsets: Sequence[int] | None = None
) -> pl.DataFrame:
    """Build the fixed-schema frame from CloudTrail record dicts.

    `offsets`: each record's position in its source partition (default: the order read).
    """
    columns: dict[str, list[Any]] = {name: [] for name in _GETTERS}
    appenders = [(columns[name].append, getter) for name, getter in _GETTERS.items()]
    for record in records:
        for append, getter in appenders:
            append(getter(record))
    count = len(columns["eventID"])
    frame = pl.DataFrame(columns, schema=_RECORD_SCHEMA).with_columns(
        _key_family(pl.col("eventName"), pl.col("keyFamily"), pl.col("errorCode").is_not_null()),
        _offsets(offsets, count),
    )
    readable = frame.filter(pl.col("eventTime").is_not_null() & pl.col("eventName").is_not_null())
    if readable.height < count:  # nothing to count them by (CloudTrail always writes both)
        log.warning("skipped %d CloudTrail records without a readable eventTime or eventName", count - readable.height)
    return readable


#: Authorization's refusals: the key one names in its errorMessage exists (unlike NotFoundException's).
_DENIED = ("AccessDenied", "AccessDeniedException")
#: The key a denial names in its errorMessage alone, where `resources` names none (`_denied_key`).
_DENIED_KEY = pl.when(pl.col("errorCode").is_in(_DENIED)).then(
    pl.col("errorMessage").str.extract(f"({KEY_ARN_IN_MESSAGE})"))


def frame_from_avro(avro: pl.DataFrame, offsets: Sequence[int] | None = None) -> pl.DataFrame:
    """Build the fixed-schema frame from the Avro columns frame of `decode.avro_frame` (AVRO_COLUMNS).

    The typed Avro columns carry over; the few values inside JSON strings are parsed only on
    the rows that need them (a null string is never parsed). `offsets` as in frame_from_records.
    """
    name = pl.col("eventName")
    typed = [pl.coalesce("keyArn", _DENIED_KEY).alias("keyArn")]
    typed += [pl.col(c) for c in ("accountId", "recipientAccountId", "awsRegion")]
    typed += [pl.col(c) for c in ("eventType", "requestID")]
    other = pl.col("otherFields")  # what CloudTrail files brought that the schema has no column for
    corrected = other.str.json_path_match("$.addendum.reason") == "UPDATED_DATA"  # as `_event_identity`
    return (
        avro.with_columns(_read_once(name)).select(
            pl.coalesce(pl.when(corrected).then(other.str.json_path_match("$.addendum.originalEventID")),
                        "eventID").alias("eventID"),
            *typed,
            pl.col("otherFields").str.json_path_match("$.sharedEventID").alias("sharedEventID"),
            name,
            pl.col("eventTime").cast(pl.Datetime("us", "UTC")),
            pl.coalesce("principalArn", "invokedBy",
                        pl.when(pl.col("identityType") == OTHER_ACCOUNT).then("accountId")).alias("principalArn"),
            pl.when(pl.col("errorCode") != "").then(pl.col("errorCode")).alias("errorCode"),
            pl.col("readOnly").fill_null(False),
            _only(name == "ReEncrypt", "resources")
            .str.json_path_match("$[1].ARN")
            .alias("destinationKeyArn"),
            pl.when(name.is_in(_KEY_PAIR_EVENTS))
            .then(pl.col("requestParameters"))
            .str.json_path_match("$.keyPairSpec")
            .alias("keyPairSpec"),
            *_new_key_columns(name),
            _key_family(name, pl.col("_algorithm"), pl.col("errorCode") != ""),
            _offsets(offsets, avro.height),
        )
        .select(list(FRAME_SCHEMA))
        .cast(pl.Schema(FRAME_SCHEMA))
    )


def _read_once(name: pl.Expr) -> list[pl.Expr]:
    """Columns several of the frame's expressions look at, each made once: an expression used
    twice in one select is evaluated twice (the key family's when/then chain parsed every
    request's JSON five times for its algorithm, and each of the new key's dozen JSON paths
    copied the requests' and responses' column anew to keep only the new keys' rows)."""
    new_key = name.is_in(_NEW_KEY_EVENTS)
    return [
        _avro_algorithm(name).alias("_algorithm"),
        _only(new_key, "requestParameters").alias("_newKeyRequest"),
        _only(new_key, "responseElements").alias("_newKeyResponse"),
    ]


def _avro_algorithm(name: pl.Expr) -> pl.Expr:
    # Each parameter is looked for only in the requests of the operations that name it: a
    # when/then chain parses every branch's JSON on every row, this one request at most once.
    operations: dict[str, list[str]] = {}
    for operation, param in _ALGORITHM_PARAMS.items():
        operations.setdefault(param, []).append(operation)
    return pl.coalesce(*(_only(name.is_in(named), "requestParameters").str.json_path_match(f"$.{param}")
                         for param, named in operations.items()))


def _key_family(name: pl.Expr, algorithm: pl.Expr, failed: pl.Expr) -> pl.Expr:
    """The keyFamily column: what a successful call's operation or algorithm says of its key
    (a failed call may have named an algorithm its key does not have)."""
    family = (
        pl.when(name.is_in(["Encapsulate", "Decapsulate"])).then(pl.lit("ML_KEM_*"))
        .when(name == "DeriveSharedSecret").then(pl.lit("ECC_*"))  # ECDH: ECC (or SM2) keys
        .when(algorithm.str.starts_with("RSA")).then(pl.lit("RSA_*"))  # RSASSA_*, RSAES_*
        .when(algorithm.str.starts_with("ECDSA") | algorithm.str.starts_with("ED25519")).then(pl.lit("ECC_*"))
        .when(algorithm.str.starts_with("SM2")).then(pl.lit("SM2"))
        .when(algorithm.str.starts_with("ML_DSA")).then(pl.lit("ML_DSA_*"))
    )
    return pl.when(failed.fill_null(False)).then(pl.lit(None, pl.String)).otherwise(family).alias("keyFamily")


def _offsets(offsets: Sequence[int] | None, count: int) -> pl.Series:
    if offsets is None:
        return pl.Series("logOffset", range(count), pl.Int64)
    if len(offsets) != count:
        raise ValueError(f"{len(offsets)} offsets for {count} records")
    return pl.Series("logOffset", offsets, pl.Int64)


def _new_key_columns(name: pl.Expr) -> list[pl.Expr]:
    """keySpec, keyManager and replicaKeyArn of CreateKey / ReplicateKey records."""
    new_key = name.is_in(_NEW_KEY_EVENTS)
    response = pl.col("_newKeyResponse")  # _read_once: the new keys' rows only

    def metadata(field: str) -> list[pl.Expr]:
        # CloudTrail writes key metadata in camelCase (keySpec); older tools wrote KeySpec.
        names = (field[:1].lower() + field[1:], field)
        return [response.str.json_path_match(f"$.{m}.{n}") for m in ("keyMetadata", "replicaKeyMetadata")
                for n in names]

    request = pl.col("_newKeyRequest")
    spec = pl.coalesce(
        *metadata("KeySpec"),
        *metadata("CustomerMasterKeySpec"),  # KeySpec's name until 2021: older records hold only it
        *(request.str.json_path_match(f"$.{n}") for n in ("keySpec", "customerMasterKeySpec")),
        pl.lit("SYMMETRIC_DEFAULT"),
    )
    replica_response = _only(name == "ReplicateKey", "responseElements")
    replica = pl.coalesce(
        *(replica_response.str.json_path_match(f"$.replicaKeyMetadata.{n}") for n in ("arn", "Arn"))
    )
    return [
        pl.when(new_key).then(spec).alias("keySpec"),
        pl.coalesce(*metadata("KeyManager")).alias("keyManager"),
        replica.alias("replicaKeyArn"),
    ]


def _only(condition: pl.Expr, column: str) -> pl.Expr:
    return pl.when(condition).then(pl.col(column))


def _event_time(record: Mapping[str, Any]) -> datetime | None:
    value = record.get("eventTime")
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if not isinstance(value, str):
        return None
    try:  # fromisoformat reads CloudTrail's "Z" form on 3.11 and is ~10x faster than strptime
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# CloudTrail files may come from anywhere: a field of another kind than CloudTrail writes reads as
# missing (null), never as an error that would stop the whole file (as_text, as_object).
def _field(name: str) -> Any:
    def get(record: Mapping[str, Any]) -> str | None:
        value = record.get(name)  # inlined `as_text`: this runs for most fields of every record
        return value if type(value) is str else None

    return get


def _denied_key(record: Mapping[str, Any]) -> str | None:
    """The key a denial's errorMessage names, for a record whose `resources` name none (a denied
    Decrypt's request names no key), as `_DENIED_KEY` reads it and the detector judges it."""
    return key_arn_in_message(record.get("errorMessage")) if record.get("errorCode") in _DENIED else None


def _resource_arn(record: Mapping[str, Any], index: int) -> str | None:
    resources = record.get("resources")
    if type(resources) is list and len(resources) > index and isinstance(resource := resources[index], Mapping):
        arn = resource.get("ARN")
        return arn if type(arn) is str else None
    return None


def _principal_arn(record: Mapping[str, Any]) -> str | None:
    # As the event log's principalArn column holds it, then the invoking service, then the calling
    # account of a key owner's copy (as frame_from_avro coalesces them).
    identity = as_object(record.get("userIdentity"))
    found = principal_arn(identity) or as_text(identity.get("invokedBy"))
    if found is None and identity.get("type") == OTHER_ACCOUNT:
        return as_text(identity.get("accountId"))
    return found


def _account_id(record: Mapping[str, Any]) -> str | None:
    identity = record.get("userIdentity")
    account = identity.get("accountId") if isinstance(identity, Mapping) else None
    return account if type(account) is str and account else as_text(record.get("recipientAccountId"))


def _new_key_metadata(record: Mapping[str, Any]) -> Mapping[str, Any]:
    response = as_object(record.get("responseElements"))
    return as_object(response.get("keyMetadata") or response.get("replicaKeyMetadata"))


def _first_text(mapping: Mapping[str, Any], *names: str) -> str | None:
    return next((value for name in names if (value := as_text(mapping.get(name)))), None)


def _key_spec(record: Mapping[str, Any]) -> str | None:
    if record.get("eventName") not in _NEW_KEY_EVENTS:
        return None  # GenerateDataKey's keySpec is the data key's, not the KMS key's
    return (
        _first_text(_new_key_metadata(record), "keySpec", "KeySpec", "customerMasterKeySpec", "CustomerMasterKeySpec")
        or _first_text(as_object(record.get("requestParameters")), "keySpec", "customerMasterKeySpec")
        or "SYMMETRIC_DEFAULT"
    )


def _key_manager(record: Mapping[str, Any]) -> str | None:
    if record.get("eventName") not in _NEW_KEY_EVENTS:
        return None
    return _first_text(_new_key_metadata(record), "keyManager", "KeyManager")


def _replica_arn(record: Mapping[str, Any]) -> str | None:
    if record.get("eventName") != "ReplicateKey":
        return None
    return _first_text(_new_key_metadata(record), "arn", "Arn")


def _param(name: str) -> Any:
    def get(record: Mapping[str, Any]) -> str | None:
        params = record.get("requestParameters")
        value = params.get(name) if isinstance(params, Mapping) else None
        return value if type(value) is str else None

    return get


def _algorithm(record: Mapping[str, Any]) -> str | None:
    param = _ALGORITHM_PARAMS.get(record.get("eventName"))  # type: ignore[arg-type]
    return _param(param)(record) if param else None


def _event_identity(record: Mapping[str, Any]) -> str | None:
    """The eventID the record is counted under: a corrected copy's is its original's
    (cloudtrail_records.original_event_id), so that one of the two counts."""
    event_id = record.get("eventID")
    return original_event_id(record) or (event_id if type(event_id) is str else None)


_GETTERS: dict[str, Any] = {
    "eventID": _event_identity,
    "sharedEventID": _field("sharedEventID"),
    "eventTime": _event_time,
    "eventName": _field("eventName"),
    "keyArn": lambda r: key_arn(r.get("resources")) or _denied_key(r),
    "destinationKeyArn": lambda r: _resource_arn(r, 1) if r.get("eventName") == "ReEncrypt" else None,
    "replicaKeyArn": _replica_arn,
    "principalArn": _principal_arn,
    "accountId": _account_id,
    "recipientAccountId": _field("recipientAccountId"),
    "awsRegion": _field("awsRegion"),
    "errorCode": lambda r: as_text(r.get("errorCode")) or None,
    "readOnly": lambda r: r.get("readOnly") in (True, "true"),  # CloudTrail writes a boolean; some tools "true"
    "eventType": _field("eventType"),
    "requestID": _field("requestID"),
    "keySpec": _key_spec,
    "keyManager": _key_manager,
    "keyPairSpec": _param("keyPairSpec"),
    "keyFamily": _algorithm,  # the raw algorithm here; frame_from_records maps it to the family
}
_RECORD_SCHEMA = {name: dtype for name, dtype in FRAME_SCHEMA.items() if name != "logOffset"}
assert list(_GETTERS) == list(_RECORD_SCHEMA)
