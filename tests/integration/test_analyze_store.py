"""`keytrail analyze --data-dir` reads a node's key store and flags keys anyone can use."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.server import ACCOUNT, KeytrailServer

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
    fresh_server.stop()
    out = subprocess.run(
        [sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(fresh_server.data_dir), "--format", "json"],
        capture_output=True, text=True, check=True,
    )
    alarms = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert {a["keyArn"] for a in alarms} == {public}
    assert all(a["rule"] == "permissive-key" for a in alarms)
    assert "Everyone" in json.dumps(alarms) and private not in out.stdout


def test_analyze_without_a_store_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-m", "keytrail", "analyze", "--data-dir", str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1 and "keys.db" in out.stderr
