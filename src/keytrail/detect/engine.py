"""The detector: CloudTrail KMS records in, alarms out; time only from events or an injected clock."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from keytrail.clock import Clock
from keytrail.detect.alarms import Alarm, AlarmBook, Finding
from keytrail.detect.checks import Check
from keytrail.detect.checks.deletion import KeyDeletionInUse
from keytrail.detect.checks.newcomer import NewPrincipalOnKey
from keytrail.detect.checks.permissive import OrganizationOf, PermissiveKey, no_organization
from keytrail.detect.checks.recon import KeyReconnaissance
from keytrail.detect.checks.rotation import RotationDisabled
from keytrail.detect.checks.spike import UsageSpike
from keytrail.detect.checks.unauthorized import UnauthorizedDecrypt
from keytrail.detect.checks.unused import UnusedKey
from keytrail.detect.events import KmsEvent, read_kms_event
from keytrail.detect.ledger import KeyLedger
from keytrail.detect.rules import RuleSet

__all__ = ["Detector"]

log = logging.getLogger(__name__)

_SEEN_EVENT_IDS = 200_000  # at-least-once delivery repeats recent events, not old ones
_EVENT_NAMES = 256  # KMS has ~60 operations; a stream inventing names does not grow the memo


class Detector:
    """Runs every enabled rule over events; `process` and `tick` return the alarms to announce
    (raised or escalated; `tick` adds the updates of open alarms)."""

    def __init__(
        self,
        rules: RuleSet | None = None,
        clock: Clock | None = None,
        organization_of: OrganizationOf = no_organization,
    ) -> None:
        self.rules = rules or RuleSet()
        self._organization_of = organization_of
        self.book = AlarmBook(self.rules)
        self.ledger = KeyLedger()
        self._clock = clock
        self._checks = self._build_checks()
        self._observers: dict[str, list[Check]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.last_event_time: datetime | None = None
        self.skipped = 0

    def _build_checks(self) -> list[Check]:
        r, ledger = self.rules, self.ledger
        checks: list[Check] = [
            UnauthorizedDecrypt(r["unauthorized-decrypt"], ledger),
            UnusedKey(r["unused-key"], ledger),
            PermissiveKey(r["permissive-key"], self._organization_of),
            KeyDeletionInUse(r["key-deletion-in-use"], ledger),
            UsageSpike(r["usage-spike"], ledger),
            RotationDisabled(r["rotation-disabled"], ledger),
            NewPrincipalOnKey(r["new-principal-on-key"], ledger),
            KeyReconnaissance(r["key-reconnaissance"]),
        ]
        return [check for check in checks if self.rules.enabled(check.rule_id)]

    def process(self, records: Iterable[Mapping[str, Any]], *, imported: bool = False) -> list[Alarm]:
        """Feed CloudTrail records in order; other services' and unreadable records are skipped."""
        return self.process_events(self._read(records), imported=imported)

    def process_events(self, events: Iterable[KmsEvent], *, imported: bool = False) -> list[Alarm]:
        """Feed events already read (offline reading converts while it parses); repeats are skipped.
        `imported`: history `keytrail audit import` added, whose keys time rules judge as of its end."""
        announced: list[Alarm] = []
        for event in events:
            if self._repeated(event):
                continue
            for check in self._observers_of(event.event_name):
                if found := check.observe(event):
                    announced += self._record(found)
            self.ledger.update(event, imported=imported)
            if self.last_event_time is None or event.event_time > self.last_event_time:
                self.last_event_time = event.event_time
        return announced

    def _observers_of(self, event_name: str) -> list[Check]:
        """The checks that look at events named `event_name` (most events are the few crypto
        operations, which only some rules read), remembered for the names KMS has."""
        checks = self._observers.get(event_name)
        if checks is None:
            checks = [c for c in self._checks if c.event_names is None or event_name in c.event_names]
            if len(self._observers) < _EVENT_NAMES:
                self._observers[event_name] = checks
        return checks

    def moment(self, now: datetime | None = None) -> datetime | None:
        """The time `tick` judges as of: `now`, else the clock's, else the last event's."""
        return now or (self._clock.now() if self._clock else self.last_event_time)

    def tick(self, now: datetime | None = None) -> list[Alarm]:
        """Evaluate the time-based rules as of `now` (default: the clock, else the last event's time)."""
        moment = self.moment(now)
        announced: list[Alarm] = []
        if moment is not None:
            for check in self._checks:
                announced += self._record(check.tick(moment))
        seen = {alarm.alarm_id for alarm in announced}
        return announced + [alarm for alarm in self.book.pending() if alarm.alarm_id not in seen]

    def forget_closed(self, now: datetime | None = None) -> int:
        """Let go of announced alarms whose window has closed (long-running detectors)."""
        moment = self.moment(now)
        return self.book.forget_closed(moment) if moment is not None else 0

    def alarms(self) -> list[Alarm]:
        """The current state of every alarm raised so far."""
        return self.book.alarms()

    def _record(self, findings: list[Finding]) -> list[Alarm]:
        alarms = [self.book.record(finding) for finding in findings]
        return [alarm for alarm in alarms if alarm is not None]

    def _read(self, records: Iterable[Mapping[str, Any]]) -> Iterator[KmsEvent]:
        for record in records:
            try:
                event = read_kms_event(record)
            except ValueError as exc:
                log.warning("skipping %s", exc)
                event = None
            if event is None:
                self.skipped += 1
            else:
                yield event

    def _repeated(self, event: KmsEvent) -> bool:
        # At-least-once delivery: the same eventID may come twice; process it once. And an
        # organization trail holds a cross-account call in both accounts: one call (sharedEventID).
        call = event.call_id
        if not call:
            return False
        if call in self._seen:
            return True
        self._seen[call] = None
        if len(self._seen) > _SEEN_EVENT_IDS:
            self._seen.popitem(last=False)
        return False
