"""What the scheduler (kms/scheduled_work.py) keeps from one tick to the next (DueWork), and the
keys whose due work (rotation, deletion, expiry) failed in its last tick, and the log line that
says so: when they or their reasons change and once when they run again, not on every tick. An
audit spool that cannot write refuses every tick's records for as long as it lasts, and a line a
tick (some 120 an hour) would bury the spool's own line that says why."""

from __future__ import annotations

import asyncio
import logging
import re

from keytrail.kms import errors
from keytrail.kms.model import AuditUnavailable

__all__ = ["DueWork", "DueWorkFailures"]

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
