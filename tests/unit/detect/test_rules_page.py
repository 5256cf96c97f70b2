"""docs/detection-rules.md gives each rule's defaults as `keytrail.detect.rules.DEFAULT_RULES` has
them: the heading's severity, window and escalation thresholds, and each parameter table's defaults.

An operator sets `[rules.<id>]` overrides from that page: a default changed in the code and not on
the page has them tune against a number that no longer holds.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest

from keytrail.detect.rules import DEFAULT_RULES, Rule

PAGE = Path(__file__).resolve().parents[3] / "docs/detection-rules.md"


def _section(rule_id: str) -> str:
    """The `### \\`<rule id>\\` (…)` section of the page, heading included."""
    [section] = [part for part in re.split(r"^### ", PAGE.read_text(), flags=re.M) if part.startswith(f"`{rule_id}`")]
    return section


def _window(window: timedelta) -> str:
    """A window as the headings write it: `1h`, `30d`, `10m`."""
    seconds = int(window.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _heading(rule: Rule) -> str:
    """`MEDIUM, window 1h, HIGH at 10, CRITICAL at 50`: how the heading opens its parentheses."""
    escalations = [f"{severity.value} at {count}" for severity, count in rule.thresholds.items()]
    return ", ".join([rule.severity.value, f"window {_window(rule.window)}", *escalations])


@pytest.mark.parametrize("rule", DEFAULT_RULES.values(), ids=lambda rule: rule.id)
def test_the_heading_names_the_rule_s_default_severity_window_and_thresholds(rule: Rule) -> None:
    heading = _section(rule.id).splitlines()[0]
    assert heading.startswith(f"`{rule.id}` ({_heading(rule)}")
    assert not re.match(rf"`{re.escape(rule.id)}` \({re.escape(_heading(rule))}, [A-Z]+ at ", heading), \
        f"docs/detection-rules.md: the heading of {rule.id} names thresholds the rule does not have"


@pytest.mark.parametrize("rule", DEFAULT_RULES.values(), ids=lambda rule: rule.id)
def test_every_parameter_row_gives_the_rule_s_default(rule: Rule) -> None:
    rows = re.findall(r"^\| `([a-z_]+)` \| `([^`]*)`", _section(rule.id), flags=re.M)
    documented = {name: json.loads(default) for name, default in rows if name in rule.parameters}
    assert documented == {name: rule.parameters[name] for name in documented}


def test_every_rule_has_its_section_and_parameter_rows() -> None:
    # Guards the two tests above: a page whose tables the expressions no longer read passes them.
    rows = sum(len(re.findall(r"^\| `[a-z_]+` \| `", _section(rule.id), flags=re.M)) for rule in DEFAULT_RULES.values())
    assert len(DEFAULT_RULES) >= 8 and rows >= 20
