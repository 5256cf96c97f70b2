"""Detection rules as data: declared, registered by name, overridable from a TOML rules file.

A rule says what to alarm on and how loudly; the logic that reads events lives in `checks/`.
TOML format (docs/detection-rules.md):

    [rules.unauthorized-decrypt]
    severity = "MEDIUM"
    window = "1h"
    enabled = true
    thresholds = { HIGH = 10, CRITICAL = 50 }
    parameters = { allow_principals = ["arn:aws:iam::111122223333:role/scanner"] }
"""

from __future__ import annotations

import itertools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any

from keytrail.detect.severity import Severity
from keytrail.kms.context import ACCOUNT_ID, ORGANIZATION_ID
from keytrail.owner_only import read_regular_text

__all__ = ["DEFAULT_RULES", "Rule", "RuleError", "RuleSet", "load_rules", "parse_duration"]

AWS_SERVICE_CALLERS = (
    "AWS Internal",
    "internal.amazonaws.com",
    "config.amazonaws.com",
    "cloudtrail.amazonaws.com",
)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.ASCII)  # other scripts' digits are none
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# The longest window a rule takes: a century. Longer ones (or inf) overflowed the time arithmetic,
# which stopped `detect` with a traceback and left `serve`'s detector failing every batch.
MAX_WINDOW = timedelta(days=36_500)


def parse_duration(value: str | float) -> timedelta:
    """`"90d"`, `"10m"`, `"1h"`, `"30s"`, or a number of seconds: more than 0, at most MAX_WINDOW
    (ValueError otherwise)."""
    if isinstance(value, int | float):
        seconds = float(value)
    elif match := _DURATION.match(value):
        seconds = float(match[1]) * _UNITS[match[2]]
    else:
        raise ValueError(f"bad duration {value!r} (use e.g. 30s, 10m, 1h, 90d)")
    if not 0 < seconds <= MAX_WINDOW.total_seconds():  # also refuses nan
        raise ValueError(f"bad duration {value!r}: more than 0 and at most {MAX_WINDOW.days} days")
    return timedelta(seconds=seconds)


class RuleError(ValueError):
    """A rules file or override that cannot be applied (unknown rule, parameter or value)."""


@dataclass(frozen=True, slots=True)
class Rule:
    """One detection rule: escalation thresholds map a severity to the alarm count that reaches it."""

    id: str
    severity: Severity
    window: timedelta
    thresholds: Mapping[Severity, int] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    description: str = ""

    def severity_for(self, count: int, base: Severity | None = None) -> Severity:
        """The severity an alarm starting at `base` (default: the rule's) reaches after `count` events."""
        reached = [level for level, at in self.thresholds.items() if count >= at]
        return Severity.highest(base or self.severity, *reached)

    def param(self, name: str) -> Any:
        return self.parameters[name]


def _rule(
    rule_id: str, severity: str, window: str, thresholds: dict[str, int], description: str, **parameters: Any
) -> Rule:
    return Rule(
        rule_id,
        Severity(severity),
        parse_duration(window),
        MappingProxyType({Severity(k): v for k, v in thresholds.items()}),
        MappingProxyType(parameters),
        True,
        description,
    )


DEFAULT_RULES: Mapping[str, Rule] = MappingProxyType(
    {
        r.id: r
        for r in (
            _rule(
                "unauthorized-decrypt",
                "MEDIUM",
                "1h",
                {"HIGH": 10, "CRITICAL": 50},
                "Cryptographic calls denied with AccessDenied, per principal x key.",
                suppress_aws_services=True,
                aws_service_callers=list(AWS_SERVICE_CALLERS),
                allow_principals=[],
                new_principal_bump=1,
                key_alarms_per_principal=3,
            ),
            _rule(
                "unused-key",
                "LOW",
                "30d",
                {},
                "Enabled customer managed keys without successful cryptographic use for N days.",
                unused_days=90,
                key_month_usd=1.0,
                rotation_month_usd=1.0,
                max_billed_rotations=2,
                include_unknown_manager=True,
            ),
            _rule(
                "permissive-key",
                "MEDIUM",
                "1d",
                {},
                "Key policies and grants that give access to anyone, outsiders or non-administrators.",
                trusted_accounts=[],
                trusted_org_ids=[],
                admin_principals=[],
            ),
            _rule(
                "key-deletion-in-use",
                "HIGH",
                "1d",
                {"CRITICAL": 5},
                "DisableKey/ScheduleKeyDeletion on a recently used key; use of a key pending deletion.",
                recent_days=30,
                alert_on_disabled_use=True,
            ),
            _rule(
                "usage-spike",
                "MEDIUM",
                "1h",
                {},
                "Per key x principal call rate far above its rolling baseline.",
                baseline_days=7,
                min_history_minutes=60,
                min_calls=100,
                factor=10.0,
                high_factor=50.0,
                peak_factor=2.0,
            ),
            _rule(
                "rotation-disabled",
                "MEDIUM",
                "1d",
                {},
                "Automatic rotation turned off, or never on, for a customer managed symmetric key "
                "(CIS AWS Foundations 3.6, Security Hub KMS.4).",
                exempt_keys=[],
                exempt_aliases=[],
            ),
            _rule(
                "new-principal-on-key",
                "LOW",
                "1d",
                {},
                "A principal's first successful cryptographic call on a key with min_history_days of observed use.",
                min_history_days=7,
                allow_principals=[],
                suppress_aws_services=True,
                aws_service_callers=list(AWS_SERVICE_CALLERS),
            ),
            _rule(
                "key-reconnaissance",
                "LOW",
                "1h",
                {},
                "One principal reading key metadata (policies, grants, tags) of many keys: enumeration.",
                min_keys=20,
                min_denied=5,
                allow_principals=[],
                suppress_aws_services=True,
                aws_service_callers=list(AWS_SERVICE_CALLERS),
            ),
        )
    }
)


class RuleSet:
    """The rules in force, by id."""

    def __init__(self, rules: Mapping[str, Rule] = DEFAULT_RULES) -> None:
        self._rules = dict(rules)

    def __getitem__(self, rule_id: str) -> Rule:
        return self._rules[rule_id]

    def __iter__(self) -> Any:
        return iter(self._rules.values())

    def enabled(self, rule_id: str) -> bool:
        return rule_id in self._rules and self._rules[rule_id].enabled

    def override(self, tables: Mapping[str, Any]) -> RuleSet:
        """A new RuleSet with `{rule_id: {severity, window, thresholds, parameters, enabled}}` applied."""
        rules = dict(self._rules)
        for rule_id, table in _table(tables, "[rules]").items():
            if rule_id not in rules:
                raise RuleError(f"unknown rule {rule_id!r} (known: {', '.join(sorted(rules))})")
            rules[rule_id] = _apply(rules[rule_id], _table(table, f"[rules.{rule_id}]"))
        return RuleSet(rules)


def load_rules(path: Path, base: RuleSet | None = None) -> RuleSet:
    """Read the `[rules.<id>]` tables of a TOML file over `base` (the defaults)."""
    try:
        doc = tomllib.loads(read_regular_text(path, "utf-8-sig"))  # TOML is UTF-8; a leading BOM is allowed
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:  # not UTF-8: a binary file, the wrong one
        raise RuleError(f"cannot read rules file {path}: {exc}") from None
    except RecursionError:  # tomllib recurses per level: arrays or inline tables some hundreds deep
        raise RuleError(f"cannot read rules file {path}: values nested too deeply") from None
    return (base or RuleSet()).override(doc.get("rules", {}))


def _apply(rule: Rule, table: Mapping[str, Any]) -> Rule:
    unknown = set(table) - {"severity", "window", "thresholds", "parameters", "enabled"}
    if unknown:
        raise RuleError(f"rule {rule.id}: unknown setting(s) {', '.join(sorted(unknown))}")
    params = dict(rule.parameters)
    for name, value in _table(table.get("parameters", {}), f"rule {rule.id}: parameters").items():
        if name not in params:
            raise RuleError(f"rule {rule.id}: unknown parameter {name!r}")
        params[name] = _parameter(rule.id, name, value, params[name])
    enabled = table.get("enabled", rule.enabled)
    if not isinstance(enabled, bool):
        raise RuleError(f"rule {rule.id}: enabled must be true or false, not {enabled!r}")
    thresholds = _table(table.get("thresholds", rule.thresholds), f"rule {rule.id}: thresholds")
    if not all(_is_count(count) and 0 < count <= _MOST_COUNT for count in thresholds.values()):
        raise RuleError(f"rule {rule.id}: thresholds map a severity to a number of alarms "
                        f"(1 to {_MOST_COUNT:,})")
    window = table.get("window", rule.window)
    if not isinstance(window, str | int | float | timedelta) or isinstance(window, bool):
        raise RuleError(f"rule {rule.id}: window must be a duration such as \"1h\", not {window!r}")
    try:
        return replace(
            rule,
            severity=_severity(table.get("severity", rule.severity), "severity"),
            window=window if isinstance(window, timedelta) else parse_duration(window),
            thresholds=_rising({_severity(k, "thresholds keys"): v for k, v in thresholds.items()}),
            parameters=MappingProxyType(params),
            enabled=enabled,
        )
    except ValueError as exc:
        raise RuleError(f"rule {rule.id}: {exc}") from None


def _rising(thresholds: dict[Severity, int]) -> Mapping[Severity, int]:
    """`thresholds`, whose counts must not fall as the severity rises, else a ValueError: with
    `{ HIGH = 50, CRITICAL = 10 }` an alarm would be CRITICAL at 10 and never HIGH at all."""
    ordered = sorted(thresholds.items(), key=lambda item: item[0].rank)
    for (lower, at_lower), (higher, at_higher) in itertools.pairwise(ordered):
        if at_higher < at_lower:
            raise ValueError(f"thresholds must not fall as the severity rises: {higher} at {at_higher} is "
                             f"below {lower} at {at_lower}")
    return MappingProxyType(thresholds)


def _severity(value: Any, what: str) -> Severity:
    """`value` as a Severity, else a ValueError (prefixed with the rule by `_apply`) naming the
    setting and the four levels: the enum's own "'SEVERE' is not a valid Severity" names neither."""
    if isinstance(value, str) and value in Severity.__members__:
        return Severity(value)
    levels = ", ".join(Severity.__members__)
    raise ValueError(f"{what} must be one of {levels}, not {value!r}")


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise RuleError(f"{where} must be a table, not {value!r}")
    return value


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The largest count a parameter takes, by the unit its name ends in: time spans up to a century (a
# larger one overflowed the date arithmetic, failing every detector batch), anything else 10⁹.
_MOST = {"days": 36_500, "minutes": 36_500 * 1_440}
_MOST_COUNT = 1_000_000_000


def _parameter(rule_id: str, name: str, value: Any, default: Any) -> Any:
    """`value` if it is of the kind the parameter's default is (flag, count, amount, list of
    strings) and not negative; else RuleError naming the rule, the parameter and what it takes."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        most = _MOST.get(name.rsplit("_", 1)[-1], _MOST_COUNT)
        ok, kind = _is_count(value) and 0 <= value <= most, f"a whole number from 0 to {most:,}"
    elif isinstance(default, float):
        ok = (_is_count(value) or isinstance(value, float)) and 0 <= value <= _MOST_COUNT  # not inf or nan
        kind = f"a number from 0 to {_MOST_COUNT:,}"
    else:
        ok, kind = isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"
    if not ok:
        raise RuleError(f"rule {rule_id}: parameter {name} must be {kind}, not {value!r}")
    # A mistyped organization id or account never matches a condition, so the trust it was meant to
    # give would be silently missing: refuse it as the principals file refuses its ids.
    if name == "trusted_org_ids" and (bad := [v for v in value if not ORGANIZATION_ID.fullmatch(v)]):
        raise RuleError(f"rule {rule_id}: parameter {name} takes AWS Organizations ids, o- and 10 to 32 "
                        f"lowercase letters or digits, not {bad[0]!r}")
    if name == "trusted_accounts" and (bad := [v for v in value if not ACCOUNT_ID.fullmatch(v)]):
        raise RuleError(f"rule {rule_id}: parameter {name} takes AWS account ids, 12 digits, not {bad[0]!r}")
    return float(value) if isinstance(default, float) else value
