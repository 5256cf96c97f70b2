"""Cost model: key storage prorated hourly plus requests by price class (AWS KMS pricing).

Storage is billed to the key's owner account for customer managed keys while they are not
pending deletion (a cancelled deletion bills its waiting period after all); each of the first two
rotations adds one rotation rate; a key-month is the hours of its UTC calendar month. Requests are
billed to the calling account. Money is `Decimal`, rounded to 10 places per row, summed exactly;
a row's storage is rounded where the key's running totals stand at the window's bounds, so the rows
of adjacent windows add up to the row of the window spanning them.
"""

from __future__ import annotations

import bisect
import calendar
import itertools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache

import polars as pl

from keytrail.pipeline.prices import PriceTable

__all__ = [
    "BILLABLE",
    "COST_SCHEMA",
    "KEY_SPEC_SEEN",
    "LIFECYCLE_EVENTS",
    "LIFECYCLE_SCHEMA",
    "MATERIAL_IMPORTED",
    "SERVICE_EVENTS",
    "UNBILLED_CALLERS",
    "billable_rows",
    "billed_segments",
    "classed_requests",
    "cost_report",
    "last_lifecycle_events",
    "lifecycle_events",
    "part_request_counts",
    "price_classes",
    "priced",
    "request_counts",
    "storage_events",
    "storage_horizon",
]

LIFECYCLE_EVENTS = (
    "CreateKey",
    "ReplicateKey",
    "RotateKey",
    "ScheduleKeyDeletion",
    "CancelKeyDeletion",
    "DeleteKey",
)
#: Kept with the lifecycle, though it prices nothing: a key made without key material (EXTERNAL)
#: can be used only from its first import, so it is idle from then (the report's unused keys).
MATERIAL_IMPORTED = "ImportKeyMaterial"
# Every record of KMS's own doing (kms/rotation.py, service.py, multiregion.py, importing.py): the
# AwsServiceEvents, and SynchronizeMultiRegionKey, which CloudTrail logs as an AwsApiCall of KMS's
# internal identity. No account made a request, so none is billed. Usage keeps no eventType, hence names.
SERVICE_EVENTS = frozenset({"RotateKey", "DeleteKey", "SynchronizeMultiRegionKey", "DeleteExpiredKeyMaterial"})
#: CloudTrail's own calls as it writes SSE-KMS log files (userIdentity AWSService, its invokedBy as
#: the principal): AWS charges no one for them (shared/reference/audit-anchors.md §3.1).
UNBILLED_CALLERS = frozenset({"cloudtrail.amazonaws.com"})
#: Usage rows that are billed requests: neither a KMS service event nor an unbilled caller's call
#: (`billable_rows` also leaves out the CreateKey records of keys AWS made: `_created_by_aws`).
BILLABLE = ~pl.col("eventName").is_in(list(SERVICE_EVENTS)) & ~pl.col("principalArn").fill_null("").is_in(
    list(UNBILLED_CALLERS)
)
#: The lifecycle row of a key's family seen in its calls (no event of its own: it only prices).
KEY_SPEC_SEEN = "KeySpecSeen"
_ORDER = {name: rank for rank, name in enumerate(LIFECYCLE_EVENTS)}  # same-second tie order
#: A key's storage is billed to the account its ARN names (`arn:<partition>:kms:<region>:<account>:key/<id>`).
#: An imported record may name a key otherwise (`key/<id>` in its resources, a ReplicateKey whose
#: replicaKeyMetadata.arn is no ARN): such a key has no owner to bill, and its events stay out of
#: storage, not taken apart for an account they do not hold (an IndexError that stopped every
#: cost query, report and consumer of the event log that held them, for good).
_NAMES_ITS_OWNER = pl.col("keyArn").str.contains(r"^arn:[^:]+:kms:[^:]*:[^:]+:key/.").fill_null(False)
_ASYMMETRIC_PREFIXES = ("RSA_", "ECC_", "ML_DSA_", "ML_KEM_", "SM2")
_KEY_PAIR_OPERATIONS = ["GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext"]
_ROW = Decimal("1e-10")
_NEVER = -(2**62)  # a clock hour before any key
_MONTH = pl.Datetime("us", "UTC")
# Symmetric requests per calling account and month in the usage parts already priced (free tier).
_EARLIER_SCHEMA: dict[str, pl.DataType] = {"accountId": pl.String(), "month": _MONTH, "earlier": pl.Int64()}
_COUNTED_BY = ["keyArn", "accountId", "priceClass"]
_COUNTS_SCHEMA: dict[str, pl.DataType] = {"keyArn": pl.String(), "accountId": pl.String(), "priceClass": pl.String(),
                                          "requests": pl.Int64(), "billed": pl.Int64()}
_DAY_COUNTS_SCHEMA: dict[str, pl.DataType] = {"day": pl.Date(), **_COUNTS_SCHEMA}

LIFECYCLE_SCHEMA: dict[str, pl.DataType] = {
    "keyArn": pl.String(),
    "eventTime": pl.Datetime("us", "UTC"),
    "eventName": pl.String(),
    "keySpec": pl.String(),
    "keyManager": pl.String(),
    "eventID": pl.String(),
}
COST_SCHEMA: dict[str, pl.DataType] = {
    "keyArn": pl.String(),
    "accountId": pl.String(),
    "keyMonths": pl.Decimal(38, 10),
    "keyCost": pl.Decimal(38, 10),
    "requests": pl.Int64(),
    "requestCost": pl.Decimal(38, 10),
    "totalCost": pl.Decimal(38, 10),
}


def lifecycle_events(frame: pl.DataFrame) -> pl.DataFrame:
    """Successful events that change what a key costs to store (a ReplicateKey names its replica)
    or when it can first be used (MATERIAL_IMPORTED), and one KEY_SPEC_SEEN row per key and key
    family that its calls revealed (`keyFamily`)."""
    kept = pl.col("eventName").is_in([*LIFECYCLE_EVENTS, MATERIAL_IMPORTED])
    events = frame.filter(pl.col("errorCode").is_null() & kept)
    events = events.with_columns(
        keyArn=pl.when(pl.col("eventName") == "ReplicateKey")
        .then(pl.col("replicaKeyArn"))
        .otherwise(pl.col("keyArn"))
    )
    events = events.filter(pl.col("keyArn").is_not_null()).select(list(LIFECYCLE_SCHEMA))
    return pl.concat([events, _families_seen(frame)])


def _families_seen(frame: pl.DataFrame) -> pl.DataFrame:
    # The eventID names the key and family, so the state keeps one row per pair however many
    # batches repeat it (its lifecycle table ignores a known eventID).
    seen = frame.filter(pl.col("keyFamily").is_not_null() & pl.col("keyArn").is_not_null())
    return (
        seen.group_by("keyArn", "keyFamily")
        .agg(pl.col("eventTime").min())
        .select(
            "keyArn",
            "eventTime",
            eventName=pl.lit(KEY_SPEC_SEEN),
            keySpec=pl.col("keyFamily"),
            keyManager=pl.lit(None, pl.String),
            eventID=pl.concat_str(pl.lit("keyspec:"), "keyArn", pl.lit(":"), "keyFamily"),
        )
        .cast(pl.Schema(LIFECYCLE_SCHEMA))
    )


@dataclass(frozen=True)
class Segment:
    """A run of billable clock hours [start_hour, end_hour) at one rotation count.

    `charged_hour` is set on the hours a CancelKeyDeletion restores (the waiting period, billed
    as if the deletion had never been scheduled): they are charged in the window holding that
    hour, the cancellation's, as no window before it saw the cancellation.
    """

    start_hour: int
    end_hour: int
    rotations: int
    charged_hour: int | None = None


def _billing_order(event: tuple[datetime, str]) -> tuple[datetime, int]:
    return event[0], _ORDER[event[1]]  # same-second events in lifecycle order


def billed_segments(events: Iterable[tuple[datetime, str]], billed_rotations: int) -> list[Segment]:
    """Billable hour runs of one key from its lifecycle events (time order not required).

    An hour is billed when the key was billable at any moment of it, at the highest rate of
    that hour; the key is billable in the second of the event that ends its billing (CloudTrail's
    resolution: an event at t happened within [t, t+1)). Keys pending deletion (and deleted keys)
    are not billed; a cancelled deletion bills its waiting period after all (AWS KMS pricing: as
    if never scheduled).
    """
    open_since: float | None = None
    restorable_from: int | None = None  # the first clock hour a CancelKeyDeletion bills after all
    rotations = 0
    segments: list[Segment] = []
    for when, name in _as_they_happened(sorted(events, key=_billing_order)):
        now = when.timestamp()
        if name in ("CreateKey", "ReplicateKey", "CancelKeyDeletion") and open_since is None:
            if name == "CancelKeyDeletion" and restorable_from is not None:
                _restore(segments, restorable_from, now, min(rotations, billed_rotations))
            open_since, restorable_from = now, None
        elif name == "RotateKey":
            if open_since is not None and rotations < billed_rotations:
                _close(segments, open_since, now, min(rotations, billed_rotations))
                open_since = now
            rotations += 1
        elif name in ("ScheduleKeyDeletion", "DeleteKey") and open_since is not None:
            billable_until = _end_of_second(now)
            _close(segments, open_since, billable_until, min(rotations, billed_rotations))
            # The run just closed billed the scheduling's hour: a cancel bills from the next one.
            open_since = None
            restorable_from = math.ceil(billable_until / 3600) if name == "ScheduleKeyDeletion" else None
        elif name == "DeleteKey":
            restorable_from = None  # the waiting period ran out: nothing left to cancel
        elif name == "ScheduleKeyDeletion" and restorable_from is None:
            # A key created before the logs: it existed, and a cancel bills from here, this hour
            # included (no run billed it).
            restorable_from = math.floor(now / 3600)
    if open_since is not None:
        _close(segments, open_since, math.inf, min(rotations, billed_rotations))
    return segments


def _as_they_happened(events: list[tuple[datetime, str]]) -> list[tuple[datetime, str]]:
    """`events` (in billing order) with the deletions of one second in the only order AWS allows.

    CloudTrail times have whole seconds, so a script that schedules a deletion, cancels it and
    schedules it again ties all three: in lifecycle order the cancel came last, and the key, pending
    deletion, was billed until it was deleted (or for ever, in a forecast). AWS refuses to schedule
    the deletion of a key already pending it, to rotate one pending it, and to cancel (or carry out)
    that of a key not pending: within a second, the event the key's state allows comes first.
    """
    ordered: list[tuple[datetime, str]] = []
    pending = False
    for _, tied in itertools.groupby(events, key=lambda event: event[0]):
        group = list(tied)
        while group:
            event = next((e for e in group if _allowed(e[1], pending)), group[0])
            group.remove(event)
            ordered.append(event)
            pending = event[1] == "ScheduleKeyDeletion" or (pending and event[1] not in _ENDS_PENDING)
    return ordered


def last_lifecycle_events(lifecycle: pl.DataFrame) -> dict[str, str]:
    """Each key's last lifecycle event (LIFECYCLE_EVENTS) as its storage is billed: the events of
    one second in the order AWS allows (`_as_they_happened`), so that what follows a key's state
    (the report's unused keys) agrees with its bill."""
    events = _events_by_key(lifecycle.filter(pl.col("eventName").is_in(LIFECYCLE_EVENTS)))
    return {key: _as_they_happened(sorted(pairs, key=_billing_order))[-1][1]
            for key, pairs in events.items() if key is not None}


_ENDS_PENDING = frozenset({"CreateKey", "ReplicateKey", "CancelKeyDeletion", "DeleteKey"})


def _allowed(name: str, pending: bool) -> bool:
    """Whether AWS takes `name` on a key that is (or is not) pending deletion. Nor does it rotate a
    key pending deletion: a rotation tied with the cancel came after it (cancel, enable, rotate in
    one second), where in lifecycle order the waiting period the cancel restores took its rate."""
    if name in ("ScheduleKeyDeletion", "RotateKey"):
        return not pending
    return pending if name in ("CancelKeyDeletion", "DeleteKey") else True


def _end_of_second(moment: float) -> float:
    """The end of the whole second holding `moment`: CloudTrail times have one-second resolution,
    so an event logged at 01:00:00 happened within [01:00:00, 01:00:01), in the hour 01:00."""
    return math.floor(moment) + 1


def _close(segments: list[Segment], start: float, end: float, rotations: int) -> None:
    start_hour = math.floor(start / 3600)
    end_hour = math.ceil(end / 3600) if end != math.inf else 2**62
    if segments and segments[-1].end_hour > start_hour:  # shared hour: the later, higher rate wins
        last = segments.pop()
        if last.start_hour < start_hour:
            segments.append(Segment(last.start_hour, start_hour, last.rotations))
    segments.append(Segment(start_hour, max(end_hour, start_hour), rotations))


def _restore(segments: list[Segment], start_hour: int, cancelled: float, rotations: int) -> None:
    # The waiting period's hours from `start_hour` (the scheduling hour was billed before it, but
    # for a key created before the logs) to the cancelling hour, billed by the run that starts there.
    end_hour = math.floor(cancelled / 3600)
    if end_hour > start_hour:
        segments.append(Segment(start_hour, end_hour, rotations, charged_hour=end_hour))


def price_classes(usage: pl.DataFrame, key_specs: pl.DataFrame) -> pl.DataFrame:
    """Add `keySpec` and `priceClass` to minute-level usage (unknown keys price as symmetric; a
    family seen in calls, `RSA_*` of unknown size included, as asymmetric)."""
    joined = usage.join(key_specs, on="keyArn", how="left")
    spec = pl.col("keySpec").fill_null("SYMMETRIC_DEFAULT")
    price_class = (
        pl.when(pl.col("eventName").is_in(_KEY_PAIR_OPERATIONS))
        .then(
            pl.when(pl.col("keyPairSpec").fill_null("").str.starts_with("RSA_"))
            .then(pl.lit("rsa_generate_data_key_pair"))
            .otherwise(pl.lit("ecc_generate_data_key_pair"))
        )
        .when(spec == "RSA_2048")
        .then(pl.lit("rsa_2048"))
        .when(pl.any_horizontal([spec.str.starts_with(p) for p in _ASYMMETRIC_PREFIXES]))
        .then(pl.lit("asymmetric"))
        .otherwise(pl.lit("symmetric"))
    )
    return joined.with_columns(priceClass=price_class)


def classed_requests(usage: pl.DataFrame, lifecycle: pl.DataFrame) -> pl.DataFrame:
    """The requests among usage rows (not the service events), each with its `priceClass`."""
    # The spec a CreateKey or ReplicateKey names wins over a family only seen in calls.
    specs = (
        lifecycle.filter(pl.col("keySpec").is_not_null())
        .sort(pl.col("eventName") == KEY_SPEC_SEEN, "keySpec")
        .group_by("keyArn")
        .agg(pl.col("keySpec").first())
    )
    return price_classes(usage.filter(billable_rows(lifecycle)), specs)


def billable_rows(lifecycle: pl.DataFrame) -> pl.Expr:
    """The usage rows that are requests, as the cost table counts them: BILLABLE, less the CreateKey
    of each key AWS made (`lifecycle` tells which). The one rule of what a request is: the report's
    principals figure counts the callers of these rows, beside its requests figure that sums them."""
    return BILLABLE & ~_created_by_aws(lifecycle)


def _created_by_aws(lifecycle: pl.DataFrame) -> pl.Expr:
    """The CreateKey rows no customer requested. AWS charges nothing for creating an AWS managed key
    (the service makes it on the account's first use), only for using it. A replica's CreateKey,
    logged in its Region with `invokedBy` kms.amazonaws.com, is KMS's doing for a ReplicateKey, the
    one request the caller pays for; usage keeps no invokedBy, but the ReplicateKey names the replica."""
    made_by_aws = ((pl.col("eventName") == "CreateKey") & (pl.col("keyManager") == "AWS")) | (
        pl.col("eventName") == "ReplicateKey")
    keys = lifecycle.filter(made_by_aws)["keyArn"].implode()
    return ((pl.col("eventName") == "CreateKey") & pl.col("keyArn").is_in(keys)).fill_null(False)


def request_counts(
    usage: pl.DataFrame | Iterable[pl.DataFrame], lifecycle: pl.DataFrame, free_tier: int, since: datetime | None,
    *, by_day: bool = False,
) -> pl.DataFrame:
    """Billable requests per key x calling account x price class, with free-tier requests removed;
    `by_day`: per UTC day too (a `day` column first; usage by minute).

    The free tier is per calling account and calendar month, for symmetric-class requests,
    granted in time order (then by key ARN): pass usage from the start of `since`'s month. Usage
    may come in parts, in time order (every minute of a part before the next part's), so that a
    long period's minute rows never sit in memory at once: each part's free tier starts where the
    parts before it left it.
    """
    by, schema = (["day", *_COUNTED_BY], _DAY_COUNTS_SCHEMA) if by_day else (_COUNTED_BY, _COUNTS_SCHEMA)
    counts = [pl.DataFrame(schema=schema), *part_request_counts(usage, lifecycle, free_tier, since, by_day=by_day)]
    return pl.concat(counts).group_by(by).agg(pl.col("requests").sum(), pl.col("billed").sum())


def part_request_counts(
    usage: pl.DataFrame | Iterable[pl.DataFrame], lifecycle: pl.DataFrame, free_tier: int, since: datetime | None,
    *, by_day: bool = False,
) -> Iterator[pl.DataFrame]:
    """`request_counts` of each part of `usage` in turn, each part's free tier starting where the
    parts before it left it: a part's counts are final for the days it holds whole, so a caller
    that wants each day's can take them a part at a time, never the period's at once."""
    parts = [usage] if isinstance(usage, pl.DataFrame) else usage
    by, schema = (["day", *_COUNTED_BY], _DAY_COUNTS_SCHEMA) if by_day else (_COUNTED_BY, _COUNTS_SCHEMA)
    earlier = pl.DataFrame(schema=_EARLIER_SCHEMA)
    for part in parts:
        rows = classed_requests(part, lifecycle).with_columns(free=pl.lit(0, pl.Int64))
        if free_tier > 0:
            rows, earlier = _apply_free_tier(rows, free_tier, earlier)
        if since is not None:
            rows = rows.filter(pl.col("minute") >= since)
        if by_day:
            rows = rows.with_columns(day=pl.col("minute").dt.date())
        yield rows.group_by(by).agg(
            requests=pl.col("count").sum(), billed=(pl.col("count") - pl.col("free")).sum()
        ).cast(pl.Schema(schema))


def _apply_free_tier(
    rows: pl.DataFrame, free_tier: int, earlier: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`rows` with each one's free requests, and `earlier` (symmetric requests per account and
    month in the parts before) with theirs added."""
    eligible = rows.filter(pl.col("priceClass") == "symmetric").with_columns(
        month=pl.col("minute").dt.truncate("1mo").cast(_MONTH)
    )
    eligible = eligible.join(earlier, on=["accountId", "month"], how="left", nulls_equal=True)
    order = ["accountId", "month", "minute", "keyArn", "eventName", "principalArn", "keyPairSpec"]
    eligible = eligible.sort(order, nulls_last=True).with_columns(
        before=(pl.col("count").cum_sum().over(["accountId", "month"]) - pl.col("count")
                + pl.col("earlier").fill_null(0))
    )
    eligible = eligible.with_columns(
        free=(pl.lit(free_tier, pl.Int64) - pl.col("before")).clip(0, None).clip(None, pl.col("count"))
    )
    these = eligible.group_by("accountId", "month").agg(earlier=pl.col("count").sum())
    now_earlier = pl.concat([earlier, these.cast(pl.Schema(_EARLIER_SCHEMA))]).group_by("accountId", "month").agg(
        pl.col("earlier").sum())
    rows = pl.concat([rows.filter(pl.col("priceClass") != "symmetric"), eligible.drop("month", "before", "earlier")])
    return rows, now_earlier


def cost_report(
    usage: pl.DataFrame | Iterable[pl.DataFrame], lifecycle: pl.DataFrame, prices: PriceTable,
    since: datetime | None, until: datetime, storage_until: datetime | None = None,
) -> pl.DataFrame:
    """Cost per key x account over [since, until): storage to the owner (up to `storage_until`
    when given: no later than now, where events are dated ahead), requests to the caller.
    `usage` may come in parts in time order (see `request_counts`)."""
    parts = [usage] if isinstance(usage, pl.DataFrame) else usage
    counts = request_counts(
        (part.filter(pl.col("minute") < until) for part in parts), lifecycle, prices.free_tier_requests, since
    )
    stored_until = min(until, storage_until or until)
    return priced(counts, storage_events(lifecycle, stored_until, storage_until), prices, since, stored_until)


def storage_horizon(until: datetime) -> int:
    """POSIX seconds where the clock hour holding the last instant before `until` ends: a window
    ending at `until` bills that hour whole (docs/metrics.md), so from all of its lifecycle events."""
    return math.ceil(until.timestamp() / 3600) * 3600


def storage_events(lifecycle: pl.DataFrame, until: datetime, storage_until: datetime | None = None) -> pl.DataFrame:
    """The lifecycle events the key storage of a window ending at `until` is billed from: those before
    its last clock hour ends, later than `until` too, but none from `storage_until` on (given where
    events are dated after now: they must not bill the hour of the last event before now)."""
    known = lifecycle.filter(pl.col("eventTime").dt.epoch("us") < storage_horizon(until) * 1_000_000)
    return known if storage_until is None else known.filter(pl.col("eventTime") < storage_until)


def priced(counts: pl.DataFrame, lifecycle: pl.DataFrame | KeyLifecycles, prices: PriceTable,
           since: datetime | None, storage_until: datetime) -> pl.DataFrame:
    """The cost frame of a window: `counts` (its `request_counts`) priced, and the storage of the
    keys in the clock hours that start in [since, storage_until) (`lifecycle`: prepared once, for
    windows priced one by one)."""
    lifecycles = lifecycle if isinstance(lifecycle, KeyLifecycles) else KeyLifecycles(lifecycle)
    totals: dict[tuple[str, str], list[Decimal | int]] = {}
    for key_arn, owner, months, cost in lifecycles.storage(prices, since, storage_until):
        totals.setdefault((key_arn, owner), [Decimal(0), Decimal(0), 0, Decimal(0)])[:2] = [months, cost]
    rows = counts.select(*_COUNTED_BY, "requests", "billed")  # a day's counts carry their `day` too
    for key_arn, account, price_class, requests, billed in rows.iter_rows():
        row = totals.setdefault((key_arn or "", account or ""), [Decimal(0), Decimal(0), 0, Decimal(0)])
        row[2] = int(row[2]) + requests
        row[3] = Decimal(row[3]) + billed * prices.per_request(price_class)  # exact: rounded once below
    for row in totals.values():
        row[3] = Decimal(row[3]).quantize(_ROW)
    return _cost_frame(totals)


class KeyLifecycles:
    """Each key's lifecycle events in billing order, read once from the lifecycle frame: an export
    prices every day of a long history, and working them out again for each day (a filter of the
    whole frame, the multi-Region rotations, a pass per key) took a quarter of a first export."""

    def __init__(self, lifecycle: pl.DataFrame) -> None:
        customer = lifecycle.filter(pl.col("eventName").is_in(LIFECYCLE_EVENTS) & _NAMES_ITS_OWNER)
        shared = _multi_region_rotations(customer)
        self._events = {
            str(key_arn): sorted(_key_events(str(key_arn), events, shared), key=_billing_order)
            for key_arn, events in _events_by_key(customer).items()
        }
        # POSIX seconds, as the clock hours: a window's last hour may end past the last datetime.
        self._times = {key_arn: [when.timestamp() for when, _ in events] for key_arn, events in self._events.items()}
        # AWS managed keys cost nothing to store, from the first event that says so.
        aws = customer.filter(pl.col("keyManager") == "AWS").group_by("keyArn").agg(pl.col("eventTime").min())
        self._aws_managed_since = {str(key_arn): when.timestamp() for key_arn, when in aws.iter_rows()}
        self._segments: dict[tuple[str, int, int], tuple[Segment, ...]] = {}

    def storage(self, prices: PriceTable, since: datetime | None,
                until: datetime) -> Iterable[tuple[str, str, Decimal, Decimal]]:
        """(key ARN, owner account, key-months, cost) of each key stored in the clock hours that
        start in [since, until), from its lifecycle events before the last of those hours ends (a
        later cancelled deletion bills its waiting period in the window its hour starts in, not before)."""
        # A clock hour belongs to the window its start lies in (as a minute's requests do), so
        # consecutive windows never both bill the hour a bound falls inside. That hour is billed whole,
        # so from all of its events, those at or after `until` too: the window starting at `until`
        # bills from the next hour on, and a key created at 20:35 had its 20:00 hour billed neither
        # by a window ending at 20:30 (or 20:35) nor by the one after it.
        known_until = storage_horizon(until)
        first = math.ceil(since.timestamp() / 3600) if since else _NEVER
        last = known_until // 3600
        if first > last:  # a window that ends before it starts stores nothing (it billed a negative amount)
            return
        for key_arn, times in self._times.items():
            known = bisect.bisect_left(times, known_until)
            aws_since = self._aws_managed_since.get(key_arn)
            if known == 0 or (aws_since is not None and aws_since < known_until):
                continue
            segments = self._billed(key_arn, known, prices.billed_rotations)
            # Rounded where the key's running totals stand at the window's bounds, not over the window:
            # windows side by side (the daily cost tables) then add up to the one that spans them, exactly.
            months_before, rated_before = _running_totals(segments, prices, first)
            months, rated = _running_totals(segments, prices, last)
            if months != months_before:
                yield (key_arn, key_arn.split(":")[4], _decimal(months) - _decimal(months_before),
                       _decimal(rated) - _decimal(rated_before))

    def _billed(self, key_arn: str, known: int, billed_rotations: int) -> tuple[Segment, ...]:
        """The billed segments of the key's first `known` events (the same for every day until
        its next event)."""
        cached = (key_arn, known, billed_rotations)
        if cached not in self._segments:
            self._segments[cached] = tuple(billed_segments(self._events[key_arn][:known], billed_rotations))
        return self._segments[cached]


@lru_cache(maxsize=4096)
def _running_totals(segments: tuple[Segment, ...], prices: PriceTable, hour: int) -> tuple[Fraction, Fraction]:
    """Key-months and their cost (exact) of `segments` billed before the clock hour `hour`. Kept
    for a few thousand keys: an export prices day after day, and a day's start is the day
    before's end, at which the key's totals (its segments unchanged) were just worked out."""
    months = rated = Fraction(0)
    for seg in segments:
        rate = prices.key_month + min(seg.rotations, prices.billed_rotations) * prices.rotation_month
        for share in _month_shares(_hours_before(seg, hour), prices.hours_per_month):
            months += share
            rated += share * Fraction(rate)
    return months, rated


def _multi_region_rotations(lifecycle: pl.DataFrame) -> dict[str, list[datetime]]:
    """Rotation times per multi-Region key (account:mrk-id): the primary's rotation gives every
    replica the new material too, and AWS prices each replica as a key of its own."""
    rotations = lifecycle.filter((pl.col("eventName") == "RotateKey") & pl.col("keyArn").str.contains(":key/mrk-"))
    shared: dict[str, set[datetime]] = {}
    for key_arn, when in rotations.select("keyArn", "eventTime").iter_rows():
        shared.setdefault(_multi_region_id(key_arn), set()).add(when)  # one rotation, however many Regions log it
    return {mrk: sorted(times) for mrk, times in shared.items()}


def _multi_region_id(key_arn: str) -> str:
    parts = key_arn.split(":")
    return f"{parts[4]}:{parts[5]}"  # account and key/mrk-…: the same in every Region


def _events_by_key(lifecycle: pl.DataFrame) -> dict[str | None, list[tuple[datetime, str]]]:
    """Each key's (time, event name) pairs, from one pass over the rows: an export prices every
    day of a long history, and a group_by iterated per day gathered one frame per key each time
    (most of a first export's time)."""
    events: dict[str | None, list[tuple[datetime, str]]] = {}
    for key_arn, when, name in lifecycle.select("keyArn", "eventTime", "eventName").iter_rows():
        events.setdefault(key_arn, []).append((when, name))
    return events


def _key_events(key_arn: str, own: list[tuple[datetime, str]],
                shared: dict[str, list[datetime]]) -> list[tuple[datetime, str]]:
    """One key's (time, event name) pairs; a multi-Region key's rotations are its family's."""
    if ":key/mrk-" not in key_arn:
        return own
    rotations = shared.get(_multi_region_id(key_arn), [])
    return [(when, name) for when, name in own if name != "RotateKey"] + [(when, "RotateKey") for when in rotations]


def _hours_before(seg: Segment, hour: int) -> tuple[int, int]:
    """The hours of `seg` billed before the clock hour `hour` (restored hours: all, once the hour
    that charges them is before it, or none)."""
    if seg.charged_hour is not None:
        return (seg.start_hour, seg.end_hour) if seg.charged_hour < hour else (0, 0)
    return seg.start_hour, min(seg.end_hour, hour)


def _month_shares(hours: tuple[int, int], hours_per_month: int) -> Iterable[Fraction]:
    """Key-months of the clock hours [start, end): each hour is 1/(hours of its UTC month),
    so a whole month is one key-month; or 1/hours_per_month when the price table fixes it."""
    start, end = hours
    if end <= start:
        return
    if hours_per_month:
        yield Fraction(end - start, hours_per_month)
        return
    first_start, first_end = _month_hours(start)
    if end <= first_end:
        yield Fraction(end - start, first_end - first_start)
        return
    last_start, last_end = _month_hours(end - 1)
    yield Fraction(first_end - start, first_end - first_start)
    yield Fraction(_month_number(last_start) - _month_number(first_end))  # whole months: one each
    yield Fraction(end - last_start, last_end - last_start)


def _month_number(hour: int) -> int:
    moment = datetime.fromtimestamp(hour * 3600, UTC)
    return moment.year * 12 + moment.month


def _month_hours(hour: int) -> tuple[int, int]:
    """[first hour, first hour of the next month) of the UTC calendar month holding `hour`."""
    moment = datetime.fromtimestamp(hour * 3600, UTC)
    first = int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()) // 3600
    return first, first + 24 * calendar.monthrange(moment.year, moment.month)[1]  # December 9999 too


def _decimal(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(_ROW)


def _cost_frame(totals: dict[tuple[str, str], list[Decimal | int]]) -> pl.DataFrame:
    rows = [
        {
            "keyArn": key or None,
            "accountId": account or None,
            "keyMonths": months,
            "keyCost": key_cost,
            "requests": requests,
            "requestCost": request_cost,
            "totalCost": Decimal(key_cost) + Decimal(request_cost),
        }
        for (key, account), (months, key_cost, requests, request_cost) in sorted(totals.items())
    ]
    return pl.DataFrame(rows, schema=COST_SCHEMA)
