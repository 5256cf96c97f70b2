"""What the scheduler (kms/scheduled_work.py) keeps from one tick to the next (DueWork), and the
keys whose due work (rotation, deletion, expiry) failed in its last tick, and the log line that
says so: when they or their reasons change and once when they run again, not on every tick. An
audit spool that cannot write refuses every tick's records for as long as it lasts, and a line a
tick (some 120 an hour) would bury the spool's own line that says why."""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import datetime, timedelta

from keytrail.clock import ForwardStepHold
from keytrail.kms import errors
from keytrail.kms.model import AuditUnavailable

__all__ = ["DueWork", "DueWorkFailures", "HeldWork"]

log = logging.getLogger(__name__)

# The request or event id in a reason (a record refused) and counts (the bytes an over-cap spool
# holds) change from tick to tick while the reason stays the same one: compared without them.
_VARYING = re.compile(r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|\d+")


class DueWorkFailures:
    """What the last tick left for the next, as (what, reason) pairs: keys by ARN, by default, or
    `items` of another kind of work (the audit records changes owe)."""

    def __init__(self, work: str = "scheduled key maintenance", items: str = "key(s)") -> None:
        self._last: frozenset[tuple[str, str]] = frozenset()
        self._work, self._items = work, items

    def tick(self, failed: list[tuple[str, Exception]]) -> None:
        """Log this tick's failures if they differ from the last tick's, or that none are left."""
        now = frozenset((arn, _VARYING.sub("N", f"{type(exc).__name__}: {exc}")) for arn, exc in failed)
        if now != self._last and failed:
            arn, first = failed[0]
            expected = isinstance(first, AuditUnavailable | errors.KmsError)  # else a bug: its traceback
            log.error("%s: %d %s left for the next tick, first %s: %s (said again only once the %s or the reasons "
                      "change, or they run)", self._work, len(failed), self._items, arn, first,
                      self._items.removesuffix("(s)") + "s", exc_info=None if expected else first)
        elif now != self._last:
            log.warning("%s: the %ss left over from earlier ticks ran", self._work, self._items.removesuffix("(s)"))
        self._last = now


class DueWork:
    """The scheduler's state, held by the service (`KmsService.due_work`) and kept by
    kms/scheduled_work.py: `lock`, one key's due work at a time here (the key's lock keeps out
    the calls changing it); the failures of keys' due work and of owed records the last tick
    logged; and the reason a failed `tick_work` was last logged for (None: none failed)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.key_failures = DueWorkFailures()
        self.owed_failures = DueWorkFailures("audit records owed by changes", "record(s)")
        self.tick_work_failure: str | None = None
        self.held = HeldWork()


class HeldWork:
    """The keys whose deletion, or imported material's expiry, only a step ahead of the wall clock
    made due (`clock.ForwardStepHold`), held and not carried out, and the lines that say so: once
    for the keys a hold newly keeps (at the tick after it found them, by a tick or a call), once
    when it ends."""

    def __init__(self, hold: ForwardStepHold | None = None) -> None:
        self.hold = hold or ForwardStepHold()
        self._found: dict[str, str] = {}  # ARN → what is held, not yet said
        self._said: set[str] = set()
        self._ahead = 0.0

    def judged_at(self, now: datetime) -> datetime:
        """The time irreversible work is judged by: `now` less the steps ahead held."""
        return now - timedelta(seconds=self.check())

    def check(self) -> float:
        """The seconds held (`ForwardStepHold.ahead`), saying once that a hold ended (each tick
        asks: the keys it held may be due by no clock any more, the clock set back)."""
        ahead = self.hold.ahead()
        if not ahead and self._said:
            self._say_ended()
        self._ahead = ahead
        return ahead

    def found(self, arn: str, what: str) -> None:
        """`arn`'s `what` (its deletion, its material's expiry) is due by `now` but not by `judged_at`."""
        if arn not in self._said:
            self._found[arn] = what

    def say(self) -> None:
        """One line for the keys held since the last, what they wait for and how to release them."""
        if not self._found or not self._ahead:
            self._found.clear()
            return
        named = ", ".join(f"{arn} ({what})" for arn, what in list(self._found.items())[:10])
        more = f" and {len(self._found) - 10} more" if len(self._found) > 10 else ""
        log.warning("%d key(s) not deleted or expired, which fell due only by the wall clock's step %.1f h ahead, "
                    "held for the next %.1f h of running time: %s%s. If the clock is wrong, set it right: they "
                    "then fall due at their own dates; if the new time is right, they are carried out when the "
                    "hold ends", len(self._found), self._ahead / 3600, self.hold.left() / 3600, named, more)
        self._said |= set(self._found)
        self._found.clear()

    def _say_ended(self) -> None:
        if self.hold.set_back:
            log.warning("the wall clock went back: the %d key(s) held since its step ahead fall due at their own "
                        "dates again", len(self._said))
        else:
            log.warning("the hold on the wall clock's step ahead is over: the %d key(s) it held are deleted or "
                        "expired now (the new time is taken as the right one)", len(self._said))
        self._said.clear()
        self._found.clear()
