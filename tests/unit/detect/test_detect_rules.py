"""Rules as data: defaults, TOML overrides, deny-reason parsing, alarm JSON form."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from keytrail.detect import DEFAULT_RULES, RuleError, Severity, load_rules
from keytrail.detect.alarms import Alarm
from keytrail.detect.deny import parse_deny_reason
from keytrail.detect.rules import parse_duration


def test_every_contract_rule_is_registered() -> None:
    assert set(DEFAULT_RULES) == {
        "unauthorized-decrypt",
        "unused-key",
        "permissive-key",
        "key-deletion-in-use",
        "usage-spike",
        "rotation-disabled",
        "new-principal-on-key",
        "key-reconnaissance",
    }
    assert DEFAULT_RULES["unused-key"].param("unused_days") == 90


def test_toml_overrides_severity_window_thresholds_and_parameters(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("""
[rules.unauthorized-decrypt]
severity = "HIGH"
window = "10m"
thresholds = { CRITICAL = 3 }
parameters = { allow_principals = ["arn:aws:iam::*:role/scanner"] }

[rules.usage-spike]
enabled = false
""")
    rules = load_rules(path)
    rule = rules["unauthorized-decrypt"]
    assert (rule.severity, rule.window) == (Severity.HIGH, timedelta(minutes=10))
    assert rule.severity_for(2) == "HIGH" and rule.severity_for(3) == "CRITICAL"
    assert dict(rule.thresholds) == {Severity.CRITICAL: 3}  # the whole map replaced (docs/detection-rules.md)
    assert rule.param("allow_principals") == ["arn:aws:iam::*:role/scanner"]
    assert rule.param("suppress_aws_services") is True  # untouched parameters keep defaults
    assert not rules.enabled("usage-spike")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[rules.no-such-rule]\nseverity = "LOW"', "unknown rule"),
        ("[rules.unused-key]\nparameters = { unused_dayz = 3 }", "unknown parameter"),
        ('[rules.unused-key]\nseverity = "SEVERE"', "SEVERE"),
        # The enum's "'SEVERE' is not a valid Severity" named neither the setting nor what it takes.
        ('[rules.unused-key]\nseverity = "high"',
         "rule unused-key: severity must be one of LOW, MEDIUM, HIGH, CRITICAL, not 'high'"),
        ("[rules.unused-key]\nseverity = 3", "severity must be one of LOW, MEDIUM, HIGH, CRITICAL, not 3"),
        ("[rules.unauthorized-decrypt]\nthresholds = { URGENT = 5 }",
         "thresholds keys must be one of LOW, MEDIUM, HIGH, CRITICAL, not 'URGENT'"),
        # CRITICAL at 10 would have an alarm skip HIGH altogether.
        ("[rules.unauthorized-decrypt]\nthresholds = { HIGH = 50, CRITICAL = 10 }",
         "rule unauthorized-decrypt: thresholds must not fall as the severity rises: "
         "CRITICAL at 10 is below HIGH at 50"),
        ('[rules.unused-key]\nwindow = "soon"', "bad duration"),
        ("[rules.unauthorized-decrypt]\nthresholds = { CRITICAL = 100000000000000000000 }",
         r"thresholds map a severity to a number of alarms \(1 to 1,000,000,000\)"),
        ('[rules.unused-key]\nwindow = "\u0661h"', "bad duration"),  # an Arabic-Indic one was taken as 1
        ('[rules.unused-key]\ncolour = "red"', "unknown setting"),
        ("[rules", "cannot read"),
        ("rules = 5", r"\[rules\] must be a table"),
        ("[rules]\nunused-key = 5", r"\[rules.unused-key\] must be a table"),
        ("[rules.unused-key]\nparameters = 5", "parameters must be a table"),
        ('[rules.unused-key]\nparameters = { unused_days = "x" }', "unused_days must be a whole number"),
        ("[rules.unused-key]\nparameters = { unused_days = -5 }", "unused_days must be a whole number from 0 to"),
        # Past a century a window or a span of days overflowed the time arithmetic: a traceback from
        # `detect`, and `serve`'s detector failing every batch.
        ("[rules.unused-key]\nparameters = { unused_days = 99999999999999999 }", "from 0 to 36,500, not 9999"),
        ("[rules.usage-spike]\nparameters = { min_history_minutes = 100000000 }", "from 0 to 52,560,000"),
        ("[rules.usage-spike]\nparameters = { min_calls = 10000000000 }", "from 0 to 1,000,000,000"),
        ("[rules.usage-spike]\nparameters = { factor = inf }", "factor must be a number from 0 to"),
        ("[rules.usage-spike]\nparameters = { factor = nan }", "factor must be a number from 0 to"),
        ('[rules.unauthorized-decrypt]\nwindow = "99999999999999d"', "at most 36500 days"),
        ("[rules.unauthorized-decrypt]\nwindow = inf", "at most 36500 days"),
        ("[rules.unauthorized-decrypt]\nwindow = nan", "more than 0"),
        ("[rules.unauthorized-decrypt]\nwindow = -3600", "more than 0"),  # "-1h" was refused, -3600 taken
        ("[rules.unauthorized-decrypt]\nwindow = 0", "more than 0"),
        ("[rules.unused-key]\nparameters = { include_unknown_manager = 1 }", "must be true or false"),
        ('[rules.usage-spike]\nparameters = { factor = "x" }', "factor must be a number"),
        ('[rules.permissive-key]\nparameters = { trusted_accounts = "x" }', "must be a list of strings"),
        # A malformed organization id never matched, so the trust it meant was missing unsaid.
        ('[rules.permissive-key]\nparameters = { trusted_org_ids = ["o-abc123"] }',
         "trusted_org_ids takes AWS Organizations ids, o- and 10 to 32 lowercase letters or digits, not 'o-abc123'"),
        ('[rules.permissive-key]\nparameters = { trusted_org_ids = ["o-A1B2C3D4E5"] }', "not 'o-A1B2C3D4E5'"),
        ('[rules.permissive-key]\nparameters = { trusted_accounts = ["o-a1b2c3d4e5"] }',
         "trusted_accounts takes AWS account ids, 12 digits, not 'o-a1b2c3d4e5'"),
        ('[rules.permissive-key]\nparameters = { trusted_accounts = ["12345"] }', "not '12345'"),
        ("[rules.unauthorized-decrypt]\nwindow = []", "window must be a duration"),
        ("[rules.unauthorized-decrypt]\nthresholds = 5", "thresholds must be a table"),
        ('[rules.unauthorized-decrypt]\nthresholds = { HIGH = "x" }', "thresholds map a severity"),
        ('[rules.usage-spike]\nenabled = "no"', "enabled must be true or false"),
    ],
)
def test_bad_rules_files_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(text)
    with pytest.raises(RuleError, match=message):
        load_rules(path)


def test_a_rules_file_that_is_not_utf8_is_refused_as_a_rule_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes(b"[rules.usage-spike]\n# M\xfcnchen\n")  # Latin-1: no UTF-8, as TOML must be
    with pytest.raises(RuleError, match="cannot read rules file .*utf-8"):
        load_rules(path)


def test_a_rules_file_nested_too_deeply_is_refused_as_a_rule_error(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("x = " + "[" * 2000 + "]" * 2000)  # tomllib recursed past Python's limit: RecursionError
    with pytest.raises(RuleError, match="cannot read rules file .*: values nested too deeply"):
        load_rules(path)


def test_parameters_of_the_right_kind_apply(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text("[rules.usage-spike]\nwindow = 600\nthresholds = { HIGH = 3 }\n"
                    "parameters = { factor = 4, min_calls = 0 }\n")
    rule = load_rules(path)["usage-spike"]
    assert rule.window == timedelta(minutes=10) and rule.thresholds == {Severity.HIGH: 3}
    assert rule.param("factor") == 4.0 and isinstance(rule.param("factor"), float) and rule.param("min_calls") == 0


def test_well_formed_trusted_org_ids_apply(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[rules.permissive-key]\nparameters = { trusted_org_ids = ["o-a1b2c3d4e5"] }\n')
    assert load_rules(path)["permissive-key"].param("trusted_org_ids") == ["o-a1b2c3d4e5"]


def test_a_settings_file_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    # A UTF-8 BOM (Notepad's, PowerShell's) is allowed in TOML (toml-lang/toml#437); serve, detect and
    # load_rules refused the file with "Invalid statement (at line 1, column 1)".
    from keytrail.cli.detect import detector_settings

    path = tmp_path / "settings.toml"
    path.write_bytes(b"\xef\xbb\xbf[rules.usage-spike]\nenabled = false\n")
    assert load_rules(path)["usage-spike"].enabled is False
    assert detector_settings(path)[0]["usage-spike"].enabled is False


def test_durations() -> None:
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("30s") == parse_duration(30) == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("message", "kind", "policy"),
    [
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "because no identity-based policy allows the kms:Decrypt action",
            "implicit",
            "identity-based",
        ),
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "because no permissions boundary allows the kms:Decrypt action",
            "implicit",
            "permissions boundary",
        ),
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "because no session policy allows the kms:Decrypt action",
            "implicit",
            "session",
        ),
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "because no VPC endpoint policy allows the kms:Decrypt action",
            "implicit",
            "VPC endpoint",
        ),
        (
            "User: a is not authorized to perform: kms:Decrypt on resource: k with an explicit deny "
            "in a resource control policy",
            "explicit",
            "resource control",
        ),
        # A permissions boundary is no "policy" in IAM's words, explicit as implicit; and IAM may
        # name the denying policy after a colon.
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "with an explicit deny in a permissions boundary",
            "explicit",
            "permissions boundary",
        ),
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "with an explicit deny in a permissions boundary: arn:aws:iam::1:policy/boundary",
            "explicit",
            "permissions boundary",
        ),
        (
            "User: arn:aws:iam::1:user/a is not authorized to perform: kms:Decrypt on resource: k "
            "with an explicit deny in an identity-based policy: arn:aws:iam::1:policy/DenyKms",
            "explicit",
            "identity-based",
        ),
        ("Access denied", "unknown", None),
    ],
)
def test_deny_reason_grammar(message: str, kind: str, policy: str | None) -> None:
    reason = parse_deny_reason(message)
    assert (reason.kind, reason.policy_type) == (kind, policy)


def test_alarm_json_round_trip() -> None:
    doc = {
        "alarmId": "a",
        "rule": "unused-key",
        "severity": "LOW",
        "keyArn": "k",
        "principalArn": None,
        "accountId": "1",
        "region": "us-east-1",
        "firstSeen": "2026-01-01T00:00:00Z",
        "lastSeen": "2026-01-01T00:00:01.500Z",
        "count": 1,
        "summary": "s",
        "eventIds": ["e"],
        "recommendation": "r",
        "details": {"x": "y"},
    }
    assert Alarm.from_json(doc).to_json() == doc
