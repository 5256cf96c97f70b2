"""Detection: rules over the audit stream, policy analysis, alarms and their delivery hooks."""

from __future__ import annotations

from keytrail.detect.alarms import Alarm, AlarmBook, Finding
from keytrail.detect.engine import Detector
from keytrail.detect.inventory import KeyInventoryItem, analyze_inventory
from keytrail.detect.rules import DEFAULT_RULES, Rule, RuleError, RuleSet, load_rules
from keytrail.detect.severity import Severity

__all__ = [
    "DEFAULT_RULES",
    "Alarm",
    "AlarmBook",
    "Detector",
    "Finding",
    "KeyInventoryItem",
    "Rule",
    "RuleError",
    "RuleSet",
    "Severity",
    "analyze_inventory",
    "load_rules",
]
