"""`<data-dir>/alarms.jsonl`: every announced alarm, one JSON object per line (always on)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from keytrail.detect.alarms import Alarm

__all__ = ["JsonlSink", "read_alarms"]


class JsonlSink:
    """Appends alarms to a JSON-lines file; the last line of an alarmId is its latest state."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    async def deliver(self, alarm: Alarm) -> None:
        line = json.dumps(alarm.to_json(), separators=(",", ":")) + "\n"
        await asyncio.to_thread(self._write, line)

    def _write(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()

    async def aclose(self) -> None:
        self._file.close()


def read_alarms(path: Path) -> dict[str, Alarm]:
    """The latest state of each alarm in an alarms.jsonl file, by alarmId."""
    latest: dict[str, Alarm] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                alarm = Alarm.from_json(json.loads(line))
                latest[alarm.alarm_id] = alarm
    return latest
