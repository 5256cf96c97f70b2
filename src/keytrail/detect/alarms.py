"""Alarms and their book: the same rule x key x principal (x scope, where a rule gives one) within
its window is one alarm.

A repeat updates that alarm's count, lastSeen and eventIds instead of raising a new one; the
severity rises with the count (the rule's thresholds) and never falls. An alarm is announced when
it is raised and when it escalates; other updates wait for `AlarmBook.pending()`.

A finding may stand for matching calls before its own that its rule held until they amounted to
an alarm (`Earlier`): the alarm counts them too, its firstSeen is the first of them, and their
event ids come first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from keytrail.detect.rules import Rule, RuleSet
from keytrail.detect.severity import Severity

if TYPE_CHECKING:
    from keytrail.detect.events import KmsEvent

__all__ = ["MAX_EVENT_IDS", "Alarm", "AlarmBook", "Earlier", "Finding", "caller_origin", "format_time"]

MAX_EVENT_IDS = 20  # the first events of an alarm are evidence enough; the count says the rest

#: Details that list every distinct value the alarm's findings gave (comma-separated, the first
#: MAX_GATHERED), not the latest finding's alone: an alarm folding 40 denied calls must still
#: name each address and access key they came from, which is what the responder acts on.
GATHERED_DETAILS = ("sourceIPAddresses", "accessKeyIds")
MAX_GATHERED = 10


def caller_origin(event: KmsEvent) -> dict[str, str]:
    """The GATHERED_DETAILS of one call, for the rules that send the responder after the caller:
    where it came from and with which access key (commas would split a value in two)."""
    origin = {}
    if event.source_ip:
        origin["sourceIPAddresses"] = event.source_ip.replace(",", " ")
    if event.access_key_id:
        origin["accessKeyIds"] = event.access_key_id.replace(",", " ")
    return origin


@dataclass(frozen=True, slots=True)
class Earlier:
    """The matching calls a rule held before a finding, until they amounted to an alarm
    (`key-reconnaissance`'s below `min_keys`): how many, when the first was made, the event ids of
    the first of them."""

    first_seen: datetime
    count: int
    event_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation a rule makes; the book turns findings into alarms."""

    rule: str
    time: datetime
    key_arn: str | None
    principal_arn: str | None
    summary: str
    recommendation: str
    event_id: str | None = None
    account_id: str | None = None
    region: str | None = None
    severity: Severity | None = None
    details: Mapping[str, str] = field(default_factory=dict)
    earlier: Earlier | None = None  # the calls held before this one that it stands for too
    # What tells this finding's alarm apart from others of its rule x key x principal, where those
    # do not: `unauthorized-decrypt`'s denials naming no key against its flood alarm (keyArn null
    # both), callers with no ARN (principalArn null) one from another. Not in the alarm or its id.
    scope: str | None = None

    @classmethod
    def on_event(cls, rule: str, event: KmsEvent, *, summary: str, recommendation: str,
                 severity: Severity | None = None, details: Mapping[str, str] | None = None,
                 key_arn: str | None = None, scope: str | None = None) -> Finding:
        """A finding about one event: its time, key (`key_arn`, else the event's), principal,
        account, region and id."""
        return cls(
            rule=rule, time=event.event_time, key_arn=key_arn or event.key_arn, principal_arn=event.principal_arn,
            event_id=event.event_id, account_id=event.account_id, region=event.region, severity=severity,
            summary=summary, recommendation=recommendation, details=details or {}, scope=scope,
        )


@dataclass(frozen=True, slots=True)
class Alarm:
    """An alarm as delivered to hooks; `to_json` gives the field names of schemas/alarm.avsc."""

    alarm_id: str
    rule: str
    severity: Severity
    key_arn: str | None
    principal_arn: str | None
    account_id: str | None
    region: str | None
    first_seen: datetime
    last_seen: datetime
    count: int
    summary: str
    event_ids: tuple[str, ...]
    recommendation: str
    details: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON form (Avro field names; times as ISO-8601 UTC strings)."""
        return {
            "alarmId": self.alarm_id,
            "rule": self.rule,
            "severity": self.severity.value,
            "keyArn": self.key_arn,
            "principalArn": self.principal_arn,
            "accountId": self.account_id,
            "region": self.region,
            "firstSeen": format_time(self.first_seen),
            "lastSeen": format_time(self.last_seen),
            "count": self.count,
            "summary": self.summary,
            "eventIds": list(self.event_ids),
            "recommendation": self.recommendation,
            "details": dict(self.details),
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Alarm:
        """Read the JSON form back (alarms.jsonl, MQTT and webhook payloads); ValueError for a
        document that is not one, a field of another type among them (epoch-millisecond times, as
        the Avro form has them): taken as it came, it raised later, or went out as no alarm."""
        if not isinstance(doc, Mapping):
            raise ValueError(f"not a JSON object: {doc!r}")
        details = doc.get("details") or {}
        if not isinstance(details, Mapping) or not all(isinstance(v, str) for v in details.values()):
            raise ValueError(f"details is not a map of strings: {details!r}")
        return cls(
            _text(doc, "alarmId"),
            _text(doc, "rule"),
            Severity(doc["severity"]),
            _optional_text(doc, "keyArn"),
            _optional_text(doc, "principalArn"),
            _optional_text(doc, "accountId"),
            _optional_text(doc, "region"),
            _read_time(_text(doc, "firstSeen")),
            _read_time(_text(doc, "lastSeen")),
            int(doc["count"]),
            _text(doc, "summary"),
            _texts(doc.get("eventIds") or []),
            _text(doc, "recommendation"),
            MappingProxyType(dict(details)),
        )


def format_time(moment: datetime) -> str:
    """ISO-8601 UTC with a `Z`, milliseconds only when there are any (CloudTrail style)."""
    moment = moment.astimezone(UTC)
    spec = "milliseconds" if moment.microsecond else "seconds"
    return moment.replace(tzinfo=None).isoformat(timespec=spec) + "Z"


def _read_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _text(doc: Mapping[str, Any], name: str) -> str:
    """The string field `name` of an alarm document (ValueError if it is anything else)."""
    value = doc[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string: {value!r}")
    return value


def _optional_text(doc: Mapping[str, Any], name: str) -> str | None:
    return None if doc.get(name) is None else _text(doc, name)


def _texts(values: Any) -> tuple[str, ...]:
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise ValueError(f"eventIds is not a list of strings: {values!r}")
    return tuple(values)


@dataclass(slots=True)
class _Open:
    """A live alarm the book is still adding to."""

    alarm_id: str
    first: Finding
    first_seen: datetime
    last_seen: datetime
    count: int
    floor: Severity
    severity: Severity
    event_ids: list[str]
    details: dict[str, str]
    finding: Finding
    # Continuing an alarm a previous run delivered (`AlarmBook.resume`): its findings up to this
    # time are in its count already, and the replay after the restart brings them again. Of those
    # of this very second (CloudTrail times have whole seconds), only the ones of `counted_ids`:
    # the run may have counted more of them than it delivered before it was killed. None: the
    # alarm lists only its first MAX_EVENT_IDS calls, so those of that second are taken as counted.
    counted_until: datetime | None = None
    counted_ids: frozenset[str] | None = None


Slot = tuple[str, str | None, str | None]  # rule x key x principal: what an alarm names of its slot


class AlarmBook:
    """Deduplicates findings into alarms, per rule x key x principal x scope within the rule's window."""

    def __init__(self, rules: RuleSet) -> None:
        self._rules = rules
        self._open: dict[tuple[str, str | None, str | None, str | None], _Open] = {}
        self._all: dict[str, _Open] = {}
        self._changed: set[str] = set()
        self._earlier: dict[Slot, list[Alarm]] = {}  # delivered by a previous run, not continued yet

    def resume(self, alarms: Iterable[Alarm]) -> None:
        """Alarms a previous run delivered (alarms.jsonl), for the replay after a restart to go on
        with rather than raise anew: retention may have deleted an open alarm's first events, and
        the first of those left would otherwise start an alarm of another id, paged again as new."""
        for alarm in alarms:
            if self._rules.enabled(alarm.rule):
                self._earlier.setdefault((alarm.rule, alarm.key_arn, alarm.principal_arn), []).append(alarm)

    def record(self, finding: Finding) -> Alarm | None:
        """Add a finding; returns the alarm when it is new or has just escalated, else None."""
        rule = self._rules[finding.rule]
        slot = (finding.rule, finding.key_arn, finding.principal_arn, finding.scope)
        entry = self._open.get(slot)
        if entry is None or finding.time - entry.last_seen > rule.window:
            entry = self._start(finding, rule)
            self._open[slot] = entry
            return self._snapshot(entry)
        if _counted_before(entry, finding):
            return None  # replayed: the previous run counted it
        before = entry.severity
        self._update(entry, finding, rule)
        self._changed.add(entry.alarm_id)
        return self._snapshot(entry) if entry.severity.rank > before.rank else None

    def holds(self, alarm_id: str) -> bool:
        """Whether the book still has this alarm (open, or its latest state not yet announced)."""
        return alarm_id in self._all

    def forget_closed(self, now: datetime) -> int:
        """Drop alarms whose window has passed and whose latest state was announced (a long-running
        detector keeps only open alarms); returns how many were dropped. That includes alarms no
        longer open, superseded by a new window of their slot: nothing updates them
        again, and `pending()` needs them only until their latest state is announced."""
        for slot, entry in list(self._open.items()):
            if now - entry.last_seen > self._rules[slot[0]].window and entry.alarm_id not in self._changed:
                del self._open[slot]
        live = {entry.alarm_id for entry in self._open.values()} | self._changed
        closed = [alarm_id for alarm_id in self._all if alarm_id not in live]
        for alarm_id in closed:
            del self._all[alarm_id]
        self._forget_earlier(now)
        return len(closed)

    def _forget_earlier(self, now: datetime) -> None:
        """Drop the previous run's alarms whose window has closed: no finding can continue them."""
        for slot, alarms in list(self._earlier.items()):
            window = self._rules[slot[0]].window
            alarms[:] = [alarm for alarm in alarms if now - alarm.last_seen <= window]
            if not alarms:
                del self._earlier[slot]

    def pending(self) -> list[Alarm]:
        """Alarms updated since they were last announced (count, lastSeen), then marks them announced."""
        alarms = [self._snapshot(self._all[alarm_id]) for alarm_id in sorted(self._changed)]
        self._changed.clear()
        return alarms

    def alarms(self) -> list[Alarm]:
        """Every alarm raised so far, in the order raised."""
        return [self._snapshot(entry) for entry in self._all.values()]

    def _start(self, finding: Finding, rule: Rule) -> _Open:
        earlier = self._earlier_of(finding, rule)
        entry = self._open_new(finding, rule) if earlier is None else self._go_on(earlier, finding, rule)
        self._all[entry.alarm_id] = entry
        return entry

    def _earlier_of(self, finding: Finding, rule: Rule) -> Alarm | None:
        """The previous run's alarm `finding` goes on with, taken out of those waiting: the one of
        the id it would raise (its first event was replayed), else one of its slot it falls within
        (from its firstSeen to a window after its lastSeen: the events before it were deleted)."""
        alarms = self._earlier.get((finding.rule, finding.key_arn, finding.principal_arn))
        if not alarms:
            return None
        own = alarm_id_for(finding)
        found = next((a for a in alarms if a.alarm_id == own), None) or next(
            (a for a in alarms if a.first_seen <= finding.time and finding.time - a.last_seen <= rule.window), None)
        if found is not None:
            alarms.remove(found)
        return found

    def _go_on(self, earlier: Alarm, finding: Finding, rule: Rule) -> _Open:
        """An entry for a previous run's alarm, as it delivered it, with `finding` added unless that
        run counted it already."""
        # What a finding stated, as far as the alarm shows it: the severity its count alone does not
        # explain (one the count reached says nothing of the finding the alarm tells of).
        stated = earlier.severity if earlier.severity.rank > rule.severity_for(earlier.count).rank else None
        told = Finding(rule=earlier.rule, time=earlier.first_seen, key_arn=earlier.key_arn,
                       principal_arn=earlier.principal_arn, summary=earlier.summary,
                       recommendation=earlier.recommendation, event_id=None, account_id=earlier.account_id,
                       region=earlier.region, severity=stated, details=earlier.details,
                       scope=finding.scope)
        entry = _Open(alarm_id=earlier.alarm_id, first=told, first_seen=earlier.first_seen,
                      last_seen=earlier.last_seen, count=earlier.count, floor=earlier.severity,
                      severity=earlier.severity, event_ids=list(earlier.event_ids), details=dict(earlier.details),
                      finding=told, counted_until=earlier.last_seen,
                      counted_ids=frozenset(earlier.event_ids) if len(earlier.event_ids) >= earlier.count else None)
        if not _counted_before(entry, finding):
            self._update(entry, finding, rule)
        return entry

    def _open_new(self, finding: Finding, rule: Rule) -> _Open:
        floor = finding.severity or rule.severity
        count, first_seen, event_ids = _calls(finding)
        entry = _Open(
            alarm_id=alarm_id_for(finding),
            first=finding,
            first_seen=first_seen,
            last_seen=finding.time,
            count=count,
            floor=floor,
            severity=rule.severity_for(count, floor),
            event_ids=event_ids[:MAX_EVENT_IDS],
            details=dict(finding.details),
            finding=finding,
        )
        return entry

    def _update(self, entry: _Open, finding: Finding, rule: Rule) -> None:
        count, first_seen, event_ids = _calls(finding)
        entry.count += count
        entry.first_seen = min(entry.first_seen, first_seen)
        entry.last_seen = max(entry.last_seen, finding.time)
        if finding.severity is not None:
            entry.floor = Severity.highest(entry.floor, finding.severity)
        entry.severity = Severity.highest(entry.severity, rule.severity_for(entry.count, entry.floor))
        entry.event_ids += event_ids[:MAX_EVENT_IDS - len(entry.event_ids)]
        gathered = _gathered(entry.details, finding.details)
        # A milder finding leaves the alarm telling why it is as severe as it is: a HIGH grant to an
        # outside role followed by a MEDIUM whole-account grant on the same key stays HIGH, and must
        # not then read as the MEDIUM one alone. It counts, its event is listed, its origin gathered.
        if not _milder(finding, entry.finding, rule):
            entry.details.update(finding.details)
            entry.finding = finding
        entry.details.update(gathered)

    @staticmethod
    def _snapshot(entry: _Open) -> Alarm:
        first, latest = entry.first, entry.finding
        return Alarm(
            alarm_id=entry.alarm_id,
            rule=first.rule,
            severity=entry.severity,
            key_arn=first.key_arn,
            principal_arn=first.principal_arn,
            account_id=first.account_id,
            region=first.region,
            first_seen=entry.first_seen,
            last_seen=entry.last_seen,
            count=entry.count,
            summary=latest.summary,
            event_ids=tuple(entry.event_ids),
            recommendation=latest.recommendation,
            details=MappingProxyType(dict(entry.details)),
        )


def _counted_before(entry: _Open, finding: Finding) -> bool:
    """Whether the previous run, whose alarm `entry` goes on with, counted `finding` already."""
    if entry.counted_until is None or finding.time > entry.counted_until:
        return False
    if finding.time < entry.counted_until or entry.counted_ids is None or finding.event_id is None:
        return True
    return finding.event_id in entry.counted_ids


def _calls(finding: Finding) -> tuple[int, datetime, list[str]]:
    """The calls a finding stands for: how many, the time of the first, their event ids in order."""
    own = [finding.event_id] if finding.event_id else []
    earlier = finding.earlier
    if earlier is None:
        return 1, finding.time, own
    return earlier.count + 1, min(earlier.first_seen, finding.time), [*earlier.event_ids, *own]


def _gathered(details: Mapping[str, str], new: Mapping[str, str]) -> dict[str, str]:
    """The GATHERED_DETAILS of an alarm's `details` with those of a new finding added."""
    gathered = {}
    for name in GATHERED_DETAILS:
        values = details[name].split(",") if details.get(name) else []
        for value in new[name].split(",") if new.get(name) else []:
            if value not in values and len(values) < MAX_GATHERED:
                values.append(value)
        if values:
            gathered[name] = ",".join(values)
    return gathered


def _milder(finding: Finding, told: Finding, rule: Rule) -> bool:
    """Whether `finding` is less severe than the finding the alarm tells of, a finding that states
    no severity having the rule's. (Findings stating none used to update the alarm always: a HIGH
    DisableKey of a key in use then read as the MEDIUM Encrypt refused after it, and a CRITICAL
    ScheduleKeyDeletion as a later DisableKey, their details mixed.)"""
    return (finding.severity or rule.severity).rank < (told.severity or rule.severity).rank


def alarm_id_for(finding: Finding) -> str:
    """A deterministic id: the same events give the same alarm ids offline and live."""
    anchor = finding.event_id or format_time(finding.time)
    text = "|".join((finding.rule, finding.key_arn or "", finding.principal_arn or "", anchor))
    digest = hashlib.sha256(text.encode()).hexdigest()
    return f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
