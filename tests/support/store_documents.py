"""The rows both key stores' authentication tests write, tamper with and read back (SQLite in
tests/unit/kms/test_authenticated_store.py, PostgreSQL in tests/integration/keystores/)."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from keytrail.kms.codec import key_to_doc
from keytrail.kms.importing import ImportParameters
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.model import CallRecord
from keytrail.kms.resealing import DOCUMENT_TABLES
from keytrail.kms.sealing import RootKey
from keytrail.kms.store import Alias, Grant
from keytrail.kms.store import Store as AnyStore
from keytrail.kms.store_ledger import Ledger

ACCOUNT, REGION = "111122223333", "us-east-1"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = '{"Version":"2012-10-17","Statement":[]}'
OURS = Key(ACCOUNT, REGION, "1234abcd-12ab-34cd-56ef-1234567890ab", NOW, policy=POLICY,
           materials=(KeyMaterial("ab" * 32, os.urandom(32), NOW),))
OTHER = Key(ACCOUNT, REGION, "0987dcba-09fe-87dc-65ba-ab0987654321", NOW, policy=POLICY,
            materials=(KeyMaterial("cd" * 32, os.urandom(32), NOW),))
ALIAS = Alias(ACCOUNT, REGION, "alias/ours", OURS.key_id, NOW, NOW)
GRANT = Grant(ACCOUNT, REGION, OTHER.key_id, "a1" * 32, f"arn:aws:iam::{ACCOUNT}:role/reader", ("Decrypt",),
              ACCOUNT, NOW, token="t")
FORGED = Grant(ACCOUNT, REGION, OURS.key_id, "f0" * 32, "arn:aws:iam::444455556666:root", ("Decrypt",),
               ACCOUNT, NOW, token="t")  # a grant no store wrote: inserted by hand, it must be refused
TOKEN = ImportParameters("ef" * 16, ACCOUNT, REGION, OURS.key_id, "RSAES_OAEP_SHA_256", "RSA_2048", os.urandom(64),
                         NOW + timedelta(days=1))
# A record a change owes (kms/owed_records.py): a service event's shape, no caller.
OWED = CallRecord("e0", "PutKeyPolicy", NOW, REGION, ACCOUNT, None, None, resources=(OURS.arn,))
CKS = CustomKeyStore(ACCOUNT, REGION, "cks-0123456789abcdef0", "n", "cluster-abcdefghijk", "pem", "kmsuser-pin", NOW)


def legacy_key_doc(key: Key, root: RootKey) -> str:
    """A key's document as versions before MACs wrote it: material sealed under ARN#material id."""
    doc = json.loads(key_to_doc(key, root))
    for material, sealed in zip(key.materials, doc["materials"], strict=True):
        sealed["sealed"] = root.seal_text(material.secret, f"{key.arn}#{material.material_id}")
    return json.dumps(doc, separators=(",", ":"))


def with_mac_of_before_the_ledger(root: RootKey, table: str, row: tuple[str, ...], text: str) -> str:
    """A document (as a store writes it today) with the MAC the version before the ledger wrote:
    the same HMAC without the binding that the store keeps a ledger."""
    body = "{" + text[len('{"mac":"') + 64 + 2:]
    mac = root.mac((json.dumps([table, *row]) + "\n" + body).encode()).hex()
    return f'{{"mac":"{mac}",{body[1:]}'


def sqlite_ledger_as_a_node_would(path: Path, root: RootKey) -> None:
    """keys.db's ledger computed again over the rows it holds now, as only the holder of the root
    key can: for the tests of what the documents' MACs refuse on their own (rows a store held
    before it had a ledger, which the upgrade takes into it as they are)."""
    with sqlite3.connect(path) as db:
        entries = [(table.name, tuple(found[:-1]), found[-1]) for table in DOCUMENT_TABLES
                   for found in db.execute(f"SELECT {', '.join(table.primary_key)}, doc FROM {table.name}")]
        db.execute("INSERT OR REPLACE INTO ledger VALUES (1, ?)", (Ledger.of(root, entries).to_doc(root),))
    db.close()


Store = TypeVar("Store", bound=AnyStore)


async def seeded(store: Store) -> Store:
    """`store` holding OURS and OTHER, ALIAS (of OURS) and GRANT (on OTHER): what the tampering
    tests edit, delete and put back."""
    await store.put_keys([OURS, OTHER])
    await store.put_alias(ALIAS)
    await store.put_grant(GRANT)
    return store
