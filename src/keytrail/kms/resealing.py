"""The key store's tables of documents, and what root key rotation and the upgrade of an old
store do to each: documents verified and opened under one root key, sealed and authenticated
again under another (`keytrail root-key rotate`, docs/operations.md "Root key"), or an old store's
documents given today's seal bindings and a MAC (kms/authentic_docs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keytrail.kms.authentic_docs import Row, authenticate, verify
from keytrail.kms.codec import key_from_doc, key_to_doc
from keytrail.kms.sealed_docs import (
    custom_key_store_from_doc,
    custom_key_store_to_doc,
    import_parameters_from_doc,
    import_parameters_to_doc,
)
from keytrail.kms.sealing import RootKey

__all__ = ["DOCUMENT_TABLES", "KEY_LAST_USE", "OWED_RECORDS", "POSTGRES_TABLES", "DocumentTable", "reauthenticated"]


@dataclass(frozen=True, slots=True)
class DocumentTable:
    """A store table whose `doc` column holds documents (PostgreSQL's name is `kms_<name>`)."""

    name: str
    primary_key: tuple[str, ...]
    reseal: Callable[[str, RootKey, RootKey], str]  # (body, old, new) -> the body sealed under new
    upgrade: Callable[[str, RootKey], str]  # an old store's body -> the body sealed as today


def _unchanged(body: str, *_: RootKey) -> str:
    return body  # aliases and grants seal nothing: only their MAC changes


def _key(body: str, old: RootKey, new: RootKey) -> str:
    return key_to_doc(key_from_doc(body, old), new)


def _key_upgrade(body: str, root: RootKey) -> str:
    return key_to_doc(key_from_doc(body, root, legacy=True), root)


def _import_parameters(body: str, old: RootKey, new: RootKey) -> str:
    return import_parameters_to_doc(import_parameters_from_doc(body, old), new)


def _import_parameters_upgrade(body: str, root: RootKey) -> str:
    return import_parameters_to_doc(import_parameters_from_doc(body, root, legacy=True), root)


def _custom_key_store(body: str, old: RootKey, new: RootKey) -> str:
    return custom_key_store_to_doc(custom_key_store_from_doc(body, old), new)


def _custom_key_store_upgrade(body: str, root: RootKey) -> str:
    return custom_key_store_to_doc(custom_key_store_from_doc(body, root, legacy=True), root)


KEYS = DocumentTable("keys", ("account", "region", "key_id"), _key, _key_upgrade)
ALIASES = DocumentTable("aliases", ("account", "region", "name"), _unchanged, _unchanged)
GRANTS = DocumentTable("grants", ("account", "region", "key_id", "grant_id"), _unchanged, _unchanged)
IMPORT_PARAMETERS = DocumentTable("import_parameters", ("token_id",), _import_parameters, _import_parameters_upgrade)
CUSTOM_KEY_STORES = DocumentTable("custom_key_stores", ("account", "region", "store_id"), _custom_key_store,
                                  _custom_key_store_upgrade)
# The audit records changes owe (kms/owed_records.py): authenticated and ledgered like the rest, so
# no record is forged into the trail or a change's record deleted through the store; they seal nothing.
OWED_RECORDS = DocumentTable("owed_records", ("event_id",), _unchanged, _unchanged)
DOCUMENT_TABLES = (KEYS, ALIASES, GRANTS, IMPORT_PARAMETERS, CUSTOM_KEY_STORES, OWED_RECORDS)
# The latest use of each key by any node sharing the store (kms/postgres_last_use.py), authenticated
# and ledgered so that whoever can write the database cannot make a used key look unused. Only the
# PostgreSQL store holds it: a SQLite store has one node, whose own audit trail sees every use.
KEY_LAST_USE = DocumentTable("key_last_use", ("account", "region", "key_id"), _unchanged, _unchanged)
POSTGRES_TABLES = (*DOCUMENT_TABLES, KEY_LAST_USE)


def reauthenticated(table: DocumentTable, row: Row, text: str, old: RootKey, new: RootKey) -> str:
    """The document of `row`, verified under `old`, sealed and authenticated under `new`
    (DocumentRefused if it does not verify: rotation must not launder a forged row)."""
    body = verify(old, table.name, row, text)
    return authenticate(new, table.name, row, table.reseal(body, old, new))
