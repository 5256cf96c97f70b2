"""Records imported from anywhere may hold anything in their request parameters and response
elements: every rule reads them without failing (a record KMS never wrote raises nothing)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from tests.unit.detect.records import T0, denied, event, key_arn, user

from keytrail.detect import Detector
from keytrail.detect.avro import decode_alarm, encode_alarm

# Key policies whose Condition element is of no shape KMS takes (the permissive-key rule reads them).
_ODD_CONDITIONS: list[Any] = ["x", [1], {"Bool": {"kms:GrantIsForAWSResource": []}},
                              {"Bool": {"kms:GrantIsForAWSResource": None}}]
ODD_VALUES: list[Any] = [None, 5, True, "x", "{", '{"Statement": 5}', [], [1, None], {}, {"a": {"b": []}},
                         # deeper than json's reader recurses: a RecursionError ended `detect --cloudtrail`
                         '{"Statement": ' + "[" * 2000 + "]" * 2000 + "}"] + [
    json.dumps({"Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:CreateGrant", "Condition": odd}]})
    for odd in _ODD_CONDITIONS
]
# The members the rules read, and the operations that carry them.
MEMBERS = ["policy", "granteePrincipal", "retiringPrincipal", "operations", "constraints", "pendingWindowInDays",
           "keyId", "keySpec", "keyUsage", "name", "grantId", "keyMetadata", "encryptionContext", "tags",
           "replicaKeyMetadata"]
NAMES = ["CreateKey", "PutKeyPolicy", "CreateGrant", "ScheduleKeyDeletion", "DisableKey", "Decrypt", "Encrypt",
         "RetireGrant", "RevokeGrant", "ReplicateKey", "ImportKeyMaterial", "RotateKeyOnDemand"]


def _odd_records() -> list[dict[str, Any]]:
    """Each operation with each member odd in its request and in its response, succeeded and denied."""
    records = []
    for name in NAMES:
        for member in MEMBERS:
            for value in ODD_VALUES:
                for error in (None, "AccessDeniedException"):
                    at = T0 + timedelta(seconds=len(records))
                    records.append(event(name, at, key_arn(len(records) % 7), user(), params={member: value},
                                         response={member: value}, error=error))
    return records


def test_every_rule_reads_odd_records_without_failing() -> None:
    detector = Detector()
    detector.process(_odd_records())
    detector.tick(T0 + timedelta(days=120))  # time rules (unused keys) look at what was recorded
    rules = {alarm.rule for alarm in detector.alarms()}
    assert "unauthorized-decrypt" in rules  # the denied Decrypts still count, whatever else they carried


def test_an_event_time_without_offset_is_utc_not_a_crash() -> None:
    first, second = event("Decrypt", T0, key_arn(1)), denied("Decrypt", T0, key_arn(1), user("eve"))
    second["eventTime"] = (T0 + timedelta(seconds=5)).strftime("%Y-%m-%dT%H:%M:%S")  # no Z
    detector = Detector()
    detector.process([first, second, event("Encrypt", T0 + timedelta(seconds=9), key_arn(1))])
    [alarm] = detector.alarms()
    assert alarm.first_seen == T0 + timedelta(seconds=5)


def test_odd_string_fields_neither_crash_a_rule_nor_make_an_alarm_kafka_cannot_take() -> None:
    """errorCode, errorMessage, awsRegion and the caller's accountId, type and invokedBy of an
    imported record may hold anything; the denied call is still judged and its alarm encodes."""
    records = []
    for n, value in enumerate(ODD_VALUES):
        record = denied("Decrypt", T0 + timedelta(seconds=n), key_arn(1), user(f"u{n}"))
        record["awsRegion"] = value
        record["userIdentity"].update(accountId=value, type=value, invokedBy=value)
        odd_code = event("Decrypt", T0 + timedelta(seconds=n), key_arn(2), user(f"v{n}"), error="x")
        odd_code.update(errorCode=value if value not in (None, "") else [value], errorMessage=value)
        records += [record, odd_code]
    detector = Detector()
    detector.process(records)
    alarms = detector.alarms()
    assert {a.principal_arn for a in alarms if a.rule == "unauthorized-decrypt"} == {
        user(f"u{n}")["arn"] for n in range(len(ODD_VALUES))
    }
    for alarm in alarms:
        assert decode_alarm(encode_alarm(alarm)) == alarm
