"""The metrics consumer `serve --dev-clock` runs in its own process: any failure of it, not only a
state file it cannot write, is said in one ERROR line with the exception, and it is restarted from
its last checkpoint after the backoff serve restarts its consumer child with (a child that raises
exits, is logged and restarted). An unexpected exception ended it without a word, while serve
served on with usage, cost and GetKeyLastUsage frozen, and exited 0."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from keytrail.children import ChildSpec
from keytrail.cli.node import _consume_in_process
from keytrail.pipeline.consumer import ConsumerSettings, MetricsConsumer
from keytrail.pipeline.runner import Runner


async def test_an_unexpected_failure_is_logged_once_and_the_consumer_restarted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    runs: list[Runner] = []
    restarted = asyncio.Event()
    real_run = Runner.run

    async def fails_once(runner: Runner) -> Any:
        runs.append(runner)
        if len(runs) == 1:
            raise KeyError("eventID")  # a bug of the consumer's, no full disk
        restarted.set()
        return await real_run(runner)

    monkeypatch.setattr(Runner, "run", fails_once)
    consumer = MetricsConsumer(ConsumerSettings(data_dir=tmp_path, export_seconds=None))
    with caplog.at_level(logging.WARNING, logger="keytrail"):
        task = asyncio.create_task(_consume_in_process(consumer))
        await asyncio.wait_for(restarted.wait(), 10)
        assert not task.done()  # it consumes on, after the backoff
        consumer.stop()
        await asyncio.wait_for(task, 10)
    assert runs[1] is not runs[0]  # started over from its last checkpoint, as a restarted child would
    [line] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert line.getMessage() == (f"metrics consumer failed: KeyError: 'eventID'; restarting in "
                                 f"{ChildSpec.first_backoff:.1f} s")
    assert line.exc_info is not None and isinstance(line.exc_info[1], KeyError)  # its traceback: a bug to fix
