"""The in-process detector's follower: every value of the event log once, in order, across
segments the writer starts while it follows."""

from __future__ import annotations

from pathlib import Path

from keytrail.cli.tail import follow_event_log
from keytrail.transport.segment_log import SegmentLog, event_log_dir


def _values(start: int, stop: int) -> list[bytes]:
    return [f"value-{n:03d}".encode() * 4 for n in range(start, stop)]


async def test_follow_reads_every_value_once_across_new_segments(tmp_path: Path) -> None:
    directory = event_log_dir(tmp_path)
    directory.mkdir(parents=True)
    log = SegmentLog(directory, segment_bytes=400, writable=True)
    log.append(_values(0, 25))
    log.sync()
    seen: list[bytes] = []
    idle_polls = 0
    async for values in follow_event_log(tmp_path, start=3, batch=7, idle_seconds=0.01):
        seen.extend(values)
        idle_polls += not values
        if len(seen) == 22:  # caught up: the writer goes on into new segments
            log.append(_values(25, 70))
            log.sync()
        if len(seen) == 67 or idle_polls > 50:
            break
    log.close()
    assert len(log.segment_bases()) > 5
    assert seen == _values(3, 70)
