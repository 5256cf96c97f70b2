"""A key store changed outside keytrail shows in serve's /metrics as soon as the store finds it,
through a real `serve` on SQLite and on PostgreSQL: each row whose document does not verify is
counted once, by table (keytrail_key_store_tampered_rows_total), and a store that no longer
matches its ledger is flagged (keytrail_key_store_ledger_mismatch), for KeytrailKeyStoreTampered
and KeytrailKeyStoreLedgerMismatch to page even when the row is of a key used once a month."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.errors import aws_error
from tests.support.postgres import database_url, fetch, fetch_value, scratch_database
from tests.support.server import KeytrailServer
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

TAMPERED = "keytrail_key_store_tampered_rows_total"
MISMATCH = "keytrail_key_store_ledger_mismatch"
BOB = "arn:aws:iam::111122223333:user/bob"
SQLITE_TABLES = ("aliases", "custom_key_stores", "grants", "import_parameters", "keys", "owed_records")
UNTOUCHED = dict.fromkeys(SQLITE_TABLES, 0)


def _scrape(server: KeytrailServer) -> tuple[dict[str, int], int]:
    """The tampered rows by table, and the ledger mismatch flag, from GET /metrics."""
    text = server.get("/metrics")[1].decode()
    rows = re.findall(rf'^{TAMPERED}{{table="([a-z_]+)"}} (\d+)$', text, flags=re.M)
    [flag] = re.findall(rf"^{MISMATCH} (\d+)$", text, flags=re.M)
    return {table: int(n) for table, n in rows}, int(flag)


def _edited(doc: str, **members: Any) -> str:
    """`doc` with `members` written over its own, the MAC kept: an edit in place."""
    return json.dumps(json.loads(doc) | members, separators=(",", ":"))


def _edit_sqlite(keys_db: Path, table: str, where: str, value: str, **members: Any) -> None:
    with sqlite3.connect(keys_db) as db:
        (doc,) = db.execute(f"SELECT doc FROM {table} WHERE {where}=?", (value,)).fetchone()
        db.execute(f"UPDATE {table} SET doc=? WHERE {where}=?", (_edited(doc, **members), value))
    db.close()


def test_sqlite_rows_refused_as_serve_opens_and_as_it_reads_are_counted_once_each(
        fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    assert _scrape(fresh_server) == (UNTOUCHED, 0)
    rare = kms.create_key()["KeyMetadata"]["KeyId"]
    grant = kms.create_grant(KeyId=rare, GranteePrincipal=BOB, Operations=["Decrypt"])["GrantId"]
    external = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    params = kms.get_parameters_for_import(KeyId=external, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                           WrappingKeySpec="RSA_2048")
    keys_db = fresh_server.data_dir / "keys.db"
    # An import token's row is read from the file at each use: edited under the running node.
    with sqlite3.connect(keys_db) as db:
        [(token_id,)] = db.execute("SELECT token_id FROM import_parameters").fetchall()
    db.close()
    _edit_sqlite(keys_db, "import_parameters", "token_id", token_id, key_id=rare)
    code = aws_error(kms.import_key_material, KeyId=external, ImportToken=params["ImportToken"],
                     EncryptedKeyMaterial=b"\x01" * 256, ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")[0]
    assert code == "KMSInternalException"
    assert _scrape(fresh_server) == (UNTOUCHED | {"import_parameters": 1}, 0)
    assert fresh_server.stop() == 0
    # A grant of a key no call uses: found by the next start, before any call needs it.
    _edit_sqlite(keys_db, "grants", "grant_id", grant, operations=["Decrypt", "Encrypt", "ReEncryptFrom"])
    fresh_server.start()
    found = UNTOUCHED | {"grants": 1, "import_parameters": 1}
    assert _scrape(fresh_server) == (found, 0)
    kms = fresh_server.client()
    for _ in range(2):  # each refused call logs the row again; the row is counted once
        assert aws_error(kms.list_grants, KeyId=rare)[0] == "KMSInternalException"
    assert _scrape(fresh_server) == (found, 0)


@pytest.fixture
def database() -> Iterator[str]:
    with scratch_database() as name:
        yield name


def test_postgresql_rows_refused_as_serve_reads_them_and_a_ledger_mismatch_are_counted(
        tmp_path: Path, database: str) -> None:
    dsn = database_url(database)
    server = KeytrailServer(tmp_path / "data", "--store", dsn, dev_clock=False).start()
    try:
        kms = server.client()
        rare = kms.create_key()["KeyMetadata"]["KeyId"]
        other = kms.create_key()["KeyMetadata"]["KeyId"]
        grant = kms.create_grant(KeyId=other, GranteePrincipal=BOB, Operations=["Decrypt"])["GrantId"]
        assert _scrape(server) == (UNTOUCHED | {"key_last_use": 0}, 0)
        doc = asyncio.run(fetch_value(dsn, "SELECT doc FROM kms_keys WHERE key_id=$1", rare))
        asyncio.run(fetch(dsn, "UPDATE kms_keys SET doc=$1 WHERE key_id=$2", _edited(doc, description="x"), rare))
        # No call on the key: the reads of every key (the scheduler's, /metrics' inventory) find it.
        eventually_blocking(lambda: _scrape(server)[0]["keys"] == 1, what="the edited key counted")
        doc = asyncio.run(fetch_value(dsn, "SELECT doc FROM kms_grants WHERE grant_id=$1", grant))
        asyncio.run(fetch(dsn, "UPDATE kms_grants SET doc=$1 WHERE grant_id=$2",
                          _edited(doc, grantee_principal="arn:aws:iam::444455556666:root"), grant))
        assert _scrape(server)[0]["grants"] == 0  # a grant is read by the calls on its key only
        for _ in range(2):
            assert aws_error(kms.list_grants, KeyId=other)[0] == "KMSInternalException"
        assert _scrape(server) == (UNTOUCHED | {"key_last_use": 0, "keys": 1, "grants": 1}, 0)
        asyncio.run(fetch(dsn, "DELETE FROM kms_ledger"))
        assert aws_error(kms.create_alias, AliasName="alias/after", TargetKeyId=other)[0] == "KMSInternalException"
        assert _scrape(server)[1] == 1
    finally:
        server.stop()
