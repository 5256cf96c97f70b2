"""Prometheus text exposition (format 0.0.4) of the pipeline's metrics, for GET /metrics."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

import polars as pl

from keytrail.pipeline.prices import PriceTable
from keytrail.pipeline.query import MetricsStore, OpenEnd

__all__ = ["CONTENT_TYPE", "MetricsExposition", "cost_by_account", "render_family", "render_histogram",
           "render_prometheus"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_DENIED = frozenset({"AccessDenied", "AccessDeniedException"})


def render_prometheus(
    store: MetricsStore,
    *,
    prices: PriceTable | None = None,
    lag: Mapping[str, int] | None = None,
    spool_depth: int | None = None,
    costs: Mapping[str, Decimal] | None = None,
    ahead: int | None = None,
) -> str:
    """Request counts by operation and outcome, denied calls, cost accrued, events dated after now,
    consumer lag, spool depth.

    `costs` and `ahead` (from `cost_by_account` and the `OpenEnd` it used, possibly cached) save
    recomputing the cost on every scrape.
    """
    lines: list[str] = []
    _requests(lines, store.outcomes())
    _family(lines, "keytrail_kms_cost_usd", "gauge", "Cost accrued since tracking start, USD, per account.")
    if costs is None or ahead is None:
        end = store.open_end()
        costs, ahead = cost_by_account(store, prices or PriceTable(), end), end.late
    lines.extend(_sample("keytrail_kms_cost_usd", total, account=a) for a, total in sorted(costs.items()))
    _family(lines, "keytrail_pipeline_events_after_now", "gauge",
            "Events counted that are dated after now: their requests are billed, key storage is not billed past now.")
    if costs or ahead:  # a sample once events are counted, as the cost's (0 then: alert on > 0)
        lines.append(_sample("keytrail_pipeline_events_after_now", ahead))
    _family(lines, "keytrail_pipeline_consumer_lag", "gauge", "Records not yet consumed, per partition.")
    lag_items = sorted((lag or {}).items())
    lines.extend(_sample("keytrail_pipeline_consumer_lag", n, partition=p) for p, n in lag_items)
    if spool_depth is not None:
        _family(lines, "keytrail_audit_spool_depth", "gauge", "Audit records in the spool not yet shipped.")
        lines.append(_sample("keytrail_audit_spool_depth", spool_depth))
    return "\n".join(lines) + "\n"


class MetricsExposition:
    """`render_prometheus` over one store for repeated scrapes: the cost is recomputed at most
    once a minute (it reads every partition's usage)."""

    def __init__(self, store: MetricsStore, prices: PriceTable, cost_seconds: float = 60.0) -> None:
        self.store = store
        self.prices = prices
        self.cost_seconds = cost_seconds
        self._costs: tuple[float, dict[str, Decimal], int] | None = None

    def render(self, lag: Mapping[str, int], spool_depth: int | None = None) -> str:
        if self._costs is None or time.monotonic() - self._costs[0] > self.cost_seconds:
            end = self.store.open_end()
            self._costs = (time.monotonic(), cost_by_account(self.store, self.prices, end), end.late)
        _, costs, ahead = self._costs
        return render_prometheus(self.store, lag=lag, spool_depth=spool_depth, costs=costs, ahead=ahead)


def _requests(lines: list[str], outcomes: Mapping[tuple[str, str], int]) -> None:
    name = "keytrail_kms_requests_total"
    _family(lines, name, "counter", "KMS calls by operation and outcome (error code).")
    for (operation, code), count in sorted(outcomes.items()):
        lines.append(_sample(name, count, operation=operation, outcome=code or "success"))
    denied: dict[str, int] = {}
    for (operation, code), count in outcomes.items():
        if code in _DENIED:
            denied[operation] = denied.get(operation, 0) + count
    name = "keytrail_kms_denied_requests_total"
    _family(lines, name, "counter", "KMS calls denied by authorization.")
    lines.extend(_sample(name, n, operation=op) for op, n in sorted(denied.items()))


def cost_by_account(store: MetricsStore, prices: PriceTable, end: OpenEnd | None = None) -> dict[str, Decimal]:
    """Total cost in USD per account since tracking start, up to `end` (default: the store's
    `open_end()`: key storage not billed past now); empty before any event."""
    if store.time_bounds()[1] is None:
        return {}
    per_account = store.cost(prices, end=end).group_by("accountId").agg(pl.col("totalCost").sum())
    return {account or "": Decimal(total) for account, total in per_account.iter_rows()}


def render_family(name: str, kind: str, text: str, samples: Iterable[tuple[Mapping[str, str], object]]) -> str:
    """One metric family in text format, for metrics other parts of a node own."""
    lines: list[str] = []
    _family(lines, name, kind, text)
    lines.extend(_sample(name, value, **labels) for labels, value in samples)
    return "\n".join(lines) + "\n"


def render_histogram(name: str, text: str, bounds: Sequence[float], counts: Sequence[int], total: float) -> str:
    """One histogram family: `counts[i]` observations fell at or under `bounds[i]` (and above the
    bound before), the last count above every bound; `total` is the sum of the observations."""
    lines: list[str] = []
    _family(lines, name, "histogram", text)
    cumulative = list(itertools.accumulate(counts))
    lines.extend(_sample(f"{name}_bucket", n, le=f"{bound:g}") for bound, n in zip(bounds, cumulative, strict=False))
    lines += [_sample(f"{name}_bucket", cumulative[-1], le="+Inf"), _sample(f"{name}_sum", total),
              _sample(f"{name}_count", cumulative[-1])]
    return "\n".join(lines) + "\n"


def _family(lines: list[str], name: str, kind: str, text: str) -> None:
    lines.extend((f"# HELP {name} {text}", f"# TYPE {name} {kind}"))


def _sample(name: str, value: object, **labels: str) -> str:
    if not labels:
        return f"{name} {value}"
    rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return f"{name}{{{rendered}}} {value}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
