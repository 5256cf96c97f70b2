"""Import parameters and custom key stores as JSON documents, their secrets sealed on the way out."""

from __future__ import annotations

import json
from datetime import datetime

from keytrail.kms.importing import ImportParameters
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.sealing import AUTHENTICATED_SEAL, RootKey

__all__ = [
    "custom_key_store_from_doc",
    "custom_key_store_to_doc",
    "import_parameters_from_doc",
    "import_parameters_to_doc",
]


def _token_binding(token_id: str, legacy: bool) -> str:
    # `legacy`: a document from before documents carried a MAC (codec._material_binding says why).
    return f"import-token#{token_id}" + ("" if legacy else AUTHENTICATED_SEAL)


def import_parameters_to_doc(parameters: ImportParameters, root: RootKey) -> str:
    binding = _token_binding(parameters.token_id, False)
    return json.dumps(
        {
            "token_id": parameters.token_id,
            "account": parameters.account,
            "region": parameters.region,
            "key_id": parameters.key_id,
            "wrapping_algorithm": parameters.wrapping_algorithm,
            "wrapping_key_spec": parameters.wrapping_key_spec,
            "valid_to": parameters.valid_to.isoformat(),
            "sealed": root.seal_text(parameters.private_key, binding),
        }
    )


def import_parameters_from_doc(text: str, root: RootKey, *, legacy: bool = False) -> ImportParameters:
    doc = json.loads(text)
    sealed = doc.pop("sealed")
    doc["valid_to"] = datetime.fromisoformat(doc["valid_to"])
    return ImportParameters(**doc, private_key=root.unseal_text(sealed, _token_binding(doc["token_id"], legacy)))


def _store_binding(account: str, region: str, store_id: str, legacy: bool = False) -> str:
    return f"custom-key-store#{account}#{region}#{store_id}" + ("" if legacy else AUTHENTICATED_SEAL)


def custom_key_store_to_doc(store: CustomKeyStore, root: RootKey) -> str:
    binding = _store_binding(store.account, store.region, store.store_id)
    return json.dumps(
        {
            "account": store.account,
            "region": store.region,
            "store_id": store.store_id,
            "name": store.name,
            "cluster_id": store.cluster_id,
            "trust_anchor": store.trust_anchor,
            "creation_date": store.creation_date.isoformat(),
            "state": store.state.value,
            "error_code": store.error_code,
            "store_type": store.store_type,
            "sealed_password": root.seal_text(store.password.encode(), binding, reuse=True),  # written per state
        }
    )


def custom_key_store_from_doc(text: str, root: RootKey, *, legacy: bool = False) -> CustomKeyStore:
    doc = json.loads(text)
    sealed = doc.pop("sealed_password")
    doc["creation_date"] = datetime.fromisoformat(doc["creation_date"])
    doc["state"] = ConnectionState(doc["state"])
    binding = _store_binding(doc["account"], doc["region"], doc["store_id"], legacy)
    password = root.unseal_text(sealed, binding, remember=not legacy).decode()
    return CustomKeyStore(**doc, password=password)
