"""A mixed day of KMS traffic in which every rule fires once or more (shared by tests and bench)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from tests.unit.detect.records import (
    T0,
    create_key,
    denied,
    event,
    key_arn,
    policy_doc,
    role,
    steady_traffic,
    user,
)


def mixed_scenario() -> list[dict[str, Any]]:
    """Records in eventTime order; the last one is 100 days after the first."""
    app, eve, admin = role("app"), user("eve"), user("admin")
    busy, idle, doomed, opened = key_arn(1), key_arn(2), key_arn(3), key_arn(4)
    public = policy_doc(
        {"Sid": "Open", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}
    )
    records = [create_key(T0, k) for k in (busy, idle, doomed)] + [create_key(T0, opened, public)]
    records += steady_traffic(busy, app, T0 + timedelta(minutes=1), minutes=90, per_minute=4)
    spike_at = T0 + timedelta(minutes=91)
    records += [
        event("GenerateDataKey", spike_at + timedelta(milliseconds=50 * i), busy, app) for i in range(300)
    ]
    records += [denied("Decrypt", T0 + timedelta(hours=3, seconds=i), busy, eve) for i in range(15)]
    records += [
        event("Encrypt", T0 + timedelta(days=1), doomed, app),
        event(
            "ScheduleKeyDeletion",
            T0 + timedelta(days=2),
            doomed,
            admin,
            params={"keyId": doomed, "pendingWindowInDays": 7},
        ),
        event(
            "Decrypt",
            T0 + timedelta(days=3),
            doomed,
            app,
            error="KMSInvalidStateException",
            message=f"{doomed} is pending deletion.",
        ),
    ]
    records.append(event("DisableKeyRotation", T0 + timedelta(days=4), busy, admin,
                         params={"keyId": busy.rsplit("/", 1)[1]}))
    records.append(event("Decrypt", T0 + timedelta(days=10), busy, role("batch")))  # new on a key used for 10 days
    records += [denied("DescribeKey", T0 + timedelta(days=5, seconds=n), key_arn(10 + n), eve) for n in range(20)]
    records += steady_traffic(busy, app, T0 + timedelta(days=100), minutes=1, per_minute=2)
    records.sort(key=lambda r: (r["eventTime"], r["eventID"]))
    return records
