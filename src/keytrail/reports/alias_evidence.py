"""What the audit records say of aliases: which key each alias named, and when.

Two kinds of record tell it, in AWS CloudTrail logs as in keytrail's own: a successful CreateAlias,
UpdateAlias or DeleteAlias (requestParameters `aliasName`, `targetKeyId`, and the keys in
`resources`), and any call that named its key by alias (requestParameters `keyId` `alias/orders`
or an alias ARN), whose `resources` hold the key the alias resolved to. The second kind names
aliases made before the records begin, which most aliases of a month's logs are. DeleteKey ends
a key's aliases (AWS deletes them with the key, and logs no DeleteAlias).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from keytrail.audit.schema import as_object, as_text, key_arns
from keytrail.pipeline.decode import readable_avro
from keytrail.pipeline.frame import empty_frame, frame_from_avro
from keytrail.pipeline.runner import Batch

__all__ = ["ALIAS_CHANGES", "EVIDENCE_SCHEMA", "alias_change", "decode", "empty_evidence", "evidence"]

ALIAS_CHANGES = ("CreateAlias", "UpdateAlias", "DeleteAlias")
#: AliasName as the KMS API accepts it (`^[a-zA-Z0-9:/_-]+$`, beginning `alias/`): nothing a CSV
#: or JSON writer escapes, so a list of them joined by spaces is one plain cell.
_ALIAS_NAME = r"^alias/[A-Za-z0-9:/_-]+$"
_ALIAS_IN_ARN = r"^arn:[^:]+:kms:[^:]*:[^:]*:(alias/.+)$"
#: One row per alias change, DeleteKey, or first and last use of an alias for a key in a batch.
#: `kind`: the change's eventName, DeleteKey, or `use`; `keyArn`: the key the alias names after it
#: (the key deleted, for DeleteKey); `formerKeyArn`: the key an UpdateAlias or DeleteAlias takes it from.
EVIDENCE_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(), "aliasName": pl.String(), "keyArn": pl.String(), "formerKeyArn": pl.String(),
    "eventTime": pl.Datetime("us", "UTC"), "logOffset": pl.Int64(),
}
# The request values read from the raw records, by the offset of their record.
_RAW_SCHEMA: dict[str, pl.DataType] = {
    "logOffset": pl.Int64(), "aliasName": pl.String(), "keyId": pl.String(), "targetKeyArn": pl.String(),
    "formerKeyArn": pl.String(),
}


def empty_evidence() -> pl.DataFrame:
    return pl.DataFrame(schema=EVIDENCE_SCHEMA)


def decode(batch: Batch) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The batch's pipeline frame (what `Batch.frame_from(0)` gives) and its alias evidence, from
    one decoding of its values: the pipeline's frame keeps no request parameters."""
    if not batch.values:
        frame = batch.frame_from(0)
        return frame, evidence(frame, _record_requests(batch.records, batch.offsets))
    avro, offsets = readable_avro(batch.values, batch.offsets, batch.partition)
    if not offsets:
        return empty_frame(), empty_evidence()
    frame = frame_from_avro(avro, offsets)
    return frame, evidence(frame, _avro_requests(avro, offsets))


def alias_change(event_name: str, keys: Sequence[str], target_key_id: str | None) -> tuple[str | None, str | None]:
    """(the key an alias change leaves the alias on, the key it takes it from) of a record whose
    resources list `keys`. CreateAlias lists its key; DeleteAlias the key it leaves; UpdateAlias
    the key it leaves, then the one `targetKeyId` (a key id or key ARN) names, as AWS and keytrail
    log it."""
    if event_name == "CreateAlias":
        return (keys[0] if keys else None), None
    if event_name == "DeleteAlias":
        return None, (keys[0] if keys else None)
    named = [arn for arn in keys if target_key_id and (arn == target_key_id or arn.endswith("/" + target_key_id))]
    target = named[0] if named else keys[-1] if keys else None
    return target, next((arn for arn in keys if arn != target), None)


def evidence(frame: pl.DataFrame, requests: pl.DataFrame) -> pl.DataFrame:
    """The alias evidence of one batch: its pipeline `frame` (event times, resolved keys, errors)
    joined by offset with the `requests` read from its records (`_RAW_SCHEMA`)."""
    if requests.height == 0 and not frame.get_column("eventName").eq("DeleteKey").any():
        return empty_evidence()  # most batches: a few milliseconds of polars calls saved on each
    joined = requests.join(frame.select("logOffset", "eventTime", "eventName", "keyArn", "errorCode"),
                           on="logOffset", how="inner")
    succeeded = pl.col("errorCode").is_null()
    changes = joined.filter(succeeded & pl.col("eventName").is_in(ALIAS_CHANGES)).select(
        kind=pl.col("eventName"), aliasName=_valid(pl.col("aliasName")), keyArn=pl.col("targetKeyArn"),
        formerKeyArn=pl.col("formerKeyArn"), eventTime=pl.col("eventTime"), logOffset=pl.col("logOffset"))
    deleted = frame.filter(succeeded & (pl.col("eventName") == "DeleteKey") & pl.col("keyArn").is_not_null()).select(
        kind=pl.lit("DeleteKey"), aliasName=pl.lit(None, pl.String), keyArn=pl.col("keyArn"),
        formerKeyArn=pl.lit(None, pl.String), eventTime=pl.col("eventTime"), logOffset=pl.col("logOffset"))
    # A call refused by its key's policy still resolved the alias to that key: its key is evidence.
    uses = joined.filter(~pl.col("eventName").is_in(ALIAS_CHANGES)).select(
        kind=pl.lit("use"), aliasName=_valid(_named_alias(pl.col("keyId"))), keyArn=pl.col("keyArn"),
        formerKeyArn=pl.lit(None, pl.String), eventTime=pl.col("eventTime"), logOffset=pl.col("logOffset"))
    found = pl.concat([changes, deleted, first_and_last_uses(uses)], how="vertical_relaxed")
    return found.filter(pl.col("aliasName").is_not_null() | (pl.col("kind") == "DeleteKey")).cast(
        EVIDENCE_SCHEMA)  # type: ignore[arg-type]


def first_and_last_uses(evidence: pl.DataFrame) -> pl.DataFrame:
    """`evidence` with its `use` rows cut to the first and last of each alias and key: a busy alias
    is used a million times a month, and what it named in between is what it named at both ends."""
    is_use = pl.col("kind") == "use"
    uses = evidence.filter(is_use & pl.col("aliasName").is_not_null() & pl.col("keyArn").is_not_null())
    ends = uses.sort("eventTime", "logOffset").group_by("aliasName", "keyArn").agg(
        first_time=pl.col("eventTime").first(), first_offset=pl.col("logOffset").first(),
        last_time=pl.col("eventTime").last(), last_offset=pl.col("logOffset").last())
    kept = pl.concat([ends.select(kind=pl.lit("use"), aliasName="aliasName", keyArn="keyArn",
                                  formerKeyArn=pl.lit(None, pl.String), eventTime=f"{end}_time",
                                  logOffset=f"{end}_offset") for end in ("first", "last")])
    return pl.concat([evidence.filter(~is_use), kept.unique()]).cast(EVIDENCE_SCHEMA)  # type: ignore[arg-type]


def _named_alias(key_id: pl.Expr) -> pl.Expr:
    """The alias name a keyId names: `alias/orders` itself, or the name in an alias ARN."""
    return pl.when(key_id.str.starts_with("alias/")).then(key_id).otherwise(key_id.str.extract(_ALIAS_IN_ARN, 1))


def _valid(name: pl.Expr) -> pl.Expr:
    return pl.when(name.str.contains(_ALIAS_NAME)).then(name)


def _record_requests(records: Sequence[Mapping[str, Any]], offsets: Sequence[int]) -> pl.DataFrame:
    """The alias values of CloudTrail record dicts (the rest are passed over at a dict lookup each)."""
    rows: list[tuple[int, str | None, str | None, str | None, str | None]] = []
    for record, offset in zip(records, offsets, strict=True):
        params = record.get("requestParameters")
        if not isinstance(params, Mapping):
            continue
        name = record.get("eventName")
        if name in ALIAS_CHANGES:
            target, former = alias_change(name, key_arns(record.get("resources")), as_text(params.get("targetKeyId")))
            rows.append((offset, as_text(params.get("aliasName")), None, target, former))
        elif type(key_id := params.get("keyId")) is str and "alias/" in key_id:
            rows.append((offset, None, key_id, None, None))
    return pl.DataFrame(rows, schema=_RAW_SCHEMA, orient="row")


def _avro_requests(avro: pl.DataFrame, offsets: Sequence[int]) -> pl.DataFrame:
    """The alias values of an Avro columns frame (`decode.AVRO_COLUMNS`): a literal search of the
    request parameters finds the few rows to parse."""
    params = pl.col("requestParameters")
    named = avro.select(pl.Series("logOffset", offsets, pl.Int64), "eventName", "resources", params).filter(
        params.str.contains("alias/", literal=True))
    uses = named.filter(~pl.col("eventName").is_in(ALIAS_CHANGES)).select(
        "logOffset", aliasName=pl.lit(None, pl.String), keyId=params.str.json_path_match("$.keyId"),
        targetKeyArn=pl.lit(None, pl.String), formerKeyArn=pl.lit(None, pl.String))
    rows = []
    for offset, name, resources, text in named.filter(pl.col("eventName").is_in(ALIAS_CHANGES)).iter_rows():
        request = as_object(_parsed(text))
        target, former = alias_change(name, key_arns(_parsed(resources)), as_text(request.get("targetKeyId")))
        rows.append((offset, as_text(request.get("aliasName")), None, target, former))
    return pl.concat([uses.cast(_RAW_SCHEMA), pl.DataFrame(rows, schema=_RAW_SCHEMA, orient="row")])  # type: ignore[arg-type]


def _parsed(text: str | None) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:  # an imported record's field damaged: no evidence, as a missing one
        return None

