"""`key-reconnaissance`: one principal reading the metadata of many keys within the window.

Enumeration comes before an attack: which keys exist, who may use them (policies, grants), which
sign. A principal's key-metadata calls are counted per distinct key over a sliding window; at
`min_keys` keys it raises, MEDIUM once `min_denied` of those keys refused it. The calls made before
that, on the keys still within the window, are held (per key: how many, the first one's time and
event id) and handed to the alarm with the call that reaches `min_keys` (`Earlier`): its count,
firstSeen and eventIds start at the enumeration's first call, not at its 20th key.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import NamedTuple

from keytrail.detect.alarms import GATHERED_DETAILS, MAX_EVENT_IDS, MAX_GATHERED, Earlier, Finding, caller_origin
from keytrail.detect.checks import LatestTime, caller_id, caller_name, caller_scope, expected_caller
from keytrail.detect.deny import DENIED_CODES
from keytrail.detect.events import KmsEvent
from keytrail.detect.ledger import UNCONFIRMED_KEYS
from keytrail.detect.rules import Rule
from keytrail.detect.severity import Severity

__all__ = ["METADATA_OPERATIONS", "KeyReconnaissance"]

METADATA_OPERATIONS = frozenset({
    "DescribeKey", "GetKeyPolicy", "GetKeyRotationStatus", "GetPublicKey", "ListGrants", "ListKeyPolicies",
    "ListResourceTags",
})
# The keys one principal's survey remembers, the least recently called let go first: a principal
# enumerating random key ARNs must not grow the detector without bound (the ledger's bound).
MAX_SURVEYED_KEYS = UNCONFIRMED_KEYS

_RECOMMENDATION = (
    "Confirm that {principal} is an inventory or compliance tool; if so, add it to allow_principals. If "
    "not, treat it as enumeration before an attack: find where its credentials are used "
    "(details.sourceIPAddresses and accessKeyIds) and rotate them."
)


class _Surveyed(NamedTuple):
    """One key of a survey: its last call, whether a call was denied, and the calls on it held
    for an alarm not raised yet (how many, the first one's time and event id)."""

    last: datetime
    denied: bool
    held: int = 0
    held_since: datetime | None = None
    held_event: str | None = None


@dataclass(slots=True)
class _Survey:
    """One principal's metadata calls within the window: key -> what `_Surveyed` says, in the
    order last called; event name -> last call; the origins of the calls held (GATHERED_DETAILS)."""

    keys: OrderedDict[str, _Surveyed] = field(default_factory=OrderedDict)
    names: dict[str, datetime] = field(default_factory=dict)
    denied_keys: int = 0
    held: int = 0  # calls held over all keys
    held_origins: dict[str, list[str]] = field(default_factory=dict)

    def add(self, key: str, name: str, at: datetime, denied: bool) -> None:
        before = self.keys.get(key)
        if before is None or at >= before.last:
            # Kept in the order last called, which `expire` reads oldest first: a late call (a
            # slower partition) leaves its key where its last call put it.
            self.keys.pop(key, None)
            before = before or _Surveyed(at, False)
        self.keys[key] = before._replace(last=max(at, before.last), denied=before.denied or denied)
        if denied and not before.denied:
            self.denied_keys += 1
        self.names[name] = max(at, self.names.get(name, at))
        if len(self.keys) > MAX_SURVEYED_KEYS:
            self._drop_oldest()

    def hold(self, key: str, at: datetime, event_id: str | None, origin: dict[str, str],
             window: timedelta) -> None:
        """Keep a call on `key` (just added) for the alarm it may yet be part of. A key read again
        and again stays in the survey for good: once its held calls span more than the window,
        they start again from this one (an application reading one key all day, then 19 more,
        put the day's calls on the alarm, its firstSeen a day before its window)."""
        surveyed = self.keys[key]
        if surveyed.held_since is not None and at - surveyed.held_since > window:
            self.held -= surveyed.held
            surveyed = _Surveyed(surveyed.last, surveyed.denied)
        first = surveyed.held_since is None or at < surveyed.held_since
        self.keys[key] = surveyed._replace(held=surveyed.held + 1, held_since=at if first else surveyed.held_since,
                                           held_event=event_id if first else surveyed.held_event)
        self.held += 1
        for name, value in origin.items():
            values = self.held_origins.setdefault(name, [])
            if value not in values and len(values) < MAX_GATHERED:
                values.append(value)

    def release(self) -> tuple[Earlier | None, dict[str, list[str]]]:
        """The calls held, for the alarm they now amount to, and their origins; none held after."""
        if not self.held:
            return None, {}
        held = [surveyed for surveyed in self.keys.values() if surveyed.held]
        held.sort(key=lambda surveyed: surveyed.held_since or surveyed.last)
        firsts = [surveyed.held_event for surveyed in held if surveyed.held_event][:MAX_EVENT_IDS - 1]
        earlier = Earlier(held[0].held_since or held[0].last, self.held, tuple(firsts))
        for key, surveyed in self.keys.items():
            if surveyed.held:
                self.keys[key] = _Surveyed(surveyed.last, surveyed.denied)
        origins, self.held, self.held_origins = self.held_origins, 0, {}
        return earlier, origins

    def expire(self, now: datetime, window: timedelta) -> None:
        while self.keys and now - next(iter(self.keys.values())).last > window:
            self._drop_oldest()
        for name, last in list(self.names.items()):
            if now - last > window:
                del self.names[name]

    def _drop_oldest(self) -> None:
        _, dropped = self.keys.popitem(last=False)
        if dropped.denied:
            self.denied_keys -= 1
        self.held -= dropped.held  # its calls are no longer within the window, or no longer kept
        if not self.held:
            self.held_origins = {}


class KeyReconnaissance:
    """Per principal, the distinct keys whose metadata it read within the window."""

    rule_id = "key-reconnaissance"
    event_names = METADATA_OPERATIONS

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self._min_keys = int(rule.param("min_keys"))
        self._min_denied = int(rule.param("min_denied"))
        self._surveys: dict[str, _Survey] = {}  # caller (`caller_id`) -> its survey
        self._read = LatestTime()  # of the calls surveyed

    def observe(self, event: KmsEvent) -> list[Finding]:
        key = event.judged_key_arn
        if key is None or expected_caller(event, self.rule.parameters):
            return []
        at = event.event_time
        self._read.saw(at)
        survey = self._surveys.setdefault(caller_id(event), _Survey())
        survey.add(key, event.event_name, at, event.error_code in DENIED_CODES)
        survey.expire(at, self.rule.window)
        if len(survey.keys) < max(self._min_keys, 1):
            survey.hold(key, at, event.event_id, caller_origin(event), self.rule.window)
            return []
        return [self._finding(event, survey, *survey.release())]

    def tick(self, now: datetime) -> list[Finding]:
        if (as_of := self._read.as_of(now)) is None:
            return []
        for principal, survey in list(self._surveys.items()):
            survey.expire(as_of, self.rule.window)
            if not survey.keys:
                del self._surveys[principal]  # a principal that read a key once long ago costs nothing
        return []

    def surveyed(self) -> int:
        """Principal x key entries kept."""
        return sum(len(survey.keys) for survey in self._surveys.values())

    def _finding(self, event: KmsEvent, survey: _Survey, earlier: Earlier | None,
                 origins: dict[str, list[str]]) -> Finding:
        """The finding of one call at `min_keys` keys or more, standing also for the calls held
        before it (`earlier`), whose `origins` join its own."""
        denied = survey.denied_keys >= self._min_denied
        who = caller_name(event)
        return Finding(
            rule=self.rule_id, time=event.event_time, key_arn=None, principal_arn=event.principal_arn,
            event_id=event.event_id,
            account_id=event.account_id, region=event.region, severity=Severity.MEDIUM if denied else None,
            summary=f"{who} read the metadata of {len(survey.keys)} keys within {_duration(self.rule.window)} "
            f"({survey.denied_keys} refused it)",
            recommendation=_RECOMMENDATION.format(principal=who),
            details={"keyCount": str(len(survey.keys)), "deniedKeyCount": str(survey.denied_keys),
                     "eventNames": ",".join(sorted(survey.names))} | _joined(origins, caller_origin(event)),
            earlier=earlier,
            scope=caller_scope(event),  # callers with no ARN are one survey each, and so one alarm each
        )


def _joined(origins: dict[str, list[str]], own: dict[str, str]) -> dict[str, str]:
    """The GATHERED_DETAILS of the calls held and of the finding's own call, the held ones first."""
    joined = {}
    for name in GATHERED_DETAILS:
        values = list(origins.get(name, []))
        if own.get(name) and own[name] not in values and len(values) < MAX_GATHERED:
            values.append(own[name])
        if values:
            joined[name] = ",".join(values)
    return joined


def _duration(window: timedelta) -> str:
    seconds = int(window.total_seconds())
    return f"{seconds // 3600}h" if seconds % 3600 == 0 else f"{seconds}s"
