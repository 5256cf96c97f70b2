"""The logic behind each rule: one small class per rule id, reading events and the key ledger."""

from __future__ import annotations

from collections.abc import Mapping, Set
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, Protocol

from keytrail.detect.alarms import Finding
from keytrail.detect.events import KmsEvent, caller_id

__all__ = ["Check", "LatestTime", "arn_region_account", "caller_id", "caller_name", "caller_scope", "expected_caller"]


class Check(Protocol):
    """A rule's logic: findings per event (`observe`) and per point in time (`tick`)."""

    rule_id: str

    @property
    def event_names(self) -> Set[str] | None:
        """The event names `observe` can find something in (None: any); the engine calls it for no other."""

    def observe(self, event: KmsEvent) -> list[Finding]: ...

    def tick(self, now: datetime) -> list[Finding]: ...


def arn_region_account(arn: str | None) -> tuple[str | None, str | None]:
    """(region, account) of a key ARN `arn:aws:kms:<region>:<account>:key/<id>`."""
    parts = (arn or "").split(":")
    return (parts[3] or None, parts[4] or None) if len(parts) >= 6 else (None, None)


def caller_name(event: KmsEvent) -> str:
    """How a summary names the caller: its principal ARN, or what tells a caller with no ARN
    apart (as `caller_id` does)."""
    if event.principal_arn:
        return event.principal_arn
    account = event.account_id or "unknown"
    if event.access_key_id or not (event.principal_id or event.invoked_by):
        return f"a caller with no ARN (account {account}, access key {event.access_key_id or 'unknown'})"
    if event.principal_id:
        return f"a caller with no ARN (account {account}, principalId {event.principal_id})"
    return f"a caller with no ARN (account {account}, AWS service {event.invoked_by})"


def caller_scope(event: KmsEvent) -> str | None:
    """A finding's scope for its caller: callers with no ARN share `principalArn` null, and each
    must have alarms of its own (one found first would hide the others in its alarm)."""
    return None if event.principal_arn else caller_id(event)


def expected_caller(event: KmsEvent, parameters: Mapping[str, Any]) -> bool:
    """Whether the rule's parameters say to pass over this caller: an AWS service
    (`suppress_aws_services`, `aws_service_callers`) or a principal matching `allow_principals` globs."""
    if parameters.get("suppress_aws_services") and (
        event.identity_type == "AWSService" or event.invoked_by in parameters["aws_service_callers"]
    ):
        return True
    principal = event.principal_arn or ""
    return any(fnmatchcase(principal, pattern) for pattern in parameters["allow_principals"])


class LatestTime:
    """The latest event time a rule has read, and the time its tick lets state go as of: the
    earlier of that and the tick's `now`, for a stream running behind the clock still brings
    events that must find the state of the calls just before them."""

    __slots__ = ("latest",)

    def __init__(self) -> None:
        self.latest: datetime | None = None

    def saw(self, at: datetime) -> None:
        if self.latest is None or at > self.latest:
            self.latest = at

    def as_of(self, now: datetime) -> datetime | None:
        """None before any event: nothing to let go."""
        return None if self.latest is None else min(now, self.latest)
