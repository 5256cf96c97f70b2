"""Why serve counts a call refused for want of its audit record (keytrail_audit_refused_calls_total's
`reason`), read from the audit trail as it stands when the record was refused, in the order the trail
checks: over the Kafka cap, a failed spool, else a write the disk refused; anything else the sink
raised is `sink_error`. (A real full disk: tests/integration/test_disk_full.py.)"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import cast

import pytest

from keytrail.audit.spool import SpoolError
from keytrail.audit.trail import AuditTrail
from keytrail.cli.node import AUDIT_REFUSAL_REASONS, _count_refused_call


class _Spool:
    def __init__(self, failed: bool) -> None:
        self.out_of_service = failed  # a full disk refuses ready() too, but does not put the spool out of service


def _trail(*, unshipped: int = 0, failed: bool = False) -> AuditTrail:
    return cast(AuditTrail, SimpleNamespace(unshipped_bytes=lambda: unshipped, spool=_Spool(failed),
                                            settings=SimpleNamespace(max_unshipped_bytes=1000)))


@pytest.mark.parametrize(("trail", "refusal", "reason"), [
    (_trail(), SpoolError("the audit spool could not persist the record: No space left on device"), "cannot_write"),
    (_trail(failed=True), SpoolError("the audit spool failed earlier"), "spool_failed"),
    (_trail(unshipped=1001, failed=True), SpoolError("over its cap"), "kafka_cap"),
    (_trail(), ValueError("a bug encoding the record"), "sink_error"),
], ids=["full disk", "failed spool", "Kafka cap", "other"])
def test_a_refused_call_is_counted_under_why_its_record_was_refused(trail: AuditTrail, refusal: Exception,
                                                                      reason: str) -> None:
    counts: Counter[str] = Counter()
    _count_refused_call(trail, counts, refusal)
    assert counts == {reason: 1} and reason in AUDIT_REFUSAL_REASONS
