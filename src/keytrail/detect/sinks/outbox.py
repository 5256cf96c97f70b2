"""What a hook still owes: the alarm states queued for it and not yet handled, kept on disk so that
a detector killed, or stopped while the hook was down, sends them when it starts again.

A restart announces nothing that `alarms.jsonl` holds, and a hook's queue is in memory: without
this file an alarm written to alarms.jsonl but not yet delivered to MQTT, Kafka or a webhook (the
broker down for a minute, a slow receiver, the drain at close cut off, a kill -9) never reached
that hook. One JSON line per change: `{"queued": <alarm JSON>}` when the alarm is queued for the
hook, `{"handled": alarmId, "rank": r, "count": n}` once the hook delivered it or gave up on it (its
retries spent, or failed on alone: logged, and the hook's dead-letter file holds it), or took it ahead
of its turn (behind a head the hook fails on: a restart before its turn must not send it again).
The file is emptied whenever the hook's queue is, so it holds what is in flight, not the history;
a queue that never empties (a hook back from an outage while new alarms keep coming) would let it
grow with every alarm, so it is rewritten with only what is owed whenever it holds more than twice that (and more than
COMPACT_LINES lines): it stays within about twice the hook's bounded queue. Best effort: a write
that fails (a full disk) is logged once and delivery goes on from memory.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path

from keytrail.detect.alarms import Alarm
from keytrail.owner_only import open_file, open_regular, remove_stale_temps, replace_whole, replace_whole_temps

__all__ = ["COMPACT_LINES", "Outbox", "warn_of_stale"]

log = logging.getLogger(__name__)

COMPACT_LINES = 1_000  # below this, a file is not worth rewriting


class Outbox:
    """The owed alarms of one hook, in `path` (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A kill (kill -9, power loss) mid-rewrite left its temp file, named for that run's pid, for good.
        remove_stale_temps(path.parent, replace_whole_temps(path))
        self.owed = _owed(path)  # what the previous run queued and the hook never handled, in order
        try:
            self._rewrite(self.owed)
        except OSError as exc:  # a full disk: the file keeps its lines, and reads the same next time
            log.error("%s: cannot rewrite (%s); kept as it is", path, exc)
        self._fd = open_file(path, os.O_WRONLY | os.O_APPEND)
        self._failing = False
        # What the file says is owed, in memory to rewrite it: the latest state queued of each
        # alarm not handled since, at most one per alarm in the hook's queue.
        self._pending = {alarm.alarm_id: alarm for alarm in self.owed}
        self._lines = len(self.owed)  # in the file

    def queued(self, alarm: Alarm) -> None:
        """The alarm is in the hook's queue."""
        self._pending[alarm.alarm_id] = alarm
        self._append({"queued": alarm.to_json()})
        self._compact_if_grown()  # a hook that is down takes no alarm, while updates of those waiting come

    def handled(self, alarm: Alarm, *, drained: bool) -> None:
        """The hook is done with the alarm; `drained`: its queue is empty, nothing is owed."""
        if drained:
            self._pending.clear()
            self._emptied()
            return
        pending = self._pending.get(alarm.alarm_id)
        if pending is not None and (pending.severity.rank, pending.count) <= (alarm.severity.rank, alarm.count):
            del self._pending[alarm.alarm_id]
        self._append({"handled": alarm.alarm_id, "rank": alarm.severity.rank, "count": alarm.count})
        self._compact_if_grown()

    def close(self) -> None:
        os.close(self._fd)

    def _append(self, entry: dict[str, object]) -> None:
        self._lines += 1
        self._write(lambda: os.write(self._fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode()))

    def _emptied(self) -> None:
        self._lines = 0
        self._write(lambda: os.ftruncate(self._fd, 0))  # O_APPEND: the next line starts the file again

    def _compact_if_grown(self) -> None:
        """Rewrite the file with only what is owed once it holds more than twice that (replaced
        whole: a crash leaves the old file or the new)."""
        if self._lines > max(COMPACT_LINES, 2 * len(self._pending)):
            self._lines = len(self._pending)
            self._write(self._replace)

    def _replace(self) -> None:
        self._rewrite(list(self._pending.values()))
        fd, self._fd = self._fd, open_file(self.path, os.O_WRONLY | os.O_APPEND)  # appends go to the new file
        os.close(fd)

    def _write(self, operation: Callable[[], object]) -> None:
        try:
            operation()
        except OSError as exc:
            if not self._failing:
                log.error("%s: cannot record the alarms this hook owes (%s); a restart before they are "
                          "delivered would not send them", self.path, exc)
                self._failing = True
            return
        self._failing = False

    def _rewrite(self, owed: list[Alarm]) -> None:
        """Keep only what is owed: the file does not carry the previous run's history on."""
        lines = "".join(json.dumps({"queued": a.to_json()}, separators=(",", ":")) + "\n" for a in owed)
        replace_whole(self.path, lines.encode())


def warn_of_stale(data_dir: Path, configured: Collection[Path]) -> None:
    """One warning per outbox in `data_dir` of a hook no longer configured that still holds alarms
    (what the hook was owed when it was removed, or when the detector last ran with it): no run
    reads it, and without a word its alarms would never be sent. docs/operations.md says what to do.
    An empty one, of a hook removed with nothing owed, holds nothing to lose and is passed over."""
    for path in sorted(set(data_dir.glob("alarm-outbox-*.jsonl")) - set(configured)):
        try:
            owed = len(_owed(path))
        except OSError as exc:  # unreadable (its mode changed by hand): still worth a word
            log.warning("%s: the outbox of a hook no longer configured, unreadable (%s)", path, exc)
            continue
        if owed:
            log.warning("%s holds %d alarm(s) owed to hook %s, which is no longer configured: they are not sent "
                        "(configure the hook again to send them at the next start, or move the file away; "
                        "alarms.jsonl has every alarm)", path, owed, path.name.removeprefix("alarm-outbox-")
                        .removesuffix(".jsonl"))


def _owed(path: Path) -> list[Alarm]:
    """The latest queued state of each alarm that no `handled` line covers, in the order queued."""
    queued: dict[str, Alarm] = {}
    handled: dict[str, tuple[int, int]] = {}
    try:  # without waiting, a regular file only: a FIFO named as an outbox held the detector's start for good
        with open(open_regular(path), encoding="utf-8", errors="replace") as file:
            text = file.read()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
            if "queued" in entry:
                alarm = Alarm.from_json(entry["queued"])
                queued[alarm.alarm_id] = alarm
            else:
                state = (int(entry["rank"]), int(entry["count"]))
                handled[entry["handled"]] = max(state, handled.get(entry["handled"], state))
        except (ValueError, KeyError, TypeError, RecursionError):  # a line cut short by a crash, or nested too deeply
            continue
    return [alarm for alarm_id, alarm in queued.items()
            if (alarm.severity.rank, alarm.count) > handled.get(alarm_id, (-1, 0))]
