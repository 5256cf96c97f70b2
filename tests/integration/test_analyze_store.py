"""`keytrail analyze --data-dir` reads a node's key store and flags keys anyone can use."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from keytrail.kms.sealing import ROOT_KEY_FILE_ENV
from tests.integration.test_serve_store import database  # noqa: F401  (a fixture)
from tests.support.postgres import fetch, fetch_value
from tests.support.server import ACCOUNT, OTHER_ACCOUNT, PRINCIPALS, KeytrailServer, write_principals
from tests.support.services import free_port

PUBLIC = {
    "Version": "2012-10-17",
    "Statement": [
        {"Sid": "Admin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
         "Action": "kms:*", "Resource": "*"},
        {"Sid": "Everyone", "Effect": "Allow", "Principal": "*", "Action": "kms:Decrypt", "Resource": "*"},
    ],
}


def test_analyze_flags_the_public_key_and_names_its_statement(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client()
    public = kms.create_key(Policy=json.dumps(PUBLIC))["KeyMetadata"]["Arn"]
    private = kms.create_key()["KeyMetadata"]["Arn"]
    kms.enable_key_rotation(KeyId=private)
    kms.create_alias(AliasName="alias/open", TargetKeyId=public)
    asymmetric = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    primary = kms.create_key(MultiRegion=True)["KeyMetadata"]
    replica = kms.replicate_key(KeyId=primary["Arn"], ReplicaRegion="us-west-2")["ReplicaKeyMetadata"]["Arn"]
    fresh_server.client(region="us-west-2").create_alias(AliasName="alias/open", TargetKeyId=replica)
    fresh_server.stop()
    out = subprocess.run(
        [sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(fresh_server.data_dir), "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    alarms = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    # The public key's policy, and its rotation (off, as every new key's is: Security Hub KMS.4);
    # the private key rotates, an RSA key cannot, and a replica rotates with its primary.
    assert [(a["rule"], a["keyArn"]) for a in alarms[:1]] == [("permissive-key", public)]
    assert sorted((a["rule"], a["keyArn"]) for a in alarms[1:]) == sorted(
        [("rotation-disabled", public), ("rotation-disabled", primary["Arn"])])
    assert "Everyone" in json.dumps(alarms) and private not in out.stdout and asymmetric not in out.stdout
    assert replica not in out.stdout
    aliases = {a["keyArn"]: a["details"].get("aliases") for a in alarms if a["rule"] == "rotation-disabled"}
    assert aliases == {public: "alias/open", primary["Arn"]: None}  # the replica's alias of its Region is its own


def test_analyze_without_a_store_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "keys.db" in out.stderr


def _analyze(data_dir: Path, *extra: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(data_dir), "--format", "json", *extra],
        capture_output=True, text=True, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _decrypt_all(alarms: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {a["principalArn"]: a for a in alarms
            if a["rule"] == "permissive-key" and "decrypt-all-keys" in a["details"]["findings"]}


def test_analyze_flags_identity_policies_decrypting_with_every_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    server = KeytrailServer(data_dir, principals=write_principals(data_dir / "principals.toml")).start()
    server.client().create_key()
    server.stop()
    by_principal = _decrypt_all(_analyze(data_dir))
    # alice, the app role (its policies name the role, not its sessions) and carol hold kms:* on "*"
    alice, app = f"arn:aws:iam::{ACCOUNT}:user/alice", f"arn:aws:iam::{ACCOUNT}:role/app"
    assert set(by_principal) == {alice, app, f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol"}
    alarm = by_principal[alice]
    assert alarm["rule"] == "permissive-key" and alarm["keyArn"] is None and alarm["accountId"] == ACCOUNT
    assert alarm["severity"] == "MEDIUM" and "every key of account 111122223333" in alarm["summary"]
    [finding] = json.loads(alarm["details"]["findings"])
    assert finding["source"] == "policy 1 statement #1" and finding["principal"] == alice

    settings = tmp_path / "rules.toml"
    settings.write_text('[rules.permissive-key]\nparameters = { admin_principals = ["*:user/alice"] }\n')
    carol = f"arn:aws:iam::{OTHER_ACCOUNT}:user/carol"
    assert set(_decrypt_all(_analyze(data_dir, "--config", str(settings)))) == {app, carol}
    other = write_principals(tmp_path / "other.toml", {"bob": PRINCIPALS["bob"], "app": PRINCIPALS["app"]})
    assert set(_decrypt_all(_analyze(data_dir, "--principals", str(other)))) == {app}


def test_analyze_with_a_missing_or_broken_principals_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = KeytrailServer(data_dir).start()
    server.stop()
    broken = tmp_path / "broken.toml"
    broken.write_text("[principal]\narn = 1\n")
    for path, message in ((tmp_path / "none.toml", "does not exist"), (broken, "[[principal]]")):
        out = subprocess.run([sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(data_dir),
                              "--principals", str(path)], capture_output=True, text=True)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and message in out.stderr


def test_analyze_of_a_node_without_its_own_principals_file_says_identity_policies_went_unchecked(
    fresh_server: KeytrailServer,
) -> None:
    fresh_server.stop()  # its principals file is outside the data dir (serve --principals PATH)
    out = subprocess.run([sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(fresh_server.data_dir)],
                         capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "0 alarms over 0 keys\n")  # a fresh node has none
    [line] = out.stderr.splitlines()
    assert "identity policies not checked" in line and "--principals" in line


def _run_analyze(data_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(data_dir), *extra],
                          capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=120)


def _alarms_of(out: subprocess.CompletedProcess[str]) -> list[tuple[str, str | None]]:
    assert out.returncode == 0, out.stderr
    return [(a["rule"], a["keyArn"]) for a in map(json.loads, out.stdout.splitlines())]


async def _store_rows(url: str) -> tuple[Any, ...]:
    """What analyze must leave as it was: the ledger, the root key check and every key's document."""
    return (await fetch_value(url, "SELECT doc FROM kms_ledger"),
            await fetch_value(url, "SELECT sealed FROM kms_root_key"),
            await fetch(url, "SELECT key_id, doc FROM kms_keys ORDER BY key_id"))


def test_analyze_flags_the_public_key_of_a_shared_postgresql_store_while_its_node_runs(
        tmp_path: Path, database: str) -> None:  # noqa: F811
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    server = KeytrailServer(tmp_path / "data", "--store", url).start()
    try:
        kms = server.client()
        public = kms.create_key(Policy=json.dumps(PUBLIC))["KeyMetadata"]["Arn"]
        kms.create_alias(AliasName="alias/open", TargetKeyId=public)
        rotating = kms.create_key()["KeyMetadata"]["Arn"]
        kms.enable_key_rotation(KeyId=rotating)
        before = asyncio.run(_store_rows(url))
        # The node runs on: analyze reads beside it, as the SQLite reader does
        running = _run_analyze(server.data_dir, "--store", url, "--format", "json")
    finally:
        assert server.stop() == 0
    assert _alarms_of(running) == [("permissive-key", public), ("rotation-disabled", public)]
    assert "Everyone" in running.stdout and rotating not in running.stdout
    assert '"aliases":"alias/open"' in running.stdout
    # $KEYTRAIL_STORE as serve takes it; and analyze wrote nothing (nor upgraded the schema)
    stopped = _run_analyze(server.data_dir, "--format", "json", env={"KEYTRAIL_STORE": url})
    assert _alarms_of(stopped) == _alarms_of(running)
    assert asyncio.run(_store_rows(url)) == before

    other = tmp_path / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    wrong = _run_analyze(server.data_dir, "--store", url, env={ROOT_KEY_FILE_ENV: str(other)})
    assert wrong.returncode == 2 and len(wrong.stderr.splitlines()) == 1, wrong.stderr
    assert "the root key does not open" in wrong.stderr and wrong.stdout == ""


def test_analyze_of_an_unreachable_empty_or_bad_store_is_one_line_and_exit_2(
        tmp_path: Path, database: str) -> None:  # noqa: F811
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "root.key").write_bytes(os.urandom(32))
    (data_dir / "root.key").chmod(0o600)
    port = free_port()  # nothing listens there
    empty = f"postgresql://postgres@127.0.0.1:5432/{database}"  # a database no node has served
    unreachable = f"postgresql://postgres:s3cret-pw@127.0.0.1:{port}/{database}"
    cases = {
        unreachable: f"cannot open the key store at 127.0.0.1:{port}/{database}: ",
        empty: "holds no keytrail key store",
        "mysql://postgres:s3cret-pw@127.0.0.1/db": "must be a postgresql:// URL",
    }
    for url, message in cases.items():
        out = _run_analyze(data_dir, "--store", url)
        assert (out.returncode, out.stdout) == (2, ""), out.stderr
        [line] = out.stderr.splitlines()
        assert line.startswith("keytrail analyze: ") and message in line and "s3cret-pw" not in line, line
    # the empty database is left empty: no table made for the store
    assert asyncio.run(fetch(empty, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")) == []
    # an inventory beside --store: one of the two would be passed over in silence
    inventory = tmp_path / "keys.json"
    inventory.write_text("[]")
    analyze = [sys.executable, "-m", "keytrail", "analyze", "--inventory", str(inventory)]
    both = subprocess.run([*analyze, "--store", empty], capture_output=True, text=True)
    assert (both.returncode, both.stderr) == (2, "keytrail analyze: --inventory and --store name two sets of keys: "
                                                 "give one\n")
    # a node's exported $KEYTRAIL_STORE is a default, as the data dir's: the inventory named is analyzed
    beside = subprocess.run(analyze, capture_output=True, text=True, env={**os.environ, "KEYTRAIL_STORE": empty})
    assert beside.returncode == 0 and "0 keys" in beside.stdout + beside.stderr, beside.stderr
