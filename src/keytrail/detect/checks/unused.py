"""`unused-key`: enabled customer managed keys without successful cryptographic use for N days."""

from __future__ import annotations

from datetime import datetime, timedelta

from keytrail.detect.alarms import Finding, format_time
from keytrail.detect.checks import arn_region_account
from keytrail.detect.events import KmsEvent
from keytrail.detect.ledger import KeyLedger, KeyRecord
from keytrail.detect.rules import Rule

__all__ = ["UnusedKey"]

_RECOMMENDATION = (
    "Disable the key first (DisableKey) and watch CloudTrail for DisabledException before you "
    "schedule its deletion: some uses are rare (EBS decrypts only when a volume is attached). "
    "Deleting it would save ${cost:.2f}/month."
)


class UnusedKey:
    """Raised once per key and idle spell; using the key again starts a new spell."""

    rule_id = "unused-key"
    event_names = frozenset[str]()  # judged on the ledger, in `tick`

    def __init__(self, rule: Rule, ledger: KeyLedger) -> None:
        self.rule, self.ledger = rule, ledger
        self._raised: dict[str, datetime] = {}  # key ARN -> the idle-since time already alarmed

    def observe(self, event: KmsEvent) -> list[Finding]:
        return []

    def tick(self, now: datetime) -> list[Finding]:
        limit = timedelta(days=float(self.rule.param("unused_days")))
        findings = []
        if len(self._raised) > len(self.ledger):  # keys deleted since they were raised on: bounded by the ledger
            self._raised = {arn: since for arn, since in self._raised.items() if self.ledger.get(arn) is not None}
        for record in self.ledger:
            since = self._idle_since(record)
            if since is None or self._raised.get(record.key_arn) == since:
                continue
            if self.ledger.as_of(record, now) - since < limit:  # imported history: as of its end
                continue
            self._raised[record.key_arn] = since
            findings.append(self._finding(record, since, since + limit))
        return findings

    def _idle_since(self, record: KeyRecord) -> datetime | None:
        if not record.confirmed or record.state != "Enabled" or record.key_manager == "AWS":
            return None  # AWS managed keys cost nothing to keep; disabled keys are already parked
        if record.key_manager is None and not self.rule.param("include_unknown_manager"):
            return None
        # A key created without material could not be used before its import: idle from then, not
        # from its creation (its first import raised the alarm at once, idle since creation).
        return record.last_used or record.imported or record.created or record.first_seen

    def monthly_cost(self, record: KeyRecord) -> float:
        """$1/key-month plus $1 for each of the first two rotations (audit-anchors §3.1)."""
        rotations = min(self.ledger.rotations(record), int(self.rule.param("max_billed_rotations")))
        return float(self.rule.param("key_month_usd")) + rotations * float(
            self.rule.param("rotation_month_usd")
        )

    def _finding(self, record: KeyRecord, since: datetime, crossed: datetime) -> Finding:
        days = int(float(self.rule.param("unused_days")))
        cost = self.monthly_cost(record)
        if record.last_used is not None:
            basis, used = "lastUsed", f"last used {format_time(record.last_used)}"
        elif record.imported is not None:
            basis, used = "importDate", f"never used since its key material was imported {format_time(since)}"
        else:
            basis = "creationDate" if record.created else "firstSeen"
            used = "never used" if record.created else "no use seen since " + format_time(since)
        region, account = arn_region_account(record.key_arn)
        return Finding(
            rule=self.rule_id,
            time=crossed,
            key_arn=record.key_arn,
            principal_arn=None,
            event_id=record.last_used_event_id or record.created_event_id,
            account_id=account,
            region=region,
            summary=f"{record.key_arn} has had no successful cryptographic use for {days} days "
            f"({used}); deleting it would save ${cost:.2f}/month",
            recommendation=_RECOMMENDATION.format(cost=cost),
            details={
                "basis": basis,
                "idleSince": format_time(since),
                "unusedDays": str(days),
                "monthlyCostUsd": f"{cost:.2f}",
                "rotations": str(self.ledger.rotations(record)),
                "lastUsedBy": record.last_used_by or "",
            },
        )
