"""The reason inside an AccessDenied errorMessage: explicit or implicit deny, and which policy.

Grammar (IAM "Troubleshoot access denied", audit-anchors §1.3):
`… because no <type> policy allows the <action> action` (implicit) or
`… with an explicit deny in a|an <type> policy` (explicit), where a permissions boundary is no
"policy" (`… because no permissions boundary allows …`, `… with an explicit deny in a permissions
boundary`), and either may be followed by `: <ARN of the policy>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DENIED_CODES", "DenyReason", "parse_deny_reason"]

DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException"})

_IMPLICIT = re.compile(r"because no (?P<type>[\w\s-]+?)(?: polic(?:y|ies))? allows? ")
_EXPLICIT = re.compile(
    r"with an explicit deny in (?:a|an|the) (?:(?P<boundary>permissions boundary)|(?P<type>[\w\s-]+?) policy)")
_ACTION = re.compile(r"to perform: (?P<action>[\w:*]+)")


@dataclass(frozen=True, slots=True)
class DenyReason:
    """`kind` is explicit, implicit or unknown; `policy_type` e.g. `resource-based`, `service control`."""

    kind: str
    policy_type: str | None
    action: str | None


def parse_deny_reason(message: str | None) -> DenyReason:
    """Parse an AccessDenied errorMessage; unknown shapes give kind `unknown`."""
    text = message or ""
    action_match = _ACTION.search(text)
    action = action_match["action"] if action_match else None
    if match := _EXPLICIT.search(text):
        return DenyReason("explicit", (match["boundary"] or match["type"]).strip(), action)
    if match := _IMPLICIT.search(text):
        return DenyReason("implicit", match["type"].strip(), action)
    return DenyReason("unknown", None, action)
