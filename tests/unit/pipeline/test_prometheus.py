"""GET /metrics body: request counts by operation and outcome, denials, cost, lag, spool depth."""

from __future__ import annotations

import asyncio
from pathlib import Path

from keytrail.pipeline.prometheus import render_histogram, render_prometheus
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Runner
from keytrail.pipeline.sources import RecordsSource
from keytrail.pipeline.synthetic import generate_events


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_render_prometheus_counts_match_the_events(tmp_path: Path) -> None:
    events = list({e["eventID"]: e for e in generate_events(1500, seed=8)}.values())
    asyncio.run(Runner(state_dir(tmp_path), RecordsSource(events)).run())
    text = render_prometheus(MetricsStore(tmp_path), lag={"segment-log": 7}, spool_depth=3)
    samples = _samples(text)
    decrypt_ok = sum(1 for e in events if e["eventName"] == "Decrypt" and not e.get("errorCode"))
    assert samples['keytrail_kms_requests_total{operation="Decrypt",outcome="success"}'] == decrypt_ok
    denied = sum(1 for e in events if e["eventName"] == "Encrypt" and e.get("errorCode") == "AccessDenied")
    assert samples['keytrail_kms_denied_requests_total{operation="Encrypt"}'] == denied
    assert samples['keytrail_pipeline_consumer_lag{partition="segment-log"}'] == 7
    assert samples["keytrail_audit_spool_depth"] == 3
    assert any(k.startswith("keytrail_kms_cost_usd{account=") and v > 0 for k, v in samples.items())
    assert "# TYPE keytrail_kms_requests_total counter" in text


def test_empty_store_renders_families_without_samples(tmp_path: Path) -> None:
    text = render_prometheus(MetricsStore(tmp_path))
    assert "# TYPE keytrail_kms_cost_usd gauge" in text
    assert not _samples(text)


def test_histogram_buckets_are_cumulative_and_end_with_inf() -> None:
    text = render_histogram("x_seconds", "Some latency.", (0.001, 0.01), [2, 0, 1], 0.5)
    samples = _samples(text)
    assert samples == {'x_seconds_bucket{le="0.001"}': 2, 'x_seconds_bucket{le="0.01"}': 2,
                       'x_seconds_bucket{le="+Inf"}': 3, "x_seconds_sum": 0.5, "x_seconds_count": 3}
    assert "# TYPE x_seconds histogram" in text
