"""Domain values the rest of keytrail may read: key enums and the record of one call.

The audit layer turns a `CallRecord` into a CloudTrail event; the KMS core knows nothing of
CloudTrail's JSON, Avro or Kafka. A `CallRecord` never holds plaintext, ciphertext, data keys,
signatures or key material: the service strips them before it builds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from keytrail.kms.call_values import call_value
from keytrail.kms.context import CallContext

__all__ = [
    "SCHEDULED_FOR_DELETION",
    "AuditSink",
    "CallRecord",
    "KeyLastUsage",
    "KeyManager",
    "KeySpec",
    "KeyState",
    "KeyUsage",
    "LastUsageSource",
    "Origin",
]


class KeyState(StrEnum):
    CREATING = "Creating"
    ENABLED = "Enabled"
    DISABLED = "Disabled"
    PENDING_DELETION = "PendingDeletion"
    PENDING_IMPORT = "PendingImport"
    PENDING_REPLICA_DELETION = "PendingReplicaDeletion"
    UNAVAILABLE = "Unavailable"
    UPDATING = "Updating"


# A key scheduled for deletion: PendingDeletion, or a multi-Region primary waiting for its
# replicas' deletion first (PendingReplicaDeletion).
SCHEDULED_FOR_DELETION = frozenset({KeyState.PENDING_DELETION, KeyState.PENDING_REPLICA_DELETION})


class KeyUsage(StrEnum):
    ENCRYPT_DECRYPT = "ENCRYPT_DECRYPT"
    SIGN_VERIFY = "SIGN_VERIFY"
    GENERATE_VERIFY_MAC = "GENERATE_VERIFY_MAC"
    KEY_AGREEMENT = "KEY_AGREEMENT"
    ENCAPSULATE_DECAPSULATE = "ENCAPSULATE_DECAPSULATE"


class Origin(StrEnum):
    AWS_KMS = "AWS_KMS"
    EXTERNAL = "EXTERNAL"
    AWS_CLOUDHSM = "AWS_CLOUDHSM"
    EXTERNAL_KEY_STORE = "EXTERNAL_KEY_STORE"


class KeyManager(StrEnum):
    CUSTOMER = "CUSTOMER"
    AWS = "AWS"


class KeySpec(StrEnum):
    SYMMETRIC_DEFAULT = "SYMMETRIC_DEFAULT"
    RSA_2048 = "RSA_2048"
    RSA_3072 = "RSA_3072"
    RSA_4096 = "RSA_4096"
    ECC_NIST_P256 = "ECC_NIST_P256"
    ECC_NIST_P384 = "ECC_NIST_P384"
    ECC_NIST_P521 = "ECC_NIST_P521"
    ECC_SECG_P256K1 = "ECC_SECG_P256K1"
    ECC_NIST_EDWARDS25519 = "ECC_NIST_EDWARDS25519"
    HMAC_224 = "HMAC_224"
    HMAC_256 = "HMAC_256"
    HMAC_384 = "HMAC_384"
    HMAC_512 = "HMAC_512"
    ML_DSA_44 = "ML_DSA_44"
    ML_DSA_65 = "ML_DSA_65"
    ML_DSA_87 = "ML_DSA_87"
    ML_KEM_512 = "ML_KEM_512"
    ML_KEM_768 = "ML_KEM_768"
    ML_KEM_1024 = "ML_KEM_1024"
    SM2 = "SM2"


@call_value
class CallRecord:
    """What happened in one KMS call or one service-initiated action, as the audit trail needs it.

    `context` is None for service events (`RotateKey`, scheduled or on demand, `DeleteKey`,
    `DeleteExpiredKeyMaterial`), which CloudTrail records with a KMS-internal identity and no
    requestID, and for the calls KMS makes itself (`SynchronizeMultiRegionKey`), which it records
    with that identity as `AwsApiCall`s that do have a requestID: `internal_request_id`.
    `request_parameters` uses CloudTrail's camelCase names and never holds secrets. `resources` are
    resolved key ARNs (ReEncrypt: source key first, then destination key).
    """

    event_id: str
    event_name: str
    event_time: datetime
    region: str
    account: str
    context: CallContext | None
    request_parameters: dict[str, Any] | None
    response_elements: dict[str, Any] | None = None
    additional_event_data: dict[str, Any] | None = None
    service_event_details: dict[str, Any] | None = None
    resources: tuple[str, ...] = ()
    read_only: bool = False
    error_code: str | None = None
    error_message: str | None = None
    internal_request_id: str | None = None
    shared_event_id: str | None = None  # a cross-account call's (keytrail/shared_events.py)
    # userIdentity.invokedBy of a caller's record that KMS itself writes for the call in another
    # Region (ReplicateKey's CreateKey in the replica's Region, UpdatePrimaryRegion's entry in the
    # new primary's Region: "kms.amazonaws.com").
    invoked_by: str | None = None

    @property
    def event_type(self) -> str:
        called = self.context is not None or self.internal_request_id is not None
        return "AwsApiCall" if called else "AwsServiceEvent"

    @property
    def request_id(self) -> str | None:
        """The record's requestID: the caller's, or KMS's own for a call it made; None for service events."""
        return self.context.request_id if self.context is not None else self.internal_request_id


class AuditUnavailable(RuntimeError):
    """The audit sink cannot make records durable now (disk full, a size cap, a failed sync). The
    sink logs the outage when it starts and ends, not once per refused call: under load a log line
    per call would flood the very disk that is full."""


class AuditSink(Protocol):
    """Where the KMS core reports every call. `record` returns once the record is durable;
    if it raises, the call fails (no crypto without audit). A sink may also offer `ready()`,
    raising AuditUnavailable when `record` is sure to refuse: state changes are not made then."""

    async def record(self, call: CallRecord) -> None: ...


class CallsInProgress:
    """How many KMS calls the service is working on: entered `KmsService.execute`, not answered
    yet. The audit spool reads it to size its group commits (audit/spool.py)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


@dataclass(frozen=True, slots=True)
class KeyLastUsage:
    """The last successful cryptographic use of a key, as GetKeyLastUsage reports it."""

    operation: str
    timestamp: datetime
    event_id: str
    request_id: str | None


class LastUsageSource(Protocol):
    """Where GetKeyLastUsage reads from: the last-used consumer's state (and, on a store several
    nodes share, the store's: kms/key_last_use.py).

    Returns the tracking start date (None if tracking has not started) and the last use.
    """

    async def last_usage(self, key_arn: str) -> tuple[datetime | None, KeyLastUsage | None]: ...
