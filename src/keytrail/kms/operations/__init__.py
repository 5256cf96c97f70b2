"""The explicit table of KMS operations: one small handler each, grouped by module."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from keytrail.kms.calls import Operation
from keytrail.kms.operations import (
    aliases,
    asymmetric,
    crypto,
    grants,
    importing,
    kem,
    keys,
    keystores,
    mac,
    multiregion,
    policies,
    rotation,
    tags,
    usage,
)

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["EXTENSIONS", "OPERATIONS"]

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
    **importing.OPERATIONS,
    **multiregion.OPERATIONS,
    **keystores.OPERATIONS,
}

# Installed on every KmsService: origin creators and ciphers of other kinds of keys.
EXTENSIONS: tuple[Callable[[KmsService], None], ...] = (keystores.install,)
