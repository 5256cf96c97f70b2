"""The rows both key stores' authentication tests write, tamper with and read back (SQLite in
tests/unit/kms/test_authenticated_store.py, PostgreSQL in tests/integration/keystores/)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

from keytrail.kms.codec import key_to_doc
from keytrail.kms.importing import ImportParameters
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.sealing import RootKey
from keytrail.kms.store import Alias, Grant

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
CKS = CustomKeyStore(ACCOUNT, REGION, "cks-0123456789abcdef0", "n", "cluster-abcdefghijk", "pem", "kmsuser-pin", NOW)


def legacy_key_doc(key: Key, root: RootKey) -> str:
    """A key's document as versions before MACs wrote it: material sealed under ARN#material id."""
    doc = json.loads(key_to_doc(key, root))
    for material, sealed in zip(key.materials, doc["materials"], strict=True):
        sealed["sealed"] = root.seal_text(material.secret, f"{key.arn}#{material.material_id}")
    return json.dumps(doc, separators=(",", ":"))
