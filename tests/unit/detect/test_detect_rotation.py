"""`rotation-disabled` (CIS AWS Foundations 3.6, Security Hub KMS.4): live over events, over an
inventory (`keytrail analyze`), its exemptions and its configuration."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.unit.detect.records import ACCOUNT, REGION, T0, create_key, event, key_arn, role, user

from keytrail.audit.schema import encode
from keytrail.detect import Detector, KeyInventoryItem, RuleError, RuleSet, analyze_inventory, load_rules
from keytrail.detect.inventory import read_inventory
from keytrail.detect.runner import DetectorRunner

KEY = key_arn(1)
ADMIN = user("admin")
OPS = role("ops")
RULE = "rotation-disabled"


def disable_rotation(at: Any, key: str, identity: dict[str, Any] | None = None, *, key_id: str | None = None,
                     error: str | None = None) -> dict[str, Any]:
    """A DisableKeyRotation record as AWS writes it (ct-disable-key-rotation): keyId as the caller
    gave it (an ARN or a bare id), the resolved key ARN in resources[], responseElements null."""
    return event("DisableKeyRotation", at, key, identity or ADMIN, params={"keyId": key_id or key}, error=error)


def alias_event(name: str, at: Any, key: str, alias: str) -> dict[str, Any]:
    record = event(name, at, key, ADMIN, params={"aliasName": alias, "targetKeyId": key.rsplit("/", 1)[1]})
    alias_arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"
    record["resources"].insert(0, {"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": alias_arn})
    return record


def rotation_alarms(detector: Detector) -> list:
    return [alarm for alarm in detector.alarms() if alarm.rule == RULE]


def rules_with(**parameters: Any) -> RuleSet:
    return RuleSet().override({RULE: {"parameters": parameters}})


def test_disabling_rotation_raises_a_medium_alarm_naming_who_and_the_operation() -> None:
    detector = Detector()
    record = disable_rotation(T0 + timedelta(minutes=5), KEY, OPS, key_id=KEY.rsplit("/", 1)[1])
    announced = detector.process([create_key(T0, KEY), record])
    [alarm] = rotation_alarms(detector)
    assert announced == [alarm]
    assert (alarm.severity, alarm.key_arn, alarm.principal_arn) == ("MEDIUM", KEY, f"arn:aws:iam::{ACCOUNT}:role/ops")
    assert (alarm.account_id, alarm.region, alarm.event_ids) == (ACCOUNT, REGION, (record["eventID"],))
    assert alarm.details["operation"] == alarm.details["trigger"] == "DisableKeyRotation"
    assert alarm.details["keyRotationEnabled"] == "false" and "aliases" not in alarm.details
    assert "disabled automatic rotation of " + KEY in alarm.summary and "KMS.4" in alarm.summary
    assert "EnableKeyRotation" in alarm.recommendation


def test_a_key_created_without_rotation_is_left_to_the_inventory_and_failed_calls_raise_nothing() -> None:
    detector = Detector()
    detector.process([
        create_key(T0, KEY),  # every new key starts with rotation off: not alarmed live
        event("EnableKeyRotation", T0 + timedelta(minutes=1), KEY, ADMIN, params={"keyId": KEY}),
        disable_rotation(T0 + timedelta(minutes=2), KEY, user("eve"), error="AccessDenied"),
        disable_rotation(T0 + timedelta(minutes=3), key_arn(2), error="UnsupportedOperationException"),
    ])
    assert rotation_alarms(detector) == []


def test_disabling_again_within_the_window_counts_on_the_same_alarm() -> None:
    detector = Detector()
    detector.process([disable_rotation(T0, KEY), disable_rotation(T0 + timedelta(hours=2), KEY),
                      disable_rotation(T0 + timedelta(days=3), KEY)])
    assert [alarm.count for alarm in rotation_alarms(detector)] == [2, 1]  # window 1d


def test_an_aws_managed_key_the_ledger_knows_raises_nothing() -> None:
    # AWS refuses DisableKeyRotation on AWS managed keys; a record saying otherwise is not a CMK finding.
    detector = Detector()
    detector.process([create_key(T0, KEY, manager="AWS"), disable_rotation(T0 + timedelta(minutes=1), KEY)])
    assert rotation_alarms(detector) == []


def test_exempt_keys_and_exempt_aliases_silence_their_keys() -> None:
    legacy, other, renamed = key_arn(1), key_arn(2), key_arn(3)
    detector = Detector(rules_with(exempt_keys=[f"arn:aws:kms:*:{ACCOUNT}:key/00000002-*"],
                                   exempt_aliases=["alias/legacy-*"]))
    detector.process([
        alias_event("CreateAlias", T0, legacy, "alias/legacy-billing"),
        alias_event("CreateAlias", T0, renamed, "alias/legacy-reports"),
        alias_event("UpdateAlias", T0 + timedelta(seconds=1), legacy, "alias/legacy-reports"),  # moved onto legacy
        disable_rotation(T0 + timedelta(minutes=1), legacy),
        disable_rotation(T0 + timedelta(minutes=1), other),
        disable_rotation(T0 + timedelta(minutes=1), renamed),  # its alias went to another key
    ])
    [alarm] = rotation_alarms(detector)
    assert alarm.key_arn == renamed and "aliases" not in alarm.details


def test_an_alias_updated_onto_another_key_exempts_its_new_key_not_its_old_one() -> None:
    # UpdateAlias names both keys in resources[], the old one first (AWS's records and keytrail's):
    # the alias followed the old key, exempting it and leaving its new key to alarm.
    old, new = key_arn(1), key_arn(2)
    moved = alias_event("UpdateAlias", T0 + timedelta(seconds=1), old, "alias/legacy-billing")
    moved["resources"].append({"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": new})
    moved["requestParameters"]["targetKeyId"] = new.rsplit("/", 1)[1]
    detector = Detector(rules_with(exempt_aliases=["alias/legacy-*"]))
    detector.process([
        alias_event("CreateAlias", T0, old, "alias/legacy-billing"),
        moved,
        disable_rotation(T0 + timedelta(minutes=1), old),
        disable_rotation(T0 + timedelta(minutes=1), new),
    ])
    [alarm] = rotation_alarms(detector)
    assert alarm.key_arn == old and "aliases" not in alarm.details


def test_a_deleted_alias_no_longer_exempts_and_known_aliases_name_the_key() -> None:
    detector = Detector(rules_with(exempt_aliases=["alias/legacy-*"]))
    detector.process([
        alias_event("CreateAlias", T0, KEY, "alias/legacy-billing"),
        alias_event("CreateAlias", T0, KEY, "alias/billing"),
        alias_event("DeleteAlias", T0 + timedelta(seconds=1), KEY, "alias/legacy-billing"),
        disable_rotation(T0 + timedelta(minutes=1), KEY),
    ])
    [alarm] = rotation_alarms(detector)
    assert alarm.details["aliases"] == "alias/billing" and f"{KEY} (alias/billing)" in alarm.summary


def test_a_disabled_rule_raises_nothing() -> None:
    detector = Detector(RuleSet().override({RULE: {"enabled": False}}))
    detector.process([disable_rotation(T0, KEY)])
    assert detector.alarms() == []


async def test_avro_values_as_serve_and_kafka_read_them_raise_the_alarm(tmp_path: Path) -> None:
    later = T0 + timedelta(minutes=1)
    records = [alias_event("CreateAlias", T0, key_arn(2), "alias/legacy-x"),
               disable_rotation(later, KEY), disable_rotation(later, key_arn(2))]
    runner = DetectorRunner.open(tmp_path, rules=rules_with(exempt_aliases=["alias/legacy-*"]))
    await runner.feed_values([encode(record) for record in records])
    assert [(alarm.rule, alarm.key_arn) for alarm in runner.alarms()] == [(RULE, KEY)]
    await runner.close()


def item(n: int, **fields: Any) -> KeyInventoryItem:
    return KeyInventoryItem(key_arn(n), **{"rotation_enabled": False, **fields})


def test_analyze_reports_each_enabled_customer_symmetric_key_with_rotation_off() -> None:
    keys = [
        item(1, aliases=("alias/orders",)),
        item(2, rotation_enabled=True),
        item(3, rotation_enabled=None),  # status not in the inventory: not judged
        item(4, key_spec="RSA_2048"),
        item(5, key_spec="HMAC_256"),
        item(6, origin="EXTERNAL"),
        item(7, origin="AWS_CLOUDHSM", custom_key_store_id="cks-1234567890abcdef0"),
        item(8, replica=True),  # rotates with its primary
        item(9, key_state="Disabled"),
        item(10, key_state="PendingDeletion"),
        item(11, key_manager="AWS"),
        item(12, key_state="PendingImport", origin="EXTERNAL"),
    ]
    [alarm] = analyze_inventory(keys, as_of=T0)
    assert (alarm.rule, alarm.key_arn, alarm.principal_arn, alarm.severity) == (RULE, key_arn(1), None, "MEDIUM")
    assert (alarm.account_id, alarm.region, alarm.first_seen) == (ACCOUNT, REGION, T0)
    assert alarm.details == {"trigger": "analyze", "keyRotationEnabled": "false", "aliases": "alias/orders"}
    assert alarm.summary == f"Automatic rotation of {key_arn(1)} (alias/orders) is off " \
                            "(CIS AWS Foundations 3.6, Security Hub KMS.4)"


def test_analyze_honours_exemptions_and_the_enabled_switch() -> None:
    keys = [item(1, aliases=("alias/legacy-a",)), item(2), item(3)]
    rules = rules_with(exempt_aliases=["alias/legacy-*"], exempt_keys=[key_arn(2)])
    assert [alarm.key_arn for alarm in analyze_inventory(keys, as_of=T0, rules=rules)] == [key_arn(3)]
    assert analyze_inventory(keys, as_of=T0, rules=RuleSet().override({RULE: {"enabled": False}})) == []


def test_inventory_reads_describe_key_rotation_status_and_alias_fields() -> None:
    [primary, replica, bare] = read_inventory([
        {"KeyArn": key_arn(1), "KeySpec": "SYMMETRIC_DEFAULT", "Origin": "AWS_KMS", "KeyRotationEnabled": False,
         "MultiRegionConfiguration": {"MultiRegionKeyType": "PRIMARY"},
         "Aliases": ["alias/a", {"AliasName": "alias/b", "TargetKeyId": "x"}]},
        {"KeyArn": key_arn(2), "KeyRotationEnabled": False,
         "MultiRegionConfiguration": {"MultiRegionKeyType": "REPLICA"}},
        {"KeyArn": key_arn(3)},
    ])
    assert primary.rotation_off() and primary.aliases == ("alias/a", "alias/b") and not primary.replica
    assert replica.replica and not replica.rotation_off()
    assert bare.rotation_enabled is None and (bare.key_spec, bare.origin) == ("SYMMETRIC_DEFAULT", "AWS_KMS")


def test_configuration_takes_globs_and_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[rules.rotation-disabled]\nseverity = "HIGH"\n'
                    'parameters = { exempt_aliases = ["alias/legacy-*"], exempt_keys = [] }\n')
    rule = load_rules(path)[RULE]
    assert rule.severity == "HIGH" and rule.param("exempt_aliases") == ["alias/legacy-*"]
    for text, message in (
        ("[rules.rotation-disabled]\nparameters = { exempt_alias = [] }", "unknown parameter 'exempt_alias'"),
        ('[rules.rotation-disabled]\nparameters = { exempt_aliases = "alias/x" }',
         "parameter exempt_aliases must be a list of strings"),
        ("[rules.rotation-disabled]\nenabled = 1", "enabled must be true or false"),
        ('[rules.rotation-disabled]\nrotation_days = 365', "unknown setting"),
    ):
        path.write_text(text)
        with pytest.raises(RuleError, match=message):
            load_rules(path)
