"""`<data-dir>/alarms.jsonl`: every announced alarm, one JSON object per line (always on).

It is the alarms' record of last resort, the one hook without a broker or endpoint that can be
down, so a write that fails (a full disk) is retried until the line is in the file, never dropped:
the alarms behind it wait in the sink's queue, which has no bound (`never_drops`: a tick may
announce more alarms at once than a hook's queue holds). The outage is logged when it starts and ends.
Each line goes to the file the path names when it is begun, as logging's WatchedFileHandler does:
one moved away (log rotation) or deleted while the detector runs is made again, not written on
where nobody reads it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

from keytrail.detect.alarms import Alarm
from keytrail.owner_only import open_regular

__all__ = ["JsonlSink", "read_alarms"]

log = logging.getLogger(__name__)


class JsonlSink:
    """Appends alarms to a JSON-lines file; the last line of an alarmId is its latest state."""

    never_drops = True  # the dispatcher queues every alarm for it, without bound

    def __init__(self, path: Path, backoff: tuple[float, float] = (0.5, 30.0)) -> None:
        self.path = path
        self.name = str(path)  # how the dispatcher's log lines call it
        self.backoff = backoff  # first and longest wait between attempts at a failed write
        # Without waiting, a regular file only: opened as it came, a FIFO put in its place (whoever
        # can write the data dir can make one) held the detector's start for good.
        self._fd = open_regular(path, append=True)
        self._failing = False
        # A line cut short by a crash is ended before the next one, so it stays one unreadable line.
        self._pending_newline = _ends_torn(self._fd)

    async def deliver(self, alarm: Alarm) -> None:
        line = (json.dumps(alarm.to_json(), separators=(",", ":")) + "\n").encode()
        pending: memoryview | None = None  # what is left of the line once begun in a file
        delay = self.backoff[0]
        while pending is None or pending:
            try:
                pending = await asyncio.to_thread(self._write, line, pending)
            except OSError as exc:
                if not self._failing:
                    log.error("%s: cannot append alarm %s (%s); retrying until it can", self.path, alarm.alarm_id, exc)
                    self._failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
        if self._failing:
            log.warning("%s: alarms are written again", self.path)
            self._failing = False

    def _write(self, line: bytes, pending: memoryview | None) -> memoryview:
        """Write what the file system takes of `pending`, the rest of `line` (None: all of it, begun
        in the file the path names now); what it did not take (a write cut short)."""
        if pending is None:
            self._follow_path()
            pending = memoryview((b"\n" if self._pending_newline else b"") + line)
        left = pending[os.write(self._fd, pending):]
        self._pending_newline = False
        return left

    def _follow_path(self) -> None:
        """Reopen the path if it no longer names the open file (moved away or deleted): the
        operator's rotation must not leave the alarms in the old file, or a deleted one."""
        try:
            named = os.stat(self.path)
        except FileNotFoundError:
            named = None
        opened = os.fstat(self._fd)
        if named is not None and (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino):
            return
        fd = open_regular(self.path, append=True)  # an OSError (a FIFO there): retried by `deliver`
        os.close(self._fd)
        self._fd = fd
        self._pending_newline = _ends_torn(fd)

    async def aclose(self) -> None:
        os.close(self._fd)


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def read_alarms(path: Path) -> dict[str, Alarm]:
    """The latest state of each alarm in an alarms.jsonl file, by alarmId. A line that does not
    parse (cut short by a crash) is skipped with a warning. Read a line at a time: the file keeps
    every update of every alarm (an alarm open for months adds a line at each tick its count
    changed), and read whole it took the detector's start twice its size in memory."""
    latest: dict[str, Alarm] = {}
    if not path.exists():
        return latest
    with open(open_regular(path), encoding="utf-8", errors="replace") as lines:  # a FIFO: named, not waited on
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                alarm = Alarm.from_json(json.loads(line))
            except (ValueError, KeyError, TypeError, RecursionError) as exc:  # RecursionError: nested past json's reach
                log.warning("%s line %d is not an alarm (%s); skipped", path, number, exc)
                continue
            latest[alarm.alarm_id] = alarm
    return latest
