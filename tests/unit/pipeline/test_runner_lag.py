"""Runner.lag: the source's own figure where it tells one, else the last batch's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

from keytrail.pipeline.query import state_dir
from keytrail.pipeline.runner import Batch, Runner
from tests.unit.detect.records import T0, event, key_arn


class _Rebalanced:
    """A consumer that read `p0` and `p1`, then lost `p1` in a rebalance: it tells the lag of `p0` only."""

    def __init__(self) -> None:
        self.assigned = {"p0": 4, "p1": 0}

    async def batches(self, start_at: Callable[[str], int]) -> AsyncIterator[Batch]:
        for partition in ("p0", "p1"):
            yield Batch(partition, (0,), records=[event("Decrypt", T0, key_arn(1))], source_end=10)
        del self.assigned["p1"]  # revoked: another consumer of the group reads it now

    def lag(self) -> dict[str, int]:
        return dict(self.assigned)

    async def commit(self, batch: Batch) -> None:
        return None

    async def rewind(self, partition: str, offset: int) -> None:
        return None


class _Silent(_Rebalanced):
    """A source that tells no lag of its own."""

    lag = None  # type: ignore[assignment]


async def test_a_partition_the_source_no_longer_reports_drops_out_of_the_lag(tmp_path: Path) -> None:
    """A revoked partition kept the lag of its last batch here (9, as of that fetch), for ever: its
    lag is another consumer's to tell, and the two summed counted the records twice."""
    runner = Runner(state_dir(tmp_path), _Rebalanced())
    await runner.run()
    assert runner.lag() == {"p0": 4}


async def test_without_a_figure_of_the_source_the_last_batchs_is_the_lag(tmp_path: Path) -> None:
    runner = Runner(state_dir(tmp_path), _Silent())
    await runner.run()
    assert runner.lag() == {"p0": 9, "p1": 9}
