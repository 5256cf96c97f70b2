"""The in-process consumer (what `keytrail serve` runs) follows the embedded log as it grows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import polars as pl
import pytest

from keytrail.audit import schema
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer, event_log_dir
from keytrail.pipeline.synthetic import SyntheticSettings, generate_events
from keytrail.transport import segment_log
from tests.unit.pipeline import reference

pytestmark = pytest.mark.integration


async def _wait_for(condition: object, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "consumer did not catch up"
        await asyncio.sleep(0.05)


async def test_following_consumer_serves_last_usage_prometheus_and_parquet(tmp_path: Path) -> None:
    events = list(generate_events(3000, SyntheticSettings(keys=30, seconds_per_event=20.0), seed=13))
    log = segment_log.SegmentLog(event_log_dir(tmp_path), writable=True)
    log.append([schema.encode(e) for e in events[:1000]])
    log.sync()
    consumer = MetricsConsumer(ConsumerSettings(tmp_path, follow=True, export_seconds=0.0))
    task = asyncio.create_task(consumer.run())
    await _wait_for(lambda: consumer.runner.stats.records >= 1000)
    log.append([schema.encode(e) for e in events[1000:]])  # the server keeps writing
    log.sync()
    await _wait_for(lambda: consumer.runner.stats.records >= 3000)
    consumer.stop()
    stats = await asyncio.wait_for(task, 30)
    log.close()

    assert stats.records == 3000
    used = reference.last_used(events)
    key = next(iter(used))[0]
    latest = max(v for (k, _), v in used.items() if k == key)
    answer = consumer.last_usage(key)
    assert answer is not None and (answer["Timestamp"], answer["CloudTrailEventId"]) == latest[:2]
    body = consumer.render_prometheus(spool_depth=0)
    assert 'keytrail_pipeline_consumer_lag{partition="segment-log"} 0' in body
    usage = pl.read_parquet(tmp_path / "metrics" / "usage" / "day=*" / "usage.parquet")
    assert usage["count"].sum() == len({e["eventID"] for e in events})


async def test_days_checkpointed_by_a_consumer_killed_before_its_export_are_exported_on_restart(
    tmp_path: Path,
) -> None:
    events = list(generate_events(2000, SyntheticSettings(keys=10, seconds_per_event=120.0), seed=3))
    first_day = min(e["eventTime"][:10] for e in events)
    log = segment_log.SegmentLog(event_log_dir(tmp_path), writable=True)
    log.append([schema.encode(e) for e in events if e["eventTime"][:10] == first_day])
    log.sync()
    settings = ConsumerSettings(tmp_path, follow=False, export_seconds=3600.0)
    # The runner alone checkpoints without the consumer's export: a process killed right after.
    await MetricsConsumer(settings).runner.run()
    log.append([schema.encode(e) for e in events if e["eventTime"][:10] != first_day])  # later days only
    log.sync()
    log.close()
    await MetricsConsumer(settings).run()

    usage = pl.read_parquet(tmp_path / "metrics" / "usage" / "day=*" / "usage.parquet")
    assert usage["count"].sum() == len({e["eventID"] for e in events})
    assert (tmp_path / "metrics" / "cost" / f"day={first_day}" / "cost.parquet").is_file()
