"""SegmentLogSource.lag: the event log's end less the offset the persisted state covers, as serve's
consumer child's lag (`keytrail.cli.node._pipeline_metrics`) and a Kafka consumer's."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from keytrail.audit import schema
from keytrail.pipeline.query import MetricsStore, state_dir
from keytrail.pipeline.runner import Batch, Runner
from keytrail.pipeline.segment_source import SEGMENT_LOG_PARTITION, SegmentLogSource
from keytrail.transport.segment_log import SegmentLog
from tests.support.waits import eventually
from tests.unit.detect.records import T0, event, key_arn


def _write(directory: Path, first: int, count: int) -> None:
    log = SegmentLog(directory, writable=True)
    log.append([schema.encode(event("Decrypt", T0 + timedelta(seconds=n), key_arn(1)))
                for n in range(first, first + count)])
    log.sync()
    log.close()


async def _read(source: SegmentLogSource, start: int) -> list[Batch]:
    return [batch async for batch in source.batches(lambda partition: start)]


async def test_records_read_are_lag_until_their_batch_is_committed(tmp_path: Path) -> None:
    """The runner commits a batch once the state covering it is on disk: until then the queries
    (usage, cost, /metrics' counts) do not have it. The lag was 0 from the read on."""
    _write(tmp_path, 0, 20)
    source = SegmentLogSource(tmp_path, max_records=7)
    batches = await _read(source, start=3)
    assert source.lag() == {SEGMENT_LOG_PARTITION: 17}  # read from 3, nothing checkpointed
    await source.commit(batches[0])
    assert source.lag() == {SEGMENT_LOG_PARTITION: 10}
    await source.commit(batches[-1])  # the runner commits a partition's last batch only
    assert source.lag() == {SEGMENT_LOG_PARTITION: 0}


async def test_a_rewind_to_the_offset_another_owner_persisted_is_covered(tmp_path: Path) -> None:
    _write(tmp_path, 0, 20)
    source = SegmentLogSource(tmp_path)
    await _read(source, start=0)
    await source.rewind(SEGMENT_LOG_PARTITION, 15)  # the runner's StaleBatchError: the state on disk covers 15
    assert source.lag() == {SEGMENT_LOG_PARTITION: 5}


async def test_a_log_read_from_its_start_again_is_covered_by_nothing_of_the_old_trail(tmp_path: Path) -> None:
    """The state covers offsets of another trail: none of the new one's records until they are
    checkpointed; the old trail's last batch, committed after the log began again, covers none."""
    _write(tmp_path, 0, 20)
    source = SegmentLogSource(tmp_path)
    batches = await _read(source, start=30)  # the log ends at 20, below the state's 30
    assert batches[0].began_again
    assert source.lag() == {SEGMENT_LOG_PARTITION: 20}
    await source.commit(Batch(SEGMENT_LOG_PARTITION, range(25, 30)))  # of the old trail
    assert source.lag() == {SEGMENT_LOG_PARTITION: 20}
    await source.commit(batches[-1])
    assert source.lag() == {SEGMENT_LOG_PARTITION: 0}


async def test_the_runners_lag_counts_records_staged_until_the_checkpoint(tmp_path: Path) -> None:
    """What serve's in-process consumer (--dev-clock) and `consume --metrics-port` show."""
    _write(tmp_path, 0, 50)
    data = tmp_path / "data"
    source = SegmentLogSource(tmp_path, follow=True, poll_seconds=0.01)
    # No checkpoint by time in this test: the 100th record staged is the one that makes it.
    runner = Runner(state_dir(data), source, checkpoint_records=100, checkpoint_seconds=3600)
    running = asyncio.create_task(runner.run())
    try:
        await eventually(lambda: runner.stats.records == 50, what="the consumer reading the first 50 records")
        assert runner.lag() == {SEGMENT_LOG_PARTITION: 50}  # read, staged, not checkpointed
        assert MetricsStore(data).offsets() == {SEGMENT_LOG_PARTITION: 0}
        _write(tmp_path, 50, 50)
        await eventually(lambda: MetricsStore(data).offsets() == {SEGMENT_LOG_PARTITION: 100},
                         what="the checkpoint at the 100th record")
        await eventually(lambda: runner.lag() == {SEGMENT_LOG_PARTITION: 0}, what="the lag back to 0")
    finally:
        source.stop.set()
        await asyncio.wait_for(running, 30)
