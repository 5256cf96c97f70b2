"""Root key rotation of the SQLite store: every sealed value opens under the new root key and
no longer under the old one, and nothing else changes."""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keytrail.kms.importing import ImportParameters
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.sealing import RootKey, SealError
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Alias

ACCOUNT, REGION = "111122223333", "us-east-1"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = Key(ACCOUNT, REGION, "1234abcd-12ab-34cd-56ef-1234567890ab", NOW, policy="{}",
          materials=(KeyMaterial("ab" * 32, os.urandom(32), NOW), KeyMaterial("cd" * 32, os.urandom(32), NOW)))
TOKEN = ImportParameters("ef" * 16, ACCOUNT, REGION, KEY.key_id, "RSAES_OAEP_SHA_256", "RSA_2048", os.urandom(64),
                         NOW + timedelta(days=1))
CKS = CustomKeyStore(ACCOUNT, REGION, "cks-0123456789abcdef0", "n", "cluster-abcdefghijk", "pem", "kmsuser-pin", NOW)


async def test_a_resealed_store_opens_under_the_new_root_key_only(tmp_path: Path) -> None:
    old, new = RootKey(os.urandom(32)), RootKey(os.urandom(32))
    store = SqliteStore(tmp_path / "keys.db", old)
    await store.put_key(KEY)
    await store.put_alias(Alias(ACCOUNT, REGION, "alias/a", KEY.key_id, NOW, NOW))
    await store.put_import_parameters(TOKEN)
    await store.put_custom_key_store(CKS)
    assert await store.reseal(new) == 4  # every document: the alias is authenticated under the root key too
    await store.put_key(Key(ACCOUNT, REGION, "0987dcba-09fe-87dc-65ba-ab0987654321", NOW, policy="{}",
                            materials=(KeyMaterial("ef" * 32, os.urandom(32), NOW),)))  # sealed under new now
    await store.close()
    with pytest.raises(SealError):
        SqliteStore(tmp_path / "keys.db", old)
    again = SqliteStore(tmp_path / "keys.db", new)
    assert await again.get_key(ACCOUNT, REGION, KEY.key_id) == KEY
    assert len(await again.list_keys(ACCOUNT, REGION)) == 2
    assert [a.name for a in await again.list_aliases(ACCOUNT, REGION)] == ["alias/a"]
    assert await again.get_import_parameters(TOKEN.token_id) == TOKEN
    assert await again.list_custom_key_stores(ACCOUNT, REGION) == [CKS]
    await again.close()



async def test_no_value_sealed_under_the_old_root_key_is_left_in_the_store_files(tmp_path: Path) -> None:
    # A copy of keys.db taken after the rotation must give nothing to the holder of the old key:
    # SQLite leaves a changed row's old bytes in the page's free space and the WAL otherwise.
    old = RootKey(os.urandom(32))
    store = SqliteStore(tmp_path / "keys.db", old)
    await store.put_key(KEY)
    await store.put_import_parameters(TOKEN)
    await store.put_custom_key_store(CKS)
    sealed = _sealed_values(tmp_path)
    assert len(sealed) == 4
    await store.reseal(RootKey(os.urandom(32)))
    await store.close()
    raw = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert [value for value in sealed if value in raw] == []


def _sealed_values(directory: Path) -> list[bytes]:
    found = []
    with sqlite3.connect(directory / "keys.db") as db:
        for table in ("keys", "import_parameters", "custom_key_stores"):
            for (doc,) in db.execute(f"SELECT doc FROM {table}"):
                found += [value.encode() for value in _sealed_in(json.loads(doc))]
    return found


def _sealed_in(doc: dict[str, object]) -> list[str]:
    materials = doc.get("materials")
    texts = [m["sealed"] for m in materials] if isinstance(materials, list) else []
    return texts + [doc[name] for name in ("sealed", "sealed_password") if isinstance(doc.get(name), str)]  # type: ignore[misc]
