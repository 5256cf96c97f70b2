"""new-principal-on-key and key-reconnaissance fire from real boto3 calls through `keytrail serve`
(the dev clock lets the key's learning period pass), and land in `<data-dir>/alarms.jsonl`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.e2e.support import eventually
from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

APP, BOB = f"arn:aws:iam::{ACCOUNT}:role/app", f"arn:aws:iam::{ACCOUNT}:user/bob"


def _alarms(data_dir: Path, rule: str) -> list[dict[str, Any]]:
    """The latest state of each alarm of `rule` in alarms.jsonl."""
    path = data_dir / "alarms.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    latest = {alarm["alarmId"]: alarm for alarm in map(json.loads, lines) if alarm["rule"] == rule}
    return list(latest.values())


def test_a_new_caller_on_an_established_key_and_a_survey_of_twenty_keys_raise_alarms(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    try:
        alice, app, bob = server.client("alice"), server.client("app"), server.client("bob")
        key = alice.create_key(Description="payroll")["KeyMetadata"]["Arn"]
        alice.encrypt(KeyId=key, Plaintext=b"first use")
        app.encrypt(KeyId=key, Plaintext=b"still learning")  # within the learning period: learnt, not alarmed
        server.advance(8 * 86400)
        alice.encrypt(KeyId=key, Plaintext=b"known caller")
        fresh = alice.create_key(Description="fresh")["KeyMetadata"]["Arn"]
        alice.encrypt(KeyId=fresh, Plaintext=b"x")
        app.encrypt(KeyId=fresh, Plaintext=b"new key: still learning")
        server.client("root").encrypt(KeyId=key, Plaintext=b"new caller")

        surveyed = [alice.create_key(Description=f"k{n}")["KeyMetadata"]["Arn"] for n in range(20)]
        for arn in surveyed:  # bob has no identity policy: every call is refused
            assert aws_error(bob.describe_key, KeyId=arn)[0] == "AccessDeniedException"

        [recon] = eventually(lambda: _alarms(data, "key-reconnaissance"), what="a key-reconnaissance alarm")
        [newcomer] = _alarms(data, "new-principal-on-key")  # logged before the survey, read in order
    finally:
        assert server.stop() == 0
    root = f"arn:aws:iam::{ACCOUNT}:root"
    assert (newcomer["keyArn"], newcomer["principalArn"], newcomer["severity"]) == (key, root, "LOW")
    assert newcomer["details"]["eventName"] == "Encrypt" and newcomer["details"]["knownPrincipals"] == "2"
    assert (recon["keyArn"], recon["principalArn"], recon["severity"]) == (None, BOB, "MEDIUM")
    assert (recon["details"]["keyCount"], recon["details"]["eventNames"]) == ("20", "DescribeKey")
