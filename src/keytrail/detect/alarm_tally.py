"""The alarms a detector raised or escalated, by rule and severity: `keytrail_alarms_total`.

A detector announces an alarm when it is raised, when it escalates, and again each time its count
or lastSeen moved (at the next tick, on close): the hooks need every state. Counted per state, one
alarm of a denial flood went up by one every tick, so "Alarms (24h)" showed hundreds for one alarm
and the alerts on a HIGH or CRITICAL alarm went on firing for its updates. The tally counts the
first state of an alarm and each rise of its severity, nothing else.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping

from keytrail.detect.alarms import Alarm
from keytrail.detect.severity import Severity

__all__ = ["REMEMBERED_ALARMS", "AlarmTally"]

#: The alarms whose severity the tally remembers, most recently announced first: a detector keeps
#: its open alarms only (their states come a tick apart), so one forgotten here has long been quiet.
REMEMBERED_ALARMS = 100_000


class AlarmTally:
    """Counts each alarm once as raised and once per escalation, by (rule, severity)."""

    def __init__(self, remembered: int = REMEMBERED_ALARMS) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._remembered = remembered
        self._told: OrderedDict[str, int] = OrderedDict()  # alarmId -> the rank of its severity counted

    def add(self, alarm_id: str, rule: str, severity: Severity) -> None:
        """Take one announced state of an alarm; count it if it is new or more severe than before."""
        told = self._told.get(alarm_id)
        self._told[alarm_id] = max(severity.rank, told if told is not None else -1)
        self._told.move_to_end(alarm_id)
        if len(self._told) > self._remembered:
            self._told.popitem(last=False)
        if told is None or severity.rank > told:
            self.counts[(rule, severity.value)] += 1

    def remember(self, ranks: Mapping[str, int]) -> None:
        """Take the alarms delivered before this start (alarmId -> its severity's rank, as
        `DetectorRunner.delivered_ranks` gives them) as counted: the tally starts from zero at each
        start, as Prometheus counters do, and an alarm open across a restart is counted again only
        if it escalates, not at its next update."""
        for alarm_id, rank in ranks.items():
            self._told[alarm_id] = rank
            self._told.move_to_end(alarm_id)
            if len(self._told) > self._remembered:
                self._told.popitem(last=False)

    def add_alarms(self, alarms: Iterable[Alarm]) -> None:
        """Take the alarm states a detector announced (a runner's feed or tick)."""
        for alarm in alarms:
            self.add(alarm.alarm_id, alarm.rule, alarm.severity)
