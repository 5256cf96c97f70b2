"""Each rule fires with the expected fields; benign traffic of the same volume fires nothing."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from tests.unit.detect.records import (
    ACCOUNT,
    AWS_SERVICE,
    T0,
    create_key,
    denied,
    event,
    federated,
    key_arn,
    policy_doc,
    role,
    steady_traffic,
    user,
)

from keytrail.clock import ManualClock
from keytrail.detect import Detector, RuleSet

KEY = key_arn(1)
APP = role("app")
MALLORY = user("mallory")
APP_ARN = f"arn:aws:iam::{ACCOUNT}:role/app"


def by_rule(alarms: list, rule: str) -> list:
    return [a for a in alarms if a.rule == rule]


def test_denied_decrypt_raises_one_alarm_per_principal_and_key_escalating_with_count() -> None:
    detector = Detector()
    attempts = [denied("Decrypt", T0 + timedelta(seconds=i), KEY, MALLORY) for i in range(12)]
    announced = detector.process(attempts)
    [alarm] = detector.alarms()
    assert alarm.rule == "unauthorized-decrypt" and alarm.count == 12
    assert alarm.key_arn == KEY and alarm.principal_arn == MALLORY["arn"]
    assert alarm.account_id == ACCOUNT and alarm.region == "us-east-1"
    assert alarm.first_seen == T0 and alarm.last_seen == T0 + timedelta(seconds=11)
    assert alarm.event_ids[0] == attempts[0]["eventID"] and len(alarm.event_ids) == 12
    assert alarm.details["denyType"] == "implicit" and alarm.details["policyType"] == "resource-based"
    assert alarm.details["newPrincipalOnKey"] == "true"
    assert alarm.severity == "HIGH"  # MEDIUM bumped for a principal new on the key; 10+ stays HIGH
    assert [a.severity for a in announced] == ["HIGH"]  # announced once, not per attempt


def test_denied_decrypt_alarm_names_every_source_address_and_access_key_it_folds() -> None:
    """The alarm sends the responder after the caller's credentials; it named neither where the
    denied calls came from nor with which access key, so the trail had to be searched again."""
    detector = Detector()
    attempts = [denied("Decrypt", T0 + timedelta(seconds=i), KEY, MALLORY) for i in range(4)]
    attempts[1]["sourceIPAddress"] = attempts[3]["sourceIPAddress"] = "203.0.113.7"
    attempts[2]["userIdentity"] = {**MALLORY, "accessKeyId": "AKIASECONDKEY"}
    detector.process(attempts)
    [alarm] = detector.alarms()
    assert alarm.details["sourceIPAddresses"] == "192.0.2.0,203.0.113.7"
    assert alarm.details["accessKeyIds"] == "AKIAEXAMPLE,AKIASECONDKEY"
    assert "sourceIPAddresses" in alarm.recommendation


def test_a_principal_denied_on_many_keys_raises_three_key_alarms_and_one_for_the_rest() -> None:
    """Stolen credentials trying every key raised one alarm per key: 200 keys, 200 pages."""
    detector = Detector()
    keys = [key_arn(n) for n in range(200)]
    announced = detector.process([denied("Decrypt", T0 + timedelta(seconds=n), k, MALLORY) for n, k in enumerate(keys)])
    assert [a.key_arn for a in announced] == [*keys[:3], None, None]  # the folded alarm escalates once, to CRITICAL
    per_key = [a for a in detector.alarms() if a.key_arn is not None]
    [folded] = [a for a in detector.alarms() if a.key_arn is None]
    assert [a.count for a in per_key] == [1, 1, 1]
    assert (folded.rule, folded.principal_arn, folded.count, folded.severity) == (
        "unauthorized-decrypt", MALLORY["arn"], 197, "CRITICAL")
    assert folded.details["keyCount"] == "197"
    assert folded.details["keyArns"] == ",".join(keys[3:13])  # the first 10
    assert "newPrincipalOnKey" not in folded.details and folded.details["denyType"] == "implicit"


def test_the_folded_alarm_counts_each_key_once_and_keys_with_their_own_alarm_keep_it() -> None:
    detector = Detector()
    keys = [key_arn(n) for n in range(5)]
    order = [0, 1, 2, 3, 4, 3, 0, 4]
    detector.process([denied("Decrypt", T0 + timedelta(seconds=n), keys[k], MALLORY) for n, k in enumerate(order)])
    counts = {a.key_arn: a.count for a in detector.alarms()}
    assert counts == {keys[0]: 2, keys[1]: 1, keys[2]: 1, None: 4}
    [folded] = [a for a in detector.alarms() if a.key_arn is None]
    assert (folded.details["keyCount"], folded.details["keyArns"]) == ("2", f"{keys[3]},{keys[4]}")


def test_the_folded_alarm_has_a_deterministic_id_and_closes_with_its_window() -> None:
    keys = [key_arn(n) for n in range(4)]
    records = [denied("Decrypt", T0 + timedelta(seconds=n), k, MALLORY) for n, k in enumerate(keys)]
    later = [denied("Decrypt", T0 + timedelta(hours=2, seconds=n), k, MALLORY) for n, k in enumerate(keys[3:])]
    first, second = Detector(), Detector()
    first.process(records + later)
    second.process(records + later)
    assert [a.alarm_id for a in first.alarms()] == [a.alarm_id for a in second.alarms()]
    # Two hours on, the key alarms have closed: the next key has an alarm of its own again.
    assert [a.key_arn for a in first.alarms()] == [*keys[:3], None, keys[3]]


def test_key_alarms_per_principal_zero_keeps_one_alarm_per_key() -> None:
    detector = Detector(RuleSet().override(
        {"unauthorized-decrypt": {"parameters": {"key_alarms_per_principal": 0}}}))
    keys = [key_arn(n) for n in range(6)]
    detector.process([denied("Decrypt", T0 + timedelta(seconds=n), k, MALLORY) for n, k in enumerate(keys)])
    assert [a.key_arn for a in detector.alarms()] == keys


def test_other_principals_denied_on_the_same_keys_are_judged_on_their_own() -> None:
    detector = Detector()
    keys = [key_arn(n) for n in range(4)]
    detector.process([denied("Decrypt", T0 + timedelta(seconds=n), k, who)
                      for who in (MALLORY, user("eve")) for n, k in enumerate(keys)])
    assert sorted((a.principal_arn or "", a.key_arn or "-") for a in detector.alarms() if a.key_arn is None) == [
        (f"arn:aws:iam::{ACCOUNT}:user/eve", "-"), (MALLORY["arn"], "-")]


def _denied_naming_no_key(at: datetime, identity: dict[str, Any], key_id: str = "alias/payments") -> dict[str, Any]:
    """A denied Decrypt whose record names no key ARN: the key id the caller gave (an alias, a bare
    id) was not resolved, or the call was refused before it was."""
    message = (f"User: {identity.get('arn', 'unknown')} is not authorized to perform: kms:Decrypt because no "
               "identity-based policy allows the kms:Decrypt action")
    return event("Decrypt", at, None, identity, error="AccessDenied", message=message, params={"keyId": key_id})


def test_a_denial_naming_no_key_neither_swallows_nor_joins_the_principal_s_flood_alarm() -> None:
    """A denial naming no key has keyArn null as the flood alarm has, and shared its slot: the flood
    that followed folded into it (count 4, never paged as a flood), or, the flood first, the
    denial was told as the flood's latest call."""
    keys = [key_arn(n) for n in range(6)]
    flood = [denied("Decrypt", T0 + timedelta(minutes=1, seconds=n), k, MALLORY) for n, k in enumerate(keys)]
    for before, after in (([_denied_naming_no_key(T0, MALLORY)], flood),
                          (flood, [_denied_naming_no_key(T0 + timedelta(minutes=2), MALLORY)])):
        detector = Detector()
        announced = detector.process(before + after)
        # (flood alarm?, count): each raised and paged on its own, and each counts its own calls
        assert sorted(("keyCount" in a.details, a.count) for a in announced if a.key_arn is None) == [
            (False, 1), (True, 1)]
        assert sorted(("keyCount" in a.details, a.count) for a in detector.alarms() if a.key_arn is None) == [
            (False, 1), (True, 3)]
        [alone] = [a for a in detector.alarms() if a.key_arn is None and "keyCount" not in a.details]
        assert (alone.severity, "newPrincipalOnKey" in alone.details) == ("MEDIUM", False)  # new on no key


def test_a_denial_without_resources_is_told_of_the_key_its_message_names() -> None:
    """An imported AccessDenied Decrypt whose record has no `resources` (its request named no key):
    the key ARN in its errorMessage is the alarm's, as for any other denial, not a key-less alarm."""
    record = denied("Decrypt", T0, KEY, user("nores"))
    record["resources"], record["requestParameters"] = [], {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    detector = Detector()
    detector.process([record])
    [alarm] = detector.alarms()
    assert (alarm.rule, alarm.key_arn) == ("unauthorized-decrypt", KEY)


def test_callers_with_no_arn_denied_are_each_an_alarm_of_their_own() -> None:
    """Callers whose userIdentity has no ARN (SAML users here) all had principalArn null: denied
    on one key, or naming none, the first one's alarm counted the others', who never paged."""
    def saml(name: str, account: str) -> dict[str, Any]:
        return {"type": "SAMLUser", "principalId": f"idp:{name}", "userName": name, "accountId": account,
                "accessKeyId": f"ASIA{name.upper()}0000000001"}

    callers = [saml("ann", ACCOUNT), saml("bo", "444455556666")]
    detector = Detector()
    announced = detector.process([record for n, who in enumerate(callers) for record in (
        denied("Decrypt", T0 + timedelta(seconds=n), KEY, who), _denied_naming_no_key(T0 + timedelta(seconds=n), who))])
    assert sorted((a.account_id or "", a.key_arn or "-", a.count) for a in detector.alarms()) == [
        (ACCOUNT, "-", 1), (ACCOUNT, KEY, 1), ("444455556666", "-", 1), ("444455556666", KEY, 1)]
    assert len(announced) == 4
    assert "a caller with no ARN (account 444455556666, access key ASIABO0000000001)" in announced[-1].summary


def test_a_caller_with_no_arn_denied_key_after_key_folds_into_one_alarm_per_caller() -> None:
    """Stolen SAML or web identity credentials trying every key: a caller with no ARN had one
    alarm per key (200 keys, 200 pages), the flood alarm being only for callers with one. Past its
    `key_alarms_per_principal`, its denials fold as a named principal's do, and two such callers'
    floods stay apart, by account and access key as their key alarms are."""
    def saml(name: str) -> dict[str, Any]:
        return {"type": "SAMLUser", "principalId": f"idp:{name}", "userName": name, "accountId": ACCOUNT,
                "accessKeyId": f"ASIA{name.upper()}0000000001"}

    detector = Detector()
    detector.process([denied("Decrypt", T0 + timedelta(seconds=n), key_arn(n % 10), saml(name))
                      for name in ("ann", "bo") for n in range(10)])
    alarms = detector.alarms()
    assert sorted((a.details["accessKeyIds"], a.key_arn is None, a.count) for a in alarms) == [
        (f"ASIA{name}0000000001", flood, count) for name in ("ANN", "BO")
        for flood, count in ((False, 1), (False, 1), (False, 1), (True, 7))]
    flood = next(a for a in alarms if a.key_arn is None)
    assert flood.details["keyCount"] == "7" and flood.principal_arn is None
    assert flood.summary.startswith("a caller with no ARN (account 111122223333, access key ASIAANN0000000001) was "
                                    "denied on 7 key(s)")


def test_known_principal_denied_starts_medium_and_escalates() -> None:
    detector = Detector()
    detector.process([event("Decrypt", T0, KEY, APP)])
    announced = detector.process(
        [
            denied(
                "Decrypt", T0 + timedelta(seconds=i + 1), KEY, APP, explicit=True, policy="service control"
            )
            for i in range(50)
        ]
    )
    assert [a.severity for a in announced] == ["MEDIUM", "HIGH", "CRITICAL"]
    [alarm] = detector.alarms()
    assert alarm.principal_arn == APP_ARN  # the role, not the session
    assert "newPrincipalOnKey" not in alarm.details
    assert (alarm.details["denyType"], alarm.details["policyType"]) == ("explicit", "service control")


def test_denials_outside_the_window_raise_a_new_alarm() -> None:
    detector = Detector()
    detector.process(
        [denied("Decrypt", T0, KEY, MALLORY), denied("Decrypt", T0 + timedelta(hours=2), KEY, MALLORY)]
    )
    assert [a.count for a in detector.alarms()] == [1, 1]
    assert len({a.alarm_id for a in detector.alarms()}) == 2


def test_aws_service_and_allow_listed_denials_are_suppressed() -> None:
    rules = RuleSet().override(
        {
            "unauthorized-decrypt": {
                "parameters": {"allow_principals": [f"arn:aws:iam::{ACCOUNT}:role/scanner*"]}
            }
        }
    )
    detector = Detector(rules)
    detector.process(
        [
            denied("Decrypt", T0, KEY, role("ConfigRecorder", invoked_by="config.amazonaws.com")),
            denied("Decrypt", T0, KEY, {"type": "AWSService", "invokedBy": "cloudtrail.amazonaws.com"}),
            denied("Decrypt", T0, KEY, role("scanner-prod")),
        ]
    )
    assert detector.alarms() == []


def test_benign_traffic_of_the_same_volume_fires_nothing() -> None:
    detector = Detector()
    keys = [key_arn(n) for n in range(3)]
    records = [create_key(T0, k) for k in keys]
    for k in keys:
        records += steady_traffic(k, APP, T0 + timedelta(minutes=1), minutes=120, per_minute=30)
    records += [event("DescribeKey", T0 + timedelta(minutes=5), keys[0], user("admin"))]
    records.sort(key=lambda r: r["eventTime"])
    detector.process(records)
    detector.tick()
    assert detector.alarms() == []


def test_unused_key_fires_after_n_days_with_cost_and_advice() -> None:
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    used, idle = key_arn(1), key_arn(2)
    detector.process(
        [
            create_key(T0, used),
            create_key(T0, idle),
            *rotate_on_demand(T0, idle),
            event("Decrypt", T0 + timedelta(days=1), used, APP),
        ]
    )
    clock.advance(timedelta(days=89).total_seconds())
    assert detector.tick() == []
    clock.advance(timedelta(days=1, seconds=1).total_seconds())
    [alarm] = detector.tick()
    assert alarm.rule == "unused-key" and alarm.key_arn == idle and alarm.principal_arn is None
    assert alarm.first_seen == T0 + timedelta(days=90)
    assert alarm.details["monthlyCostUsd"] == "2.00" and alarm.details["basis"] == "creationDate"
    assert "$2.00/month" in alarm.summary and "DisabledException" in alarm.recommendation
    assert detector.tick() == []  # once per idle spell
    clock.advance(timedelta(days=1).total_seconds())
    assert [a.key_arn for a in detector.tick()] == [used]


@pytest.mark.parametrize("operation", ["Encapsulate", "Decapsulate"])
def test_an_ml_kem_key_used_by_either_half_of_the_pair_is_not_unused(operation: str) -> None:
    """The detector counted Decapsulate only: a key Encapsulated daily was "never used; deleting it
    would save $1.00/month" while `last-used` named its Encapsulate of the day before."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    detector.process([create_key(T0, KEY), *(event(operation, T0 + timedelta(days=day), KEY, APP)
                                             for day in range(1, 100))])
    clock.advance(timedelta(days=100).total_seconds())
    assert detector.tick() == []


def rotate_on_demand(at: datetime, key: str) -> list[dict[str, Any]]:
    """What CloudTrail logs for one on-demand rotation: the caller's RotateKeyOnDemand, then KMS's
    RotateKey service event (ct-rotatekeyondemand, ct-rotatekey)."""
    service_event = event("RotateKey", at, key, {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}, params={})
    service_event.update(eventType="AwsServiceEvent", requestParameters=None,
                         serviceEventDetails={"rotationType": "ON_DEMAND", "keyOrigin": "AWS_KMS"})
    return [event("RotateKeyOnDemand", at, key, params={"keyId": key}, response={"keyId": key}), service_event]


def test_unused_key_counts_an_on_demand_rotation_once() -> None:
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    detector.process([create_key(T0, KEY), *rotate_on_demand(T0, KEY)])
    clock.advance(timedelta(days=91).total_seconds())
    [alarm] = detector.tick()
    assert alarm.details["rotations"] == "1"
    assert alarm.details["monthlyCostUsd"] == "2.00" and "$2.00/month" in alarm.summary


def test_unused_key_skips_disabled_aws_managed_and_only_denied_keys() -> None:
    detector = Detector()
    disabled, managed = key_arn(1), key_arn(2)
    detector.process(
        [
            denied("Decrypt", T0, key_arn(3, account="999988887777"), MALLORY),
            create_key(T0, disabled),
            event("DisableKey", T0, disabled),
            create_key(T0, managed, manager="AWS"),
        ]
    )
    assert detector.tick(T0 + timedelta(days=400)) == []


def test_unused_key_skips_an_aws_managed_key_whose_record_spells_keymanager_as_older_tools_do() -> None:
    """`keytrail cost` reads `KeyManager` as well as CloudTrail's `keyManager` (pipeline/frame.py)
    and stores such a key for free: the rule must not ask to delete it to save $1 a month."""
    detector = Detector()
    made = create_key(T0, KEY, manager="AWS")
    metadata = made["responseElements"]["keyMetadata"]
    metadata["KeyManager"] = metadata.pop("keyManager")
    detector.process([made])
    assert detector.tick(T0 + timedelta(days=400)) == []

def test_unused_key_skips_a_key_named_by_an_aws_managed_alias() -> None:
    """alias/aws/… names AWS managed keys alone (AWS KMS concepts, "Aliases"); CloudTrail files
    seldom reach back to their CreateKey, so an idle aws/ssm key used by alias was alarmed as
    a key to delete to save $1.00 a month: it costs nothing and no one can delete it."""
    detector = Detector()
    managed, managed_by_arn, customer = key_arn(1), key_arn(2), key_arn(3)
    by_arn_alias = f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/aws/ebs"
    detector.process([event("Encrypt", T0, managed, params={"keyId": "alias/aws/ssm"}),
                      event("GenerateDataKey", T0, managed_by_arn, params={"keyId": by_arn_alias}),
                      event("Encrypt", T0, customer, params={"keyId": "alias/aws-app"})])
    assert [alarm.key_arn for alarm in detector.tick(T0 + timedelta(days=400))] == [customer]


def re_encrypt_failing_on_destination(at: datetime, source: str, destination: str, identity: dict[str, Any],
                                      error: str, message: str) -> dict[str, Any]:
    """A ReEncrypt refused on its destination key: CloudTrail lists the source key first."""
    record = event("ReEncrypt", at, source, identity, error=error, message=message,
                   params={"destinationKeyId": destination})
    record["resources"].append({"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": destination})
    return record


def test_re_encrypt_denied_on_its_destination_alarms_on_the_destination_key() -> None:
    source, destination = key_arn(1), key_arn(2)
    detector = Detector()
    message = (f"User: {APP_ARN} is not authorized to perform: kms:ReEncryptTo on resource: {destination} "
               "because no resource-based policy allows the kms:ReEncryptTo action")
    detector.process([
        event("Encrypt", T0, source, APP),  # the caller uses the source key: new on the destination only
        event("Encrypt", T0, destination, MALLORY),
        re_encrypt_failing_on_destination(T0 + timedelta(seconds=1), source, destination, APP, "AccessDenied",
                                          message),
    ])
    [alarm] = by_rule(detector.alarms(), "unauthorized-decrypt")
    assert alarm.key_arn == destination and destination in alarm.summary
    assert alarm.details["newPrincipalOnKey"] == "true" and alarm.severity == "HIGH"


def test_re_encrypt_to_a_disabled_destination_alarms_on_the_destination_key() -> None:
    source, destination = key_arn(1), key_arn(2)
    detector = Detector()
    detector.process([
        create_key(T0, source),
        create_key(T0, destination),
        event("DisableKey", T0, destination),
        re_encrypt_failing_on_destination(T0 + timedelta(seconds=1), source, destination, APP,
                                          "DisabledException", f"{destination} is disabled."),
    ])
    [alarm] = by_rule(detector.alarms(), "key-deletion-in-use")
    assert alarm.key_arn == destination and alarm.details["keyState"] == "disabled"


def replica_created(at: datetime, replica: str) -> list[dict[str, Any]]:
    """What the replica's Region logs for a ReplicateKey (docs/multi-region-keys.md): the replica's
    CreateKey, in `Creating`, then KMS's SynchronizeMultiRegionKey when it leaves `Creating`."""
    creating = create_key(at, replica)
    creating["responseElements"]["keyMetadata"].update(keyState="Creating", enabled=False)
    sync = event("SynchronizeMultiRegionKey", at + timedelta(seconds=30), replica,
                 {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}, params={}, response={"keyId": replica})
    sync["requestParameters"] = None
    return [creating, sync]


def test_unused_key_judges_a_replica_once_it_has_left_creating() -> None:
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    replica = key_arn(7).replace("key/", "key/mrk-")
    detector.process(replica_created(T0, replica))
    clock.advance(timedelta(days=91).total_seconds())
    [alarm] = detector.tick()  # a replica costs $1/month as any key (audit-anchors §3.1)
    assert alarm.rule == "unused-key" and alarm.key_arn == replica
    assert alarm.details["basis"] == "creationDate"


def test_unused_key_prices_a_replica_with_its_primary_s_rotations() -> None:
    """The primary's RotateKey gives every replica the new material: `keytrail cost` bills each
    replica the rotation rate too (docs/metrics.md), so the saving the alarm states is the same."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    primary = key_arn(7).replace("key/", "key/mrk-")
    replica = primary.replace(":us-east-1:", ":eu-west-1:")
    detector.process([create_key(T0, primary), *rotate_on_demand(T0 + timedelta(hours=1), primary),
                      *replica_created(T0 + timedelta(hours=2), replica)])
    clock.advance(timedelta(days=91).total_seconds())
    alarms = {alarm.key_arn: alarm for alarm in detector.tick()}
    assert {arn: alarms[arn].details["monthlyCostUsd"] for arn in (primary, replica)} == {
        primary: "2.00", replica: "2.00"}
    assert alarms[replica].details["rotations"] == "1"

def test_unused_key_counts_a_key_of_imported_material_idle_from_its_import() -> None:
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    pending = create_key(T0, KEY)
    pending["responseElements"]["keyMetadata"].update(keyState="PendingImport", enabled=False, origin="EXTERNAL")
    imported = T0 + timedelta(days=120)  # no use was possible before: the key had no material
    detector.process([pending, event("ImportKeyMaterial", imported, KEY, params={"keyId": KEY})])
    clock.advance(timedelta(days=120, hours=1).total_seconds())
    assert detector.tick() == []
    clock.advance(timedelta(days=90).total_seconds())
    [alarm] = detector.tick()
    assert alarm.first_seen == imported + timedelta(days=90)
    assert alarm.details["basis"] == "importDate" and alarm.details["idleSince"] == "2026-05-05T12:00:00Z"


MATERIAL, NEW_MATERIAL = "a" * 64, "b" * 64


def material_expired(at: datetime, key: str, material: str) -> dict[str, Any]:
    """KMS's own record of imported material reaching its ValidTo (an AwsServiceEvent)."""
    expired = event("DeleteExpiredKeyMaterial", at, key, {"accountId": ACCOUNT, "invokedBy": "kms.amazonaws.com"})
    expired.update(requestParameters=None, eventType="AwsServiceEvent",
                   serviceEventDetails={"keyId": key.rsplit("/", 1)[1], "keyMaterialId": material})
    return expired


def key_with_imported_material(at: datetime) -> list[dict[str, Any]]:
    pending = create_key(at, KEY)
    pending["responseElements"]["keyMetadata"].update(keyState="PendingImport", enabled=False, origin="EXTERNAL")
    imported = event("ImportKeyMaterial", at, KEY, params={"keyId": KEY},
                     response={"keyId": KEY, "keyMaterialId": MATERIAL})
    return [pending, imported]


@pytest.mark.parametrize("gone", ["deleted", "expired"])
def test_unused_key_leaves_a_key_whose_material_went_until_it_is_imported_again(gone: str) -> None:
    """Deleted or expired material leaves the key PendingImport (nothing can use it): the ledger
    kept it Enabled and the unused-key alarm told the owner to delete a key no one could use."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    removal = (event("DeleteImportedKeyMaterial", T0, KEY, params={"keyId": KEY},
                     response={"keyId": KEY, "keyMaterialId": MATERIAL})
               if gone == "deleted" else material_expired(T0, KEY, MATERIAL))
    detector.process([*key_with_imported_material(T0), removal])
    clock.advance(timedelta(days=91).total_seconds())
    assert detector.tick() == []
    again = event("ImportKeyMaterial", clock.now(), KEY, params={"keyId": KEY, "importType": "EXISTING_KEY_MATERIAL"},
                  response={"keyId": KEY, "keyMaterialId": MATERIAL})
    detector.process([again])
    [alarm] = detector.tick()  # usable again, and idle since its first import
    assert alarm.rule == "unused-key" and alarm.details["basis"] == "importDate"


def test_unused_key_still_judges_a_key_whose_material_pending_rotation_was_deleted() -> None:
    """New material waits for an on-demand rotation; deleting it leaves the key as it was."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    new = event("ImportKeyMaterial", T0, KEY, params={"keyId": KEY, "importType": "NEW_KEY_MATERIAL"},
                response={"keyId": KEY, "keyMaterialId": NEW_MATERIAL})
    deleted = event("DeleteImportedKeyMaterial", T0, KEY, params={"keyId": KEY, "keyMaterialId": NEW_MATERIAL},
                    response={"keyId": KEY, "keyMaterialId": NEW_MATERIAL})
    detector.process([*key_with_imported_material(T0), new, deleted])
    clock.advance(timedelta(days=91).total_seconds())
    [alarm] = detector.tick()
    assert alarm.rule == "unused-key" and alarm.key_arn == KEY


def test_unused_key_waits_for_every_missing_material_of_a_rotated_imported_key() -> None:
    """A key that rotated into new imported material needs each of its materials back."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    new = event("ImportKeyMaterial", T0, KEY, params={"keyId": KEY, "importType": "NEW_KEY_MATERIAL"},
                response={"keyId": KEY, "keyMaterialId": NEW_MATERIAL})
    rotated = event("RotateKey", T0, KEY, {"accountId": ACCOUNT, "invokedBy": "kms.amazonaws.com"}, params={})
    detector.process([*key_with_imported_material(T0), new, rotated,
                      material_expired(T0, KEY, MATERIAL), material_expired(T0, KEY, NEW_MATERIAL)])
    clock.advance(timedelta(days=91).total_seconds())
    back = [event("ImportKeyMaterial", clock.now(), KEY, params={"keyId": KEY},
                  response={"keyId": KEY, "keyMaterialId": material}) for material in (NEW_MATERIAL, MATERIAL)]
    detector.process(back[:1])
    assert detector.tick() == []  # still missing the first material: PendingImport
    detector.process(back[1:])
    assert [alarm.rule for alarm in detector.tick()] == ["unused-key"]


@pytest.mark.parametrize("material", ["never imported", "deleted"])
def test_unused_key_judges_a_key_imported_after_its_deletion_was_cancelled(material: str) -> None:
    """CancelKeyDeletion leaves a key without its material PendingImport, not Disabled: the ledger
    took it for Disabled, kept it so after the import that enabled it, and never judged it."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    history = key_with_imported_material(T0)
    if material == "never imported":
        history = history[:1]
    else:
        history.append(event("DeleteImportedKeyMaterial", T0, KEY, params={"keyId": KEY},
                             response={"keyId": KEY, "keyMaterialId": MATERIAL}))
    scheduled = event("ScheduleKeyDeletion", T0, KEY, params={"keyId": KEY, "pendingWindowInDays": 7},
                      response={"keyId": KEY, "keyState": "PendingDeletion"})
    cancelled = event("CancelKeyDeletion", T0 + timedelta(days=1), KEY, params={"keyId": KEY},
                      response={"keyId": KEY})
    imported = event("ImportKeyMaterial", T0 + timedelta(days=2), KEY, params={"keyId": KEY},
                     response={"keyId": KEY, "keyMaterialId": MATERIAL})
    detector.process([*history, scheduled, cancelled, imported])
    clock.advance(timedelta(days=93).total_seconds())
    [alarm] = detector.tick()  # Enabled since its import (KMS: PendingImport, then Enabled)
    assert alarm.rule == "unused-key" and alarm.key_arn == KEY


def test_permissive_policy_on_put_key_policy_names_the_statement() -> None:
    detector = Detector()
    policy = policy_doc(
        {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"}
    )
    detector.process(
        [
            create_key(T0, KEY),
            event("PutKeyPolicy", T0, KEY, params={"keyId": KEY, "policyName": "default", "policy": policy}),
        ]
    )
    [alarm] = detector.alarms()
    assert alarm.rule == "permissive-key" and alarm.severity == "CRITICAL"
    assert alarm.principal_arn == f"arn:aws:iam::{ACCOUNT}:user/alice"
    [finding] = json.loads(alarm.details["findings"])
    assert finding["code"] == "public" and finding["statementSid"] == "Everyone"
    assert alarm.details["trigger"] == "PutKeyPolicy"


def test_a_replica_given_a_public_policy_by_replicate_key_is_alarmed_on_the_replica() -> None:
    """ReplicateKey's Policy is the new replica's key policy (API_ReplicateKey): a public one went
    unnoticed, live and offline, the rule reading only CreateKey, PutKeyPolicy and CreateGrant."""
    primary = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/mrk-1234abcd12ab34cd56ef1234567890ab"
    replica = primary.replace("us-east-1", "eu-west-1")
    public = policy_doc({"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt",
                         "Resource": "*"})

    def replicate(policy: str | None) -> dict[str, Any]:
        params = {"keyId": primary, "replicaRegion": "eu-west-1"} | ({"policy": policy} if policy else {})
        return event("ReplicateKey", T0, primary, params=params,
                     response={"replicaKeyMetadata": {"arn": replica, "keyState": "Creating"}})

    detector = Detector()
    detector.process([create_key(T0, primary), replicate(None)])
    assert detector.alarms() == []  # no Policy: the default key policy, which trusts the account only
    detector.process([replicate(public)])
    [alarm] = detector.alarms()
    assert (alarm.rule, alarm.severity, alarm.key_arn, alarm.region) == ("permissive-key", "CRITICAL", replica,
                                                                       "eu-west-1")
    assert alarm.details["trigger"] == "ReplicateKey" and alarm.details["source"] == 'statement "Everyone"'


def test_a_policy_pinned_to_the_key_accounts_own_organization_raises_no_alarm() -> None:
    """The organization the detector is told the key's account is in is trusted, as its account
    is; pinned to another organization, or with the account in none, the same policy is flagged."""
    def sharing_with(org: str) -> str:
        return policy_doc({"Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*",
                           "Condition": {"StringEquals": {"aws:PrincipalOrgID": org}}})

    organizations = {ACCOUNT: "o-homeorg123"}
    flagged: dict[str, list[str]] = {}
    for org_of in ("known", "unknown"):
        detector = Detector(organization_of=organizations.get if org_of == "known" else lambda account: None)
        detector.process([create_key(T0, key_arn(1), sharing_with("o-homeorg123")),
                          create_key(T0, key_arn(2), sharing_with("o-otherorg12"))])
        flagged[org_of] = sorted(alarm.key_arn or "" for alarm in detector.alarms())
    assert flagged == {"known": [key_arn(2)], "unknown": [key_arn(1), key_arn(2)]}


def test_a_policy_naming_an_account_of_the_key_accounts_organization_raises_no_alarm() -> None:
    """Trusting the organization trusts its accounts: a key shared with one of them by name gives
    it no more than sharing with the whole organization, which raises nothing."""
    member, outsider = "444455556666", "555566667777"

    def sharing_with(account: str) -> str:
        principal = {"AWS": f"arn:aws:iam::{account}:root"}
        return policy_doc({"Effect": "Allow", "Principal": principal, "Action": "kms:Decrypt", "Resource": "*"})

    detector = Detector(organization_of={ACCOUNT: "o-homeorg123", member: "o-homeorg123"}.get)
    keys = [create_key(T0, key_arn(1), sharing_with(member)), create_key(T0, key_arn(2), sharing_with(outsider))]
    detector.process(keys)
    assert [(alarm.key_arn, alarm.severity) for alarm in detector.alarms()] == [(key_arn(2), "HIGH")]


def test_create_key_with_restricted_policy_and_default_policy_fire_nothing() -> None:
    restricted = policy_doc(
        {
            "Effect": "Allow",
            "Principal": "*",
            "Action": "kms:Decrypt",
            "Resource": "*",
            "Condition": {"StringEquals": {"kms:CallerAccount": ACCOUNT}},
        }
    )
    detector = Detector()
    detector.process([create_key(T0, key_arn(1), restricted), create_key(T0, key_arn(2))])
    assert detector.alarms() == []


def test_create_grant_to_external_principal() -> None:
    detector = Detector()
    grantee = "arn:aws:iam::999988887777:role/outsider"
    detector.process(
        [
            event(
                "CreateGrant",
                T0,
                KEY,
                params={"keyId": KEY, "granteePrincipal": grantee, "operations": ["Decrypt"]},
                response={"grantId": "g-123"},
            )
        ]
    )
    [alarm] = detector.alarms()
    [finding] = json.loads(alarm.details["findings"])
    assert (finding["code"], finding["grantId"]) == ("grant-external-principal", "g-123")


def test_schedule_deletion_of_recently_used_key_and_use_while_pending() -> None:
    detector = Detector()
    admin = user("admin")
    detector.process(
        [
            create_key(T0, KEY),
            event("Decrypt", T0 + timedelta(days=3), KEY, APP),
            event(
                "ScheduleKeyDeletion",
                T0 + timedelta(days=10),
                KEY,
                admin,
                params={"keyId": KEY, "pendingWindowInDays": 7},
            ),
            event(
                "Decrypt",
                T0 + timedelta(days=11),
                KEY,
                APP,
                error="KMSInvalidStateException",
                message=f"{KEY} is pending deletion.",
            ),
        ]
    )
    stop, use = detector.alarms()
    assert (stop.rule, stop.severity, stop.principal_arn) == ("key-deletion-in-use", "CRITICAL", admin["arn"])
    assert stop.details["lastUsedBy"] == APP_ARN and stop.details["pendingWindowInDays"] == "7"
    assert (use.principal_arn, use.severity, use.details["keyState"]) == (APP_ARN, "HIGH", "pending deletion")
    # "find the caller": where the call came from and with which credentials
    assert (use.details["sourceIPAddresses"], use.details["accessKeyIds"]) == ("192.0.2.0", "ASIAEXAMPLE")


# A multi-Region primary scheduled for deletion while replicas remain is PendingReplicaDeletion, and
# refuses its users in those words (docs/multi-region-keys.md): still a key on its way to deletion,
# whether or not the events read hold its ScheduleKeyDeletion (a trail or window that starts later).
def test_use_of_a_primary_pending_replica_deletion_is_a_use_of_a_doomed_key() -> None:
    detector = Detector()
    detector.process([
        event("Encrypt", T0, KEY, APP, error="KMSInvalidStateException",
              message=f"{KEY} is pending replica deletion."),
    ])
    [use] = detector.alarms()
    assert (use.rule, use.severity, use.details["keyState"]) == ("key-deletion-in-use", "HIGH", "pending deletion")


# A caller relying on ScheduleKeyDeletion's default waiting period sends no pendingWindowInDays: the
# response carries it (keytrail's records do), and a record with neither was scheduled for AWS's 30.
@pytest.mark.parametrize(("response", "window"), [({"pendingWindowInDays": 30}, "30"), ({}, "30"),
                                                  ({"pendingWindowInDays": 12}, "12")])
def test_the_pending_window_of_a_deletion_scheduled_with_the_default_is_in_the_details(
        response: dict[str, Any], window: str) -> None:
    detector = Detector()
    detector.process([
        create_key(T0, KEY),
        event("Decrypt", T0 + timedelta(days=3), KEY, APP),
        event("ScheduleKeyDeletion", T0 + timedelta(days=10), KEY, user("admin"), params={"keyId": KEY},
              response={"keyId": KEY, "keyState": "PendingDeletion", **response}),
    ])
    [stop] = detector.alarms()
    assert (stop.rule, stop.details["operation"]) == ("key-deletion-in-use", "ScheduleKeyDeletion")
    assert stop.details["pendingWindowInDays"] == window


def test_a_disabled_key_in_use_has_no_pending_window() -> None:
    detector = Detector()
    detector.process([create_key(T0, KEY), event("Decrypt", T0 + timedelta(days=3), KEY, APP),
                      event("DisableKey", T0 + timedelta(days=4), KEY, user("admin"), params={"keyId": KEY})])
    [stop] = detector.alarms()
    assert stop.details["operation"] == "DisableKey" and "pendingWindowInDays" not in stop.details


# CancelKeyDeletion leaves the key Disabled (API_CancelKeyDeletion): "cancel or re-enable" sent the
# responder away after the cancel, with every user of the key still failing on DisabledException.
def test_a_deletion_alarm_says_to_enable_the_key_after_cancelling() -> None:
    detector = Detector()
    detector.process([
        create_key(T0, KEY),
        event("Decrypt", T0 + timedelta(days=3), KEY, APP),
        event("ScheduleKeyDeletion", T0 + timedelta(days=10), KEY, user("admin"), params={"keyId": KEY},
              response={"keyId": KEY, "keyState": "PendingDeletion", "pendingWindowInDays": 30}),
        event("Decrypt", T0 + timedelta(days=11), KEY, APP, error="KMSInvalidStateException",
              message=f"{KEY} is pending deletion."),
    ])
    for alarm in detector.alarms():
        assert "CancelKeyDeletion" in alarm.recommendation and "EnableKey" in alarm.recommendation
    assert len(detector.alarms()) == 2


def test_disabling_a_key_unused_for_more_than_30_days_is_fine() -> None:
    detector = Detector()
    detector.process([event("Decrypt", T0, KEY, APP), event("DisableKey", T0 + timedelta(days=31), KEY)])
    assert detector.alarms() == []


def _spiking(calls: int) -> Detector:
    """A detector that saw 2 hours of 5 calls a minute, then `calls` calls at 10 a second."""
    detector = Detector()
    records = steady_traffic(KEY, APP, T0, minutes=120, per_minute=5)
    records += [event("Decrypt", BURST + timedelta(milliseconds=100 * i), KEY, APP) for i in range(calls)]
    detector.process(records)
    return detector


BURST = T0 + timedelta(minutes=120)


def test_usage_spike_carries_baseline_and_observed_rate() -> None:
    [alarm] = _spiking(400).alarms()
    assert alarm.rule == "usage-spike" and alarm.principal_arn == APP_ARN
    assert float(alarm.details["baselineAverage"]) == 5.0
    assert alarm.details["baselineDurationMinutes"] == "120"
    # The minute crossed 10x baseline at 100 calls (MEDIUM), then went on to 50x at 250: HIGH.
    assert (alarm.severity, alarm.count, int(alarm.details["observedRate"])) == ("HIGH", 2, 250)


def test_usage_spike_watches_callers_with_no_arn_each_on_its_own() -> None:
    """A SAML or web identity user (as CloudTrail logs them: no ARN, account or access key) or an
    AWS service surging on a key raised nothing: the rule passed over callers with no ARN. Each is
    one caller by its principalId or service, not one with every other such caller of the account."""
    steady = [federated("SAMLUser", "ann"), federated("WebIdentityUser", "bo"), AWS_SERVICE]
    records = [r for who in steady for r in steady_traffic(KEY, who, T0, minutes=120, per_minute=5)]
    for surging in (federated("WebIdentityUser", "bo"), AWS_SERVICE):
        records += [event("Decrypt", BURST + timedelta(milliseconds=100 * i), KEY, surging) for i in range(150)]
    detector = Detector()
    detector.process(sorted(records, key=lambda r: r["eventTime"]))
    alarms = sorted(by_rule(detector.alarms(), "usage-spike"), key=lambda a: a.summary)
    assert [(a.principal_arn, a.details["baselineAverage"], a.details["observedRate"]) for a in alarms] == [
        (None, "5.0000", "100"), (None, "5.0000", "100")]
    assert alarms[0].summary.startswith(
        f"a caller with no ARN (account {ACCOUNT}, AWS service cloudtrail.amazonaws.com) made 100 calls/min")
    assert alarms[1].summary.startswith(
        f"a caller with no ARN (account {ACCOUNT}, principalId accounts.google.com:bo) made 100 calls/min")


def test_usage_spike_of_a_busy_pair_reaches_high_within_its_minute() -> None:
    # Judged only at the call that crossed factor x baseline, a pair whose baseline was over
    # min_calls / high_factor (2 a minute) stayed MEDIUM however large the surge.
    detector = _spiking(200)
    [alarm] = detector.alarms()
    assert (alarm.severity, alarm.count, alarm.details["observedRate"]) == ("MEDIUM", 1, "100")  # not yet 250
    detector.process([event("Decrypt", BURST + timedelta(seconds=20, milliseconds=100 * i), KEY, APP)
                      for i in range(50)])
    [alarm] = detector.alarms()
    assert (alarm.severity, alarm.count, alarm.details["observedRate"]) == ("HIGH", 2, "250")


def _burst(start: datetime, minutes: int, per_minute: int) -> list[dict[str, Any]]:
    return steady_traffic(KEY, APP, start, minutes=minutes, per_minute=per_minute)


def _nights(detector: Detector, *batches: int) -> list[Any]:
    """A key called once a minute by APP, with a 5-minute batch of `batches[n]` calls a minute at
    02:00 of night n; the usage-spike alarms it raised."""
    start = T0.replace(hour=0)
    records = _burst(start, 1440 * len(batches), 1)
    for night, per_minute in enumerate(batches):
        records += _burst(start + timedelta(days=night, hours=2), 5, per_minute)
    records.sort(key=lambda r: r["eventTime"])
    detector.process(records)
    return by_rule(detector.alarms(), "usage-spike")


def test_usage_spike_does_not_fire_at_every_run_of_a_nightly_batch() -> None:
    """A nightly batch at 30x the average, 5 minutes every night, fired every night."""
    first, *later = _nights(Detector(), 150, 150, 150)
    assert first.first_seen.day == T0.day and later == []  # its first run is news; the runs after it are not
    assert first.details["baselinePeakRate"] == "1"
    again = _nights(Detector(RuleSet().override({"usage-spike": {"parameters": {"peak_factor": 0.0}}})), 150, 150)
    assert len(again) == 2  # peak_factor 0: judged against the average alone, as before


def test_usage_spike_still_fires_at_twice_the_busiest_minute_of_a_bursty_pair() -> None:
    *_, spike = _nights(Detector(), 150, 150, 400)
    assert spike.first_seen.day == T0.day + 2
    assert (spike.details["baselinePeakRate"], spike.details["observedRate"]) == ("151", "302")


def test_usage_spike_restarts_the_history_of_a_pair_silent_for_longer_than_its_baseline() -> None:
    """A pair silent for 8 days had a baseline of 0 calls a minute: any return to work fired."""
    detector = Detector()
    back = T0 + timedelta(days=10)
    detector.process(_burst(T0, 120, 5) + _burst(back, 1, 150))
    assert detector.alarms() == []  # its history starts again: min_history_minutes applies
    detector.process(_burst(back + timedelta(minutes=1), 60, 5) + _burst(back + timedelta(minutes=61), 1, 400))
    [alarm] = detector.alarms()  # an hour on, judged against that hour (its return minute the busiest)
    assert (alarm.details["baselineDurationMinutes"], alarm.details["baselinePeakRate"],
            alarm.details["observedRate"]) == ("61", "150", "369")  # fired at 300 (2 x 150), HIGH at 50 x 7.38


def test_usage_spike_with_no_history_required_fires_without_dividing_by_none() -> None:
    # min_history_minutes 0 let a pair's first minute reach the baseline of 0 minutes of history.
    detector = Detector(RuleSet().override({"usage-spike": {"parameters": {"min_history_minutes": 0}}}))
    detector.process([event("Decrypt", T0 + timedelta(milliseconds=100 * i), KEY, APP) for i in range(100)])
    [alarm] = detector.alarms()
    assert (alarm.rule, alarm.details["baselineAverage"], alarm.details["baselineDurationMinutes"]) == (
        "usage-spike", "0.0000", "0")


def test_repeated_event_ids_are_processed_once() -> None:
    detector = Detector()
    record = denied("Decrypt", T0, KEY, MALLORY)
    detector.process([record, record, dict(record)])
    assert detector.alarms()[0].count == 1


def test_non_kms_and_unreadable_records_are_skipped() -> None:
    detector = Detector()
    detector.process(
        [{"eventSource": "s3.amazonaws.com", "eventName": "GetObject"}, {"eventName": "Decrypt"}]
    )
    assert detector.skipped == 2 and detector.alarms() == []


def test_tick_reports_updates_of_open_alarms() -> None:
    detector = Detector()
    detector.process([denied("Decrypt", T0, KEY, MALLORY), denied("Decrypt", T0, KEY, MALLORY)])
    [update] = detector.tick()
    assert update.count == 2
    assert detector.tick() == []


def test_closed_and_announced_alarms_are_forgotten_by_long_running_detectors() -> None:
    detector = Detector()
    detector.process([denied("Decrypt", T0, KEY, MALLORY), denied("Decrypt", T0, key_arn(2), MALLORY)])
    detector.process([denied("Decrypt", T0 + timedelta(minutes=30), key_arn(2), MALLORY)])
    assert detector.forget_closed(T0 + timedelta(minutes=61)) == 1  # KEY's window has closed
    assert [a.key_arn for a in detector.alarms()] == [key_arn(2)]
    assert detector.forget_closed(T0 + timedelta(minutes=95)) == 0  # its update is not announced yet
    detector.tick()
    assert detector.forget_closed(T0 + timedelta(minutes=95)) == 1
    assert detector.alarms() == []


def test_a_slot_raising_window_after_window_keeps_one_alarm_in_a_long_running_detector() -> None:
    detector = Detector()
    for hour in range(0, 200, 2):  # a new alarm of the same rule x key x principal every 2 h (window 1 h)
        at = T0 + timedelta(hours=hour)
        assert [a.first_seen for a in detector.process([denied("Decrypt", at, KEY, MALLORY)])] == [at]
        detector.tick(at)
        detector.forget_closed(at)
    assert [a.first_seen for a in detector.alarms()] == [T0 + timedelta(hours=198)]


def test_a_closed_window_superseded_before_its_update_was_announced_still_announces_it() -> None:
    detector = Detector()
    detector.process([denied("Decrypt", T0, KEY, MALLORY), denied("Decrypt", T0, KEY, MALLORY)])
    later = T0 + timedelta(hours=2)
    [fresh] = detector.process([denied("Decrypt", later, KEY, MALLORY)])  # a new window, same slot
    detector.forget_closed(later)
    assert len(detector.alarms()) == 2  # the first alarm's count 2 is not announced yet
    assert [(a.first_seen, a.count) for a in detector.tick(later)] == [(T0, 2)]
    detector.forget_closed(later)
    assert [a.alarm_id for a in detector.alarms()] == [fresh.alarm_id]


def test_offline_detection_lists_every_window_of_a_slot() -> None:
    detector = Detector()
    detector.process([denied("Decrypt", T0 + timedelta(hours=h), KEY, MALLORY) for h in (0, 2, 4)])
    detector.tick()
    assert len(detector.alarms()) == 3


def test_both_accounts_copies_of_a_cross_account_call_count_once() -> None:
    """An organization trail holds a call on another account's key twice, in the caller's account
    and in the key owner's, each with its own eventID and one sharedEventID: the detector counted
    two calls (an alarm's count doubled), where the consumers count one."""
    admin = user("admin")
    attempt = event("Decrypt", T0 + timedelta(days=11), KEY, APP, error="KMSInvalidStateException",
                    message=f"{KEY} is pending deletion.")
    copies = [{**attempt, "eventID": f"copy-{n}", "sharedEventID": "one-call"} for n in range(2)]
    detector = Detector()
    detector.process([create_key(T0, KEY), event("ScheduleKeyDeletion", T0 + timedelta(days=10), KEY, admin),
                      *copies, {**attempt, "eventID": "another-call"}])
    [use] = [alarm for alarm in detector.alarms() if alarm.principal_arn == APP_ARN]
    assert use.count == 2 and set(use.event_ids) == {"copy-0", "another-call"}


def test_a_tick_as_of_a_clock_ahead_of_the_stream_does_not_unfold_the_next_key_denied() -> None:
    # Behind the clock by more than the window, a live detector's tick forgot the key alarms of a
    # principal still being denied: its next key got a fourth key alarm instead of folding.
    detector = Detector()
    keys = [key_arn(n) for n in range(4)]
    detector.process([denied("Decrypt", T0 + timedelta(seconds=n), k, MALLORY) for n, k in enumerate(keys[:3])])
    detector.tick(T0 + timedelta(hours=2))
    detector.process([denied("Decrypt", T0 + timedelta(minutes=1), keys[3], MALLORY)])
    assert [a.key_arn for a in detector.alarms()] == [*keys[:3], None]


def _through_an_endpoint(record: dict[str, Any]) -> dict[str, Any]:
    """The network activity event CloudTrail writes beside a call made through a VPC endpoint."""
    return {**record, "eventID": f"vpce-{record['eventID']}", "eventType": "AwsVpceEvent",
            "eventCategory": "NetworkActivity", "sharedEventID": f"shared-{record['eventID']}"}


def test_network_activity_events_neither_use_a_key_nor_hide_a_denial() -> None:
    """They repeat a call that has its own record, or one the endpoint refused: as calls they kept
    a key from being unused, and by their sharedEventID they made each AccessDenied Decrypt after
    them a duplicate (no alarm)."""
    clock = ManualClock(T0)
    detector = Detector(clock=clock)
    idle, guarded = key_arn(1), key_arn(2)
    records = [create_key(T0, idle), create_key(T0, guarded),
               _through_an_endpoint(event("Encrypt", T0 + timedelta(days=60), idle, APP))]
    for n in range(12):
        denial = denied("Decrypt", T0 + timedelta(days=61, minutes=n), guarded, user("mallory"))
        records += [_through_an_endpoint(denial), {**denial, "sharedEventID": f"shared-{denial['eventID']}"}]
    detector.process(records)
    [alarm] = [a for a in detector.alarms() if a.rule == "unauthorized-decrypt"]
    assert alarm.count == 12 and alarm.key_arn == guarded
    clock.advance(timedelta(days=91).total_seconds())
    assert idle in {a.key_arn for a in detector.tick() if a.rule == "unused-key"}
