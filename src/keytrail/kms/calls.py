"""One call in flight: its context, parameters, and what the audit record should say about it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from keytrail.kms.context import CallContext

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["Call", "Handler", "Operation", "Response"]

Response = dict[str, Any]
Handler = Callable[["KmsService", "Call"], Awaitable[Response]]


@dataclass(slots=True)
class Call:
    """A KMS request on its way through the service. Handlers note what CloudTrail logs:
    the resolved key ARNs (`resources`), `additional_event_data` (keyMaterialId),
    `response_elements` (state-changing calls) and request parameters AWS adds itself
    (`extra_request_parameters`, e.g. Decrypt's encryptionAlgorithm). A call that changes keys
    keeps the lock of the key it finds first in `held` (see `KmsService.find_key`)."""

    context: CallContext
    params: dict[str, Any]
    resources: list[str] = field(default_factory=list)
    additional_event_data: dict[str, Any] = field(default_factory=dict)
    response_elements: dict[str, Any] | None = None
    extra_request_parameters: dict[str, Any] = field(default_factory=dict)
    held: AsyncExitStack | None = None

    def resource(self, arn: str) -> None:
        if arn not in self.resources:
            self.resources.append(arn)

    def log_key_id(self, arn: str) -> None:
        """Log the affected key's ARN as `responseElements.keyId`: CloudTrail entries recorded
        since December 2022 carry it for EnableKey, DisableKey, Create/Update/DeleteAlias,
        UntagResource, EnableKeyRotation, UpdatePrimaryRegion and the import calls (which set it
        with their other response elements), though their responses do not."""
        self.response_elements = {**(self.response_elements or {}), "keyId": arn}


@dataclass(frozen=True, slots=True)
class Operation:
    """A KMS operation: its handler and whether CloudTrail marks it readOnly. `writes`: one marked
    readOnly that still writes the key store (GetParametersForImport, its import parameters), whose
    record is owed with its write as a change's is (kms/owed_calls.py)."""

    handler: Handler
    read_only: bool = False
    writes: bool = False
