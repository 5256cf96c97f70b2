"""keys.db's documents authenticated, through a real `serve`: a key whose policy was edited (an
open policy written in, the MAC kept) is refused by the next start (KMSInternalException, the log
naming the row, never the policy) while the other keys serve as before; a store an earlier
version wrote, without MACs, is upgraded as serve starts and serves as before."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from keytrail.kms.sealing import RootKey
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration

OPEN_TO_ALL = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Sid": "everyone", "Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "kms:*", "Resource": "*"}]})


def _open_the_policy(keys_db: Path, key_id: str) -> None:
    with sqlite3.connect(keys_db) as db:
        (doc,) = db.execute("SELECT doc FROM keys WHERE key_id=?", (key_id,)).fetchone()
        edited = json.loads(doc)
        edited["policy"] = OPEN_TO_ALL
        db.execute("UPDATE keys SET doc=? WHERE key_id=?", (json.dumps(edited, separators=(",", ":")), key_id))
    db.close()


def test_a_key_whose_policy_was_edited_in_keys_db_fails_with_an_internal_error_and_others_work(
        fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    edited = kms.create_key()["KeyMetadata"]["KeyId"]
    untouched = kms.create_key()["KeyMetadata"]["KeyId"]
    blob = kms.encrypt(KeyId=untouched, Plaintext=b"still mine")["CiphertextBlob"]
    assert fresh_server.stop() == 0
    _open_the_policy(fresh_server.data_dir / "keys.db", edited)
    fresh_server.start()
    kms = fresh_server.client()
    with pytest.raises(ClientError) as refused:
        kms.encrypt(KeyId=edited, Plaintext=b"x")
    error, metadata = refused.value.response["Error"], refused.value.response["ResponseMetadata"]
    assert (error["Code"], metadata["HTTPStatusCode"]) == ("KMSInternalException", 500)
    assert error["Message"] == "The request was rejected because an internal exception occurred."
    assert aws_error(kms.get_key_policy, KeyId=edited, PolicyName="default")[0] == "KMSInternalException"
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"still mine"
    assert kms.describe_key(KeyId=untouched)["KeyMetadata"]["Enabled"]
    assert fresh_server.stop() == 0
    row = f"key store: the keys document of row 111122223333/us-east-1/{edited} does not verify under the root key"
    lines = [line for line in fresh_server.log.read_text().splitlines() if row in line]
    # As the store opened, then once per refused request (the SDK sends each call again on a 500).
    assert len(lines) == 1 + 2 * (1 + metadata["RetryAttempts"]), lines
    assert "everyone" not in fresh_server.log.read_text()


def _as_an_earlier_version_wrote_it(data_dir: Path) -> None:
    """keys.db rewritten as versions before MACs left it: no MAC, material sealed under ARN#id."""
    root = RootKey.load(data_dir, create=False)
    with sqlite3.connect(data_dir / "keys.db") as db:
        db.execute("DROP TABLE ledger")
        for rowid, doc in db.execute("SELECT rowid, doc FROM keys").fetchall():
            body = json.loads(doc)
            del body["mac"]
            arn = f"arn:aws:kms:{body['region']}:{body['account']}:key/{body['key_id']}"
            for material in body["materials"]:
                secret = root.unseal_text(material["sealed"], f"{arn}#{material['material_id']}#authenticated")
                material["sealed"] = root.seal_text(secret, f"{arn}#{material['material_id']}")
            db.execute("UPDATE keys SET doc=? WHERE rowid=?", (json.dumps(body, separators=(",", ":")), rowid))
        for table in ("aliases", "grants"):
            for rowid, doc in db.execute(f"SELECT rowid, doc FROM {table}").fetchall():
                body = json.loads(doc)
                del body["mac"]
                db.execute(f"UPDATE {table} SET doc=? WHERE rowid=?", (json.dumps(body), rowid))
    db.close()


def test_a_key_store_of_an_earlier_version_is_upgraded_by_serve_and_serves_as_before(
        fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/before-macs", TargetKeyId=key)
    kms.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/bob", Operations=["Decrypt"])
    blob = kms.encrypt(KeyId="alias/before-macs", Plaintext=b"from before")["CiphertextBlob"]
    assert fresh_server.stop() == 0
    _as_an_earlier_version_wrote_it(fresh_server.data_dir)
    fresh_server.start()
    kms = fresh_server.client()
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"from before"
    assert kms.encrypt(KeyId="alias/before-macs", Plaintext=b"after")["KeyId"].endswith(key)
    assert len(kms.list_grants(KeyId=key)["Grants"]) == 1
    with sqlite3.connect(fresh_server.data_dir / "keys.db") as db:
        docs = [doc for table in ("keys", "aliases", "grants") for (doc,) in db.execute(f"SELECT doc FROM {table}")]
    db.close()
    assert len(docs) == 3 and all(doc.startswith('{"mac":"') for doc in docs)


def _start_refused(server: KeytrailServer) -> str:
    """The one line `serve` ends with when it refuses to start."""
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        server.start()
    assert server.proc is not None and server.proc.wait(10) == 2
    server.proc = None
    assert "Traceback" not in server.log.read_text()
    return server.log.read_text().strip().splitlines()[-1]


def test_a_revoked_grant_put_back_in_keys_db_stops_serve_until_a_backup_is_restored(
        fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    grant = kms.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/bob",
                             Operations=["Decrypt"])["GrantId"]
    assert fresh_server.stop() == 0
    keys_db = fresh_server.data_dir / "keys.db"
    backup = keys_db.read_bytes()  # taken while serve is stopped, as docs/operations.md asks
    with sqlite3.connect(keys_db) as db:
        revoked = db.execute("SELECT * FROM grants WHERE grant_id=?", (grant,)).fetchone()
    db.close()
    fresh_server.start()
    fresh_server.client().revoke_grant(KeyId=key, GrantId=grant)
    kms = fresh_server.client()
    kms.create_alias(AliasName="alias/after-the-backup", TargetKeyId=key)
    assert fresh_server.stop() == 0
    with sqlite3.connect(keys_db) as db:  # bob's grant back, as keytrail wrote it (its MAC verifies)
        db.execute("INSERT INTO grants VALUES (?, ?, ?, ?, ?)", revoked)
    db.close()
    line = _start_refused(fresh_server)
    assert line == (
        "keytrail serve: the key store does not match its ledger (rows rolled back, deleted or added outside "
        f"keytrail): grants 1 row(s), the ledger 0. {keys_db} was changed outside keytrail: restore the whole file "
        "from a backup taken while serve was stopped (its ledger is in it), or put its rows back as keytrail left "
        "them")
    keys_db.write_bytes(backup)  # the whole file, its ledger with it: a backup restored, which it accepts
    fresh_server.start()
    kms = fresh_server.client()
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key)["Grants"]] == [grant]  # as the backup held it
    assert "alias/after-the-backup" not in [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
