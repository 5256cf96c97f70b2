"""`<data-dir>/alarm-dead-letter-<hook>.jsonl`: the alarms a hook gave up on, one JSON object a line.

An alarm lands here when its hook refused it (a webhook's 4xx but 408 and 429, or its 500, a record
Kafka will not take) after its attempts, or when the hook took the alarms behind it but kept
answering this one as if it were down (a receiver that chokes on that payload with a 503, a broker
that hangs up on it): see the dispatcher (`sinks/__init__.py`). The file is named by the hook as
its outbox is (`mqtt`, `kafka`, `webhook-<URL digest>`), so reordering or removing webhooks never
mixes one receiver's dead letters with another's, and each entry starts with the alarm's `alarmId`
and `count` (an alarm's id and count name one state of it), so `grep <alarmId>` finds it:

    {"alarmId": "…", "count": 3, "hook": "https://alerts.example.com/keytrail", "error": "HTTP 422",
     "attempts": 5, "failedAt": "2026-…Z", "alarm": {…the alarm's JSON…}}

A webhook's entry also carries `url` (the same as `hook`), as it always has.
"""

from __future__ import annotations

import json
import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from keytrail.detect.alarms import Alarm, format_time
from keytrail.owner_only import open_regular

__all__ = ["DeadLetters"]

log = logging.getLogger("keytrail.detect.sinks")


class DeadLetters:
    """The dead-letter file of one hook; `hook` is how entries and log lines name it (a webhook's
    URL without its credentials or query)."""

    def __init__(self, path: Path, hook: str, *, with_url: bool = False) -> None:
        self.path, self.hook = path, hook
        self._with_url = with_url

    def add(self, alarm: Alarm, error: str, attempts: int) -> None:
        """Append the alarm (owner-only file) and say so in one log line naming its alarmId."""
        entry: dict[str, object] = {"alarmId": alarm.alarm_id, "count": alarm.count, "hook": self.hook,
                                    **({"url": self.hook} if self._with_url else {}), "error": error,
                                    "attempts": attempts, "failedAt": format_time(datetime.now(UTC)),
                                    "alarm": alarm.to_json()}
        # Without waiting, a regular file only: written into, a FIFO in its place (whoever can write the
        # data dir can make one) held the hook, and every alarm queued behind, for a reader forever.
        with os.fdopen(open_regular(self.path, append=True), "a", encoding="utf-8") as file:
            file.write(json.dumps(entry, separators=(",", ":")) + "\n")
        log.warning("%s: gave up on alarm %s (%s); it is in %s", self.hook, alarm.alarm_id, error, self.path)
