"""Custom key stores (AWS_CLOUDHSM type) and their connection state machine.

AWS KMS developer guide, "AWS CloudHSM key stores": a custom key store names an HSM cluster and
the password of its `kmsuser` crypto user. Here the cluster is a PKCS#11 token: the store's
CloudHsmClusterId is the token label, KeyStorePassword is the token's user PIN, and the PKCS#11
module comes from `$KEYTRAIL_PKCS11_MODULE` (docs/custom-key-stores.md).

    DISCONNECTED --Connect--> CONNECTING --> CONNECTED | FAILED(ConnectionErrorCode)
    CONNECTED | FAILED --Disconnect--> DISCONNECTING --> DISCONNECTED
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from keytrail.kms import errors

if TYPE_CHECKING:
    from keytrail.kms.keys import Key

__all__ = [
    "CLUSTER_ID",
    "CloudHsmClusterInUseException",
    "CloudHsmClusterInvalidConfigurationException",
    "CloudHsmClusterNotActiveException",
    "CloudHsmClusterNotFoundException",
    "CloudHsmClusterNotRelatedException",
    "ConnectionState",
    "CustomKeyStore",
    "IncorrectTrustAnchorException",
    "backing_key",
    "backing_keys",
    "custom_key_store_entry",
    "key_store_event_data",
    "new_custom_key_store_id",
]


# Key.extra of a key in a CloudHSM key store: the cluster that holds its material, the store's
# (KeyMetadata.CloudHsmClusterId), named anew when UpdateCustomKeyStore moves the store.
CLUSTER_ID = "cloud_hsm_cluster_id"


def key_store_event_data(key: Key) -> dict[str, str]:
    """What CloudTrail's additionalEventData says of a key in an AWS CloudHSM key store: the store,
    its cluster and the key's backing key (ct-schedule-key-deletion, ct-delete-key); {} for other keys."""
    backing = backing_key(key)
    if backing is None or key.custom_key_store_id is None:
        return {}
    return {"customKeyStoreId": key.custom_key_store_id, "clusterId": key.extra.get(CLUSTER_ID, ""),
            "backingKeys": backing_keys(backing)}


def backing_key(key: Key) -> str | None:
    """The HSM key behind the current material of a key in a custom key store; None for other keys."""
    if not key.custom_key_store_id:  # most keys: no need to look for their current material
        return None
    material = key.current_material
    return material.handle if material is not None and material.handle else None


def backing_keys(backing_id: str) -> str:
    """additionalEventData.backingKeys as CloudTrail writes it: a JSON list inside a string."""
    return json.dumps([{"backingKeyId": backing_id}], separators=(",", ":"))


class CloudHsmClusterNotFoundException(errors.KmsError):
    """AWS `CloudHsmClusterNotFoundException`: no token carries the cluster id as its label."""

    code = "CloudHsmClusterNotFoundException"


class CloudHsmClusterNotActiveException(errors.KmsError):
    """AWS `CloudHsmClusterNotActiveException`: the PKCS#11 module cannot list its tokens now."""

    code = "CloudHsmClusterNotActiveException"


class CloudHsmClusterInUseException(errors.KmsError):
    """AWS `CloudHsmClusterInUseException`: a cluster (token) backs one custom key store only."""

    code = "CloudHsmClusterInUseException"


class CloudHsmClusterNotRelatedException(errors.KmsError):
    """AWS `CloudHsmClusterNotRelatedException`: UpdateCustomKeyStore names a token that lacks a backing
    key of the store's KMS keys (AWS: a cluster that does not share the original's backup history)."""

    code = "CloudHsmClusterNotRelatedException"


class CloudHsmClusterInvalidConfigurationException(errors.KmsError):
    """AWS `CloudHsmClusterInvalidConfigurationException`: no PKCS#11 module is configured, or it does not load."""

    code = "CloudHsmClusterInvalidConfigurationException"


class IncorrectTrustAnchorException(errors.KmsError):
    """AWS `IncorrectTrustAnchorException`: the trust anchor is not a PEM certificate."""

    code = "IncorrectTrustAnchorException"


class ConnectionState(StrEnum):
    CONNECTED = "CONNECTED"
    CONNECTING = "CONNECTING"
    FAILED = "FAILED"
    DISCONNECTED = "DISCONNECTED"
    DISCONNECTING = "DISCONNECTING"


@dataclass(frozen=True, slots=True)
class CustomKeyStore:
    """One custom key store of an account and Region. `password` is the token user PIN."""

    account: str
    region: str
    store_id: str
    name: str
    cluster_id: str
    trust_anchor: str
    password: str = field(repr=False)
    creation_date: datetime
    state: ConnectionState = ConnectionState.DISCONNECTED
    error_code: str | None = None
    store_type: str = "AWS_CLOUDHSM"

    def with_state(self, state: ConnectionState, error_code: str | None = None) -> CustomKeyStore:
        return replace(self, state=state, error_code=error_code)


def new_custom_key_store_id(random_bytes: bytes) -> str:
    """`cks-` + 17 hex digits, the form AWS uses."""
    return "cks-" + random_bytes.hex()[:17]


def custom_key_store_entry(store: CustomKeyStore) -> dict[str, Any]:
    """DescribeCustomKeyStores' CustomKeyStoresListEntry (never the password)."""
    entry: dict[str, Any] = {
        "CustomKeyStoreId": store.store_id,
        "CustomKeyStoreName": store.name,
        "CloudHsmClusterId": store.cluster_id,
        "TrustAnchorCertificate": store.trust_anchor,
        "ConnectionState": store.state.value,
        "CreationDate": store.creation_date,
        "CustomKeyStoreType": store.store_type,
    }
    if store.state is ConnectionState.FAILED and store.error_code:
        entry["ConnectionErrorCode"] = store.error_code
    return entry
