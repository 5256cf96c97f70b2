"""The explicit table of KMS operations: one small handler each, grouped by module."""

from __future__ import annotations

from keytrail.kms.calls import Operation
from keytrail.kms.operations import (
    aliases,
    asymmetric,
    crypto,
    grants,
    kem,
    keys,
    mac,
    policies,
    rotation,
    tags,
    usage,
)

__all__ = ["OPERATIONS"]

OPERATIONS: dict[str, Operation] = {
    **keys.OPERATIONS,
    **crypto.OPERATIONS,
    **aliases.OPERATIONS,
    **tags.OPERATIONS,
    **policies.OPERATIONS,
    **rotation.OPERATIONS,
    **grants.OPERATIONS,
    **usage.OPERATIONS,
    **asymmetric.OPERATIONS,
    **mac.OPERATIONS,
    **kem.OPERATIONS,
}
