"""Derived report figures: the time window for charts, the month's cost projection, unused keys."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from decimal import Decimal

import polars as pl

from keytrail.pipeline.cost import (
    MATERIAL_IMPORTED,
    classed_requests,
    cost_report,
    last_lifecycle_events,
    storage_events,
)
from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, OpenEnd
from keytrail.pipeline.usage import USAGE_SCHEMA

__all__ = [
    "COST_FIELDS", "LAST_USED_FIELDS", "PROJECTION_SCHEMA", "USAGE_FIELDS", "ahead_note", "choose_window",
    "cost_projection", "keys_going", "mark_unused", "month_bounds", "storage_note",
]

#: CONTRACTS.md §4 field lists (the `--format json` objects of `keytrail usage | cost | last-used`).
USAGE_FIELDS = ["keyArn", "eventName", "principalArn", "accountId", "count", "errorCount"]
COST_FIELDS = ["keyArn", "accountId", "keyMonths", "keyCost", "requests", "requestCost", "totalCost"]
LAST_USED_FIELDS = ["keyArn", "lastUsedTime", "lastUsedOperation", "lastUsedPrincipalArn", "eventId"]

_MONEY = pl.Decimal(38, 10)
_ROW = Decimal("1e-10")
PROJECTION_SCHEMA: dict[str, pl.DataType] = {
    "accountId": pl.String(), "month": pl.String(), "asOf": pl.Datetime("us", "UTC"),
    "monthToDateCost": _MONEY, "projectedKeyCost": _MONEY, "projectedRequestCost": _MONEY,
    "projectedCost": _MONEY,
}


def choose_window(start: datetime | None, end: datetime | None) -> str:
    """The chart resolution for a span: minutes up to 6 hours, hours up to 14 days, else days."""
    if start is None or end is None:
        return "day"
    span = end - start
    if span <= timedelta(hours=6):
        return "minute"
    return "hour" if span <= timedelta(days=14) else "day"


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    """[first instant of the month of `moment`, first instant of the next month) (December 9999,
    whose next month no datetime can hold, ends at the last instant there is)."""
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if (start.year, start.month) == (9999, 12):
        return start, datetime.max.replace(tzinfo=start.tzinfo)
    following = (start + timedelta(days=32)).replace(day=1)
    return start, following


def cost_projection(store: MetricsStore, prices: PriceTable, as_of: datetime | None,
                    end: OpenEnd | None = None) -> pl.DataFrame:
    """Per calling/owning account: cost so far this month and projected to the month's end.

    The month is the one of the last instant before `as_of` (exclusive: `--until 2026-11-01`
    projects October, which is then whole). Key storage is projected exactly (keys as they stand
    at the end of the as-of hour, which the cost so far bills whole, billed to the month's end: a
    lifecycle event after it is not foreseen, and a key pending deletion bills nothing more);
    requests are extrapolated at the month's rate so far. `end`: where the trail ends, without --until.
    """
    if as_of is None:
        return pl.DataFrame(schema=PROJECTION_SCHEMA)
    start, month_end = month_bounds(as_of - timedelta(microseconds=1))
    so_far = _per_account(store.cost(prices, start, as_of, end))
    # The keys as the cost so far bills them: by every event of the as-of hour (billed whole), but
    # none dated after now where the as-of time is the trail's end (`end`, no --until).
    standing = storage_events(store.lifecycle(), as_of, end.storage if end else None)
    full_month = _per_account(cost_report(pl.DataFrame(schema=USAGE_SCHEMA), standing, prices, start, month_end))
    elapsed = Decimal((as_of - start).total_seconds())
    scale = Decimal((month_end - start).total_seconds()) / elapsed if elapsed > 0 else Decimal(0)
    requests = _projected_requests(store, prices, start, as_of, scale)
    zero = (Decimal(0), Decimal(0), Decimal(0))
    rows = []
    for account in sorted(set(so_far) | set(full_month)):
        total = so_far.get(account, zero)[0]
        key_cost = full_month.get(account, zero)[1]
        request_cost = requests.get(account, Decimal(0)).quantize(_ROW)
        rows.append({"accountId": account or None, "month": start.strftime("%Y-%m"), "asOf": as_of,
                     "monthToDateCost": total, "projectedKeyCost": key_cost,
                     "projectedRequestCost": request_cost, "projectedCost": key_cost + request_cost})
    return pl.DataFrame(rows, schema=PROJECTION_SCHEMA)


def _projected_requests(store: MetricsStore, prices: PriceTable, start: datetime, as_of: datetime,
                        scale: Decimal) -> dict[str, Decimal]:
    """accountId → request cost of the month, its request counts per price class extrapolated
    first and the free tier taken off those (scaling the cost so far would project a month still
    inside the free tier as free, however far past it the month's pace will go)."""
    usage = store.billable_requests(start, as_of)  # summed as the files stream by: callers are not needed
    counts = classed_requests(usage, store.lifecycle()).group_by("accountId", "priceClass").agg(pl.col("count").sum())
    costs: dict[str, Decimal] = {}
    for account, price_class, count in counts.iter_rows():
        projected = count * scale
        if price_class == "symmetric":
            projected = max(Decimal(0), projected - prices.free_tier_requests)
        key = str(account or "")
        costs[key] = costs.get(key, Decimal(0)) + projected * prices.per_request(price_class)
    return costs


def _per_account(cost: pl.DataFrame) -> dict[str, tuple[Decimal, Decimal, Decimal]]:
    """accountId → (totalCost, keyCost, requestCost)."""
    sums = cost.group_by("accountId").agg(pl.col("totalCost", "keyCost", "requestCost").sum())
    return {str(account or ""): (Decimal(total or 0), Decimal(keys or 0), Decimal(requests or 0))
            for account, total, keys, requests in sums.iter_rows()}


def mark_unused(last_used: pl.DataFrame, as_of: datetime | None, unused_days: int,
                lifecycle: pl.DataFrame | None = None, tracking_start: datetime | None = None,
                never: Collection[str] = ()) -> pl.DataFrame:
    """The §4 last-used columns plus `unused`: not used in `unused_days` before `as_of`, or never
    used though it has existed that long (since its CreateKey/ReplicateKey, else since
    `tracking_start`, as the unused-key rule counts); not a key that `lifecycle` shows deleted or
    pending deletion by then (it costs nothing more), nor an AWS managed one (free to keep, and no one
    can delete it), nor one of `never` (known otherwise to be no key to delete)."""
    frame = last_used.select(LAST_USED_FIELDS)
    if as_of is None:
        unused = pl.col("lastUsedTime").is_null()
    elif as_of - datetime.min.replace(tzinfo=as_of.tzinfo) < timedelta(days=unused_days):
        unused = pl.lit(False)  # the limit lies before year 1: nothing has been idle that long
    else:
        limit = as_of - timedelta(days=unused_days)
        frame = frame.join(_made(lifecycle, as_of), on="keyArn", how="left")
        idle_since = pl.col("made").fill_null(pl.lit(tracking_start, pl.Datetime("us", "UTC")))
        # Idle the whole limit or longer, used or not, as the unused-key rule counts (`now - since >=
        # limit`): a key last used exactly `unused_days` before was not, beside one made then that was.
        unused = pl.when(pl.col("lastUsedTime").is_null()).then(idle_since.fill_null(limit) <= limit)
        unused = unused.otherwise(pl.col("lastUsedTime") <= limit)
    going = [*keys_going(lifecycle, as_of), *_aws_managed(lifecycle)] if lifecycle is not None else []
    going += list(never)
    marked = frame.with_columns(unused=unused & ~pl.col("keyArn").is_in(going))
    return marked.select(*LAST_USED_FIELDS, "unused").sort(
        ["unused", "lastUsedTime", "keyArn"], descending=[True, False, False], nulls_last=False)


def _made(lifecycle: pl.DataFrame | None, as_of: datetime) -> pl.DataFrame:
    """keyArn → made: when the input saw the key created (its CreateKey or ReplicateKey), or, made
    without key material (EXTERNAL), first imported after it, before `as_of`: it could not be used
    before, and the unused-key rule counts it idle from then too. One still waiting for material
    counts from its creation, as a disabled key does: it costs $1 a month all the same."""
    if lifecycle is None:
        return pl.DataFrame(schema={"keyArn": pl.String(), "made": pl.Datetime("us", "UTC")})
    created = lifecycle.filter(pl.col("eventName").is_in(["CreateKey", "ReplicateKey"]))
    created = created.group_by("keyArn").agg(made=pl.col("eventTime").min())
    imports = lifecycle.filter((pl.col("eventName") == MATERIAL_IMPORTED) & (pl.col("eventTime") < as_of))
    imports = imports.select("keyArn", imported="eventTime")
    first = created.join(imports, on="keyArn", how="left").group_by("keyArn").agg(
        pl.col("made").first(), imported=pl.col("imported").filter(pl.col("imported") >= pl.col("made")).min())
    return first.select("keyArn", made=pl.coalesce("imported", "made"))


def keys_going(lifecycle: pl.DataFrame, as_of: datetime | None) -> list[str]:
    """Keys whose last lifecycle event before `as_of` is ScheduleKeyDeletion or DeleteKey: the
    cost model stops billing them there (pipeline/cost.py), and CancelKeyDeletion brings one back."""
    # The events of one second in the order AWS allows, as billed: in lifecycle order a deletion
    # scheduled, cancelled and scheduled again within a second ended on the cancel, the key listed
    # unused (one to delete) while its cost showed it pending deletion.
    events = lifecycle if as_of is None else lifecycle.filter(pl.col("eventTime") < as_of)
    last = last_lifecycle_events(events)
    return sorted(key for key, name in last.items() if name in ("ScheduleKeyDeletion", "DeleteKey"))


def _aws_managed(lifecycle: pl.DataFrame) -> list[str]:
    """Keys whose CreateKey says `KeyManager` AWS: the unused-key rule skips them, as should the report."""
    return lifecycle.filter(pl.col("keyManager") == "AWS").get_column("keyArn").unique().to_list()


def storage_note(count: int) -> str:
    """Why some keys show requests but no storage: the events never saw them made."""
    return (f"note: {count} key{'s' * (count != 1)} in these figures {'were' if count != 1 else 'was'} not created "
            "in the events (made before they start, or AWS managed): storage is counted only from a cancelled "
            "deletion on, so most show none; a customer managed key costs $1 per key-month")


def ahead_note(end: OpenEnd) -> str:
    """Why key storage stops before the latest event: some are dated after now."""
    def stamp(moment: datetime | None) -> str:
        return f"{moment:%Y-%m-%dT%H:%M:%SZ}" if moment else "?"

    many = end.late != 1
    return (f"note: {end.late} event{'s' * many} {'are' if many else 'is'} dated after now ({stamp(end.now)}), "
            f"the latest {stamp(end.latest)} (a skewed clock, a bad imported record): {'their' if many else 'its'} "
            "requests are counted, but key storage is billed only up to the last event before now; "
            "--until T bills it up to T")
