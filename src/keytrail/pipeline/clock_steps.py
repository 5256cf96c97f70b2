"""Clock steps in a key's lifecycle: events a node stamped with a clock that went back (NTP step).

A node's own event log, and the Kafka partition its events go to (keyed by key ARN), hold one key's
lifecycle events in the order they happened: a ScheduleKeyDeletion cannot be logged before the
CreateKey that made its key. One dated before a lifecycle event of its key logged ahead of it was
stamped by a clock that stepped back; ordered by time, it billed a key scheduled for deletion as
never scheduled. It is billed just after the earlier-logged event instead (a microsecond after:
it did happen after it, so a key scheduled for deletion after its creation is billed that hour),
and said. CloudTrail
files (sorted by name, a record late in a later file) and the history `keytrail audit import`
added hold no such order: their events keep their own times, as before.

A record logged late looks the same: one the audit spool refused (a full disk) that the key store
owed, recorded once the spool took records again (kms/owed_calls.py). Its time was right, and log
order bills it late; the line says both, and that the cost may be off by about the step.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import polars as pl

from keytrail.pipeline.cost import LIFECYCLE_EVENTS

__all__ = ["ClockStep", "Latest", "in_log_order"]

_AFTER = timedelta(microseconds=1)
_CREATION = frozenset({"CreateKey", "ReplicateKey"})
#: A key's latest lifecycle event (time, name) in the log before a batch, or None.
Latest = Callable[[str], "tuple[datetime, str] | None"]


@dataclass(frozen=True)
class ClockStep:
    """A lifecycle event dated before the `after_name` event of its key logged ahead of it."""

    key_arn: str
    event_name: str
    event_id: str
    event_time: datetime  # as stamped
    after_name: str
    after_time: datetime  # it is billed a microsecond after it

    @property
    def billed_time(self) -> datetime:
        return self.after_time + _AFTER

    def line(self) -> str:
        """The one line that says it (consume's warning, cost's and report's note)."""
        step = _duration((self.after_time - self.event_time).total_seconds())
        return (f"clock step: {self.key_arn}: {self.event_name} (eventID {self.event_id}) is dated "
                f"{_stamp(self.event_time)}, {step} before the {self.after_name} of {_stamp(self.after_time)} "
                f"logged ahead of it: the node's clock stepped back (or the record was logged late); its cost "
                "takes it just after that one, in log order, and may be off by about the step")


def in_log_order(lifecycle: pl.DataFrame, causal: Collection[str],
                 latest: Latest) -> tuple[pl.DataFrame, list[ClockStep]]:
    """`lifecycle` (one batch's rows, in log order) with each event of `causal` (the eventIDs read
    from a log in causal order) that is dated before a lifecycle event of its key logged ahead of
    it moved to just after that event, and those steps. `latest(key)`: the key's latest lifecycle
    event before the batch, asked once per key of the batch (no earlier than any before it)."""
    if not causal:
        return lifecycle, []
    rows = lifecycle.filter(pl.col("eventName").is_in(LIFECYCLE_EVENTS))
    known: dict[str, tuple[datetime, str] | None] = {}
    steps: list[ClockStep] = []
    for key_arn, when, name, event_id in rows.select("keyArn", "eventTime", "eventName", "eventID").iter_rows():
        # A key made here has no event before it (a new key: most of a first batch's rows).
        prior = known[key_arn] if key_arn in known else None if name in _CREATION else latest(key_arn)
        # A ReplicateKey and the replica's CreateKey KMS logs for it are one creation, the CreateKey
        # logged first though stamped later (the ReplicateKey is dated as its call began): no step.
        one_creation = prior is not None and name in _CREATION and prior[1] in _CREATION
        if prior is not None and when < prior[0] and event_id in causal and not one_creation:
            steps.append(step := ClockStep(key_arn, name, event_id, when, prior[1], prior[0]))
            prior = (step.billed_time, name)  # the next event of the key comes after this one
        elif prior is None or when >= prior[0]:
            prior = (when, name)
        known[key_arn] = prior
    if not steps:
        return lifecycle, steps
    moved = pl.DataFrame({"eventID": [s.event_id for s in steps], "billedTime": [s.billed_time for s in steps]},
                         schema={"eventID": pl.String(), "billedTime": lifecycle.schema["eventTime"]})
    lifecycle = lifecycle.join(moved, on="eventID", how="left", maintain_order="left")
    return lifecycle.with_columns(eventTime=pl.coalesce("billedTime", "eventTime")).drop("billedTime"), steps


def _stamp(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%SZ}"


def _duration(seconds: float) -> str:
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:g} s"
