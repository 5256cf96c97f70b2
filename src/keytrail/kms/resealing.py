"""Root key rotation: every value a key store keeps sealed, opened with the old root key and
sealed again under the new one (`keytrail root-key rotate`, docs/operations.md "Root key")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keytrail.kms.codec import key_from_doc, key_to_doc
from keytrail.kms.sealed_docs import (
    custom_key_store_from_doc,
    custom_key_store_to_doc,
    import_parameters_from_doc,
    import_parameters_to_doc,
)
from keytrail.kms.sealing import RootKey

__all__ = ["SEALED_TABLES", "SealedTable"]


@dataclass(frozen=True, slots=True)
class SealedTable:
    """A store table whose `doc` column holds sealed values (PostgreSQL's name is `kms_<name>`)."""

    name: str
    primary_key: tuple[str, ...]
    reseal: Callable[[str, RootKey, RootKey], str]  # (doc, old, new) -> the doc sealed under new


def _key(doc: str, old: RootKey, new: RootKey) -> str:
    return key_to_doc(key_from_doc(doc, old), new)


def _import_parameters(doc: str, old: RootKey, new: RootKey) -> str:
    return import_parameters_to_doc(import_parameters_from_doc(doc, old), new)


def _custom_key_store(doc: str, old: RootKey, new: RootKey) -> str:
    return custom_key_store_to_doc(custom_key_store_from_doc(doc, old), new)


SEALED_TABLES = (
    SealedTable("keys", ("account", "region", "key_id"), _key),
    SealedTable("import_parameters", ("token_id",), _import_parameters),
    SealedTable("custom_key_stores", ("account", "region", "store_id"), _custom_key_store),
)
