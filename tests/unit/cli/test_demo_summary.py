"""The demo's text summary: its figures must add up for a reader comparing its tables."""

from __future__ import annotations

from keytrail.cli.demo_summary import render_text

KEY = "arn:aws:kms:us-east-1:111122223333:key/00000000-aaaa-bbbb-cccc-000000000001"


def test_usage_table_counts_events_so_a_service_event_beside_the_calls_adds_up() -> None:
    # Two calls and the DeleteKey KMS logged when the key's waiting period ended: three events.
    summary = {
        "dataDir": "/tmp/d", "report": "/tmp/d/demo-report.html", "calls": 2, "simulatedDays": 30,
        "keys": {"old": KEY}, "principals": {"admin": "arn:aws:iam::111122223333:user/admin"}, "alarms": [],
        "usage": {"events": 3, "errors": 0, "byKey": [{"keyArn": KEY, "events": 3, "errors": 0}]},
        "cost": {"totalCost": "0.000006", "byKey": []},
    }
    lines = render_text(summary).splitlines()
    assert lines[0] == "keytrail demo: 1 key, 1 principal, 2 KMS calls over 30 simulated days"
    title = lines.index("Usage per key (keytrail usage: the KMS calls, and the service's own RotateKey and DeleteKey "
                        "events)")
    assert lines[title + 1].split() == ["key", "events", "errors"]
    assert lines[title + 3].split() == ["total", "3", "0"]


def test_tables_list_keys_by_alias_whatever_their_random_key_ids() -> None:
    # Rows came in key ARN order, so the same demo listed its keys in a different order each run.
    second = KEY.replace("000000000001", "000000000002")
    summary = {
        "dataDir": "/tmp/d", "report": "/tmp/d/demo-report.html", "calls": 2, "simulatedDays": 30,
        "keys": {"zeta": KEY, "alpha": second}, "principals": {}, "alarms": [],
        "usage": {"events": 2, "errors": 0, "byKey": [{"keyArn": KEY, "events": 1, "errors": 0},
                                                       {"keyArn": second, "events": 1, "errors": 0}]},
        "cost": {"totalCost": "2", "byKey": [
            {"keyArn": arn, "accountId": "111122223333", "keyMonths": 1.0, "keyCost": "1", "requestCost": "0",
             "totalCost": "1"} for arn in (KEY, second)]},
    }
    listed = [line.split()[0] for line in render_text(summary).splitlines() if line.strip().startswith("alias/")]
    assert listed == ["alias/alpha", "alias/zeta", "alias/alpha", "alias/zeta"]
