"""A plain-Python reference for usage, last-used and cost: slow, obvious, independent of polars."""

from __future__ import annotations

import calendar
import math
from collections import Counter, defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from typing import Any

from keytrail.pipeline.prices import PriceTable

CRYPTO = {
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
    "Sign",
    "Verify",
    "GenerateMac",
    "VerifyMac",
    "DeriveSharedSecret",
    "Encapsulate",
    "Decapsulate",
}
ROW = Decimal("1e-10")


def unique(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for event in events:
        if event["eventID"] not in seen:
            seen.add(event["eventID"])
            out.append(event)
    return out


def when(event: dict[str, Any]) -> datetime:
    return datetime.strptime(event["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def principal(event: dict[str, Any]) -> str | None:
    identity = event["userIdentity"]
    if identity.get("type") == "AssumedRole":
        return identity["sessionContext"]["sessionIssuer"]["arn"]
    return identity.get("arn") or identity.get("invokedBy")


def usage(events: list[dict[str, Any]]) -> dict[tuple[Any, ...], tuple[int, int]]:
    counts: Counter[tuple[Any, ...]] = Counter()
    errors: Counter[tuple[Any, ...]] = Counter()
    for e in unique(events):
        key = (
            when(e).replace(second=0),
            e["resources"][0]["ARN"],
            principal(e),
            e["userIdentity"]["accountId"],
            e["eventName"],
        )
        counts[key] += 1
        errors[key] += 1 if e.get("errorCode") else 0
    return {k: (counts[k], errors[k]) for k in counts}


def last_used(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[datetime, str, str]]:
    """(key, principal) -> (time, eventID, operation) of the latest use: same second, later in the list."""
    return {pair: use[1:] for pair, use in _latest_uses(events).items()}


def last_used_per_key(events: list[dict[str, Any]]) -> dict[str, tuple[datetime, str, str, str]]:
    """key -> (time, eventID, operation, principal) of the key's latest use by anyone."""
    best: dict[str, tuple[tuple[datetime, int], datetime, str, str, str]] = {}
    for (key, who), (rank, *use) in _latest_uses(events).items():
        if key not in best or rank > best[key][0]:
            best[key] = (rank, *use, who)
    return {key: value[1:] for key, value in best.items()}


def _latest_uses(events: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """(key, principal) -> ((time, position), time, eventID, operation); a repeat keeps its first position."""
    best: dict[tuple[str, str], tuple[Any, ...]] = {}
    seen: set[str] = set()
    for position, e in enumerate(events):
        if e["eventID"] in seen:
            continue
        seen.add(e["eventID"])
        if e.get("errorCode") or e["eventName"] not in CRYPTO:
            continue
        keys = [r["ARN"] for r in e["resources"]][: 2 if e["eventName"] == "ReEncrypt" else 1]
        rank = (when(e), position)
        for key in keys:
            current = best.get((key, principal(e)))
            if current is None or rank > current[0]:
                best[(key, principal(e))] = (rank, when(e), e["eventID"], e["eventName"])
    return best


def price_class(event: dict[str, Any], specs: dict[str, str]) -> str:
    if event["eventName"].startswith("GenerateDataKeyPair"):
        pair = event["requestParameters"]["keyPairSpec"]
        return "rsa_generate_data_key_pair" if pair.startswith("RSA") else "ecc_generate_data_key_pair"
    spec = specs.get(event["resources"][0]["ARN"], "SYMMETRIC_DEFAULT")
    if spec == "RSA_2048":
        return "rsa_2048"
    return "asymmetric" if spec.split("_")[0] in ("RSA", "ECC", "ML", "SM2") else "symmetric"


def cost(
    events: list[dict[str, Any]], prices: PriceTable, until: datetime
) -> dict[tuple[str, str], dict[str, Any]]:
    """Brute force: walk every billable clock hour of every key; count every request."""
    events = sorted(unique(events), key=lambda e: (when(e), ORDER.get(e["eventName"], 9)))
    # Every hour that starts before `until` is billed whole, so by all of its events (those after
    # `until` too); requests count up to `until`.
    hour_end = math.ceil(until.timestamp() / 3600) * 3600
    lifecycle = [e for e in events if when(e).timestamp() < hour_end]
    events = [e for e in events if when(e) < until]
    rows: dict[tuple[str, str], dict[str, Any]] = defaultdict(
        lambda: {"months": Fraction(0), "rated": Fraction(0), "requests": 0, "requestCost": Decimal(0)}
    )
    specs = {
        e["resources"][0]["ARN"]: e["responseElements"]["keyMetadata"]["KeySpec"]
        for e in events
        if e["eventName"] == "CreateKey" and not e.get("errorCode")
    }
    for key, hours in _hour_rates(lifecycle, prices, until).items():
        rows[(key, key.split(":")[4])]["months"] = sum((_month_share(h, prices) for h in hours), Fraction(0))
        rows[(key, key.split(":")[4])]["rated"] = sum(
            (_month_share(h, prices) * Fraction(rate) for h, rate in hours.items()), Fraction(0)
        )
    billed: Counter[tuple[str, str, str]] = Counter()
    used_free: Counter[tuple[str, str]] = Counter()
    for e in sorted(events, key=_free_tier_order):  # the documented grant order of the free tier
        if e["eventName"] in ("RotateKey", "DeleteKey"):
            continue
        account, key, cls = e["userIdentity"]["accountId"], e["resources"][0]["ARN"], price_class(e, specs)
        rows[(key, account)]["requests"] += 1
        month = (account, when(e).strftime("%Y-%m"))
        if cls == "symmetric" and used_free[month] < prices.free_tier_requests:
            used_free[month] += 1
            continue
        billed[(key, account, cls)] += 1
    for (key, account, cls), count in billed.items():
        rows[(key, account)]["requestCost"] += (count * prices.per_request(cls)).quantize(ROW)
    return {
        k: {
            "keyMonths": _money(v["months"]),
            "keyCost": _money(v["rated"]),
            "requests": v["requests"],
            "requestCost": v["requestCost"],
        }
        for k, v in rows.items()
    }


def _month_share(hour: int, prices: PriceTable) -> Fraction:
    """One clock hour in key-months: 1 / the hours of its calendar month (UTC), unless fixed."""
    if prices.hours_per_month:
        return Fraction(1, prices.hours_per_month)
    moment = datetime.fromtimestamp(hour * 3600, UTC)
    return Fraction(1, calendar.monthrange(moment.year, moment.month)[1] * 24)


def _money(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(ROW)


def _free_tier_order(e: dict[str, Any]) -> tuple[str, ...]:
    """Free requests go in time order by minute, then key, operation, principal, key pair spec."""
    pair = (e.get("requestParameters") or {}).get("keyPairSpec") or ""
    return (
        when(e).strftime("%Y-%m-%dT%H:%M"),
        e["resources"][0]["ARN"],
        e["eventName"],
        principal(e) or "",
        pair,
    )


ORDER = {
    "CreateKey": 0,
    "ReplicateKey": 1,
    "RotateKey": 2,
    "ScheduleKeyDeletion": 3,
    "CancelKeyDeletion": 4,
    "DeleteKey": 5,
}


def _hour_rates(
    events: list[dict[str, Any]], prices: PriceTable, until: datetime
) -> dict[str, dict[int, Decimal]]:
    state: dict[str, dict[str, Any]] = {}
    rates: dict[str, dict[int, Decimal]] = defaultdict(dict)
    end_hour = math.ceil(until.timestamp() / 3600)

    def bill(key: str, start: float, end: float) -> None:
        rate = (
            prices.key_month + min(state[key]["rotations"], prices.billed_rotations) * prices.rotation_month
        )
        for hour in range(math.floor(start / 3600), min(math.ceil(end / 3600), end_hour)):
            rates[key][hour] = max(rates[key].get(hour, Decimal(0)), rate)

    for e in events:
        if e.get("errorCode") or e["eventName"] not in ORDER:
            continue
        key, now, name = e["resources"][0]["ARN"], when(e).timestamp(), e["eventName"]
        if name == "CreateKey" or (name == "CancelKeyDeletion" and key not in state):
            state[key] = {"since": now, "rotations": 0}  # a cancelled deletion proves a billable key
        elif key not in state:
            if name == "ScheduleKeyDeletion":  # created before the events: a cancel bills from here on
                state[key] = {"since": None, "rotations": 0, "scheduled": now}
            continue
        elif name == "RotateKey":
            if state[key]["since"] is not None:
                bill(key, state[key]["since"], now)
                state[key]["since"] = now
            state[key]["rotations"] += 1
        elif name in ("ScheduleKeyDeletion", "DeleteKey") and state[key]["since"] is not None:
            # Whole-second times: the event happened within [now, now + 1), the key billable until then.
            bill(key, state[key]["since"], now + 1)
            state[key]["since"] = None
            state[key]["scheduled"] = now if name == "ScheduleKeyDeletion" else None
        elif name == "CancelKeyDeletion" and state[key]["since"] is None:
            if state[key].get("scheduled") is not None:  # billed as if never scheduled
                bill(key, state[key]["scheduled"], now)
            state[key]["since"], state[key]["scheduled"] = now, None
    for key, s in state.items():
        if s["since"] is not None:
            bill(key, s["since"], until.timestamp())
    return rates
