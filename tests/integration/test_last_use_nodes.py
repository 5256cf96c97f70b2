"""Two `keytrail serve` nodes on one PostgreSQL key store (docker-compose.yml's topology): a key used
through one node is used for the other's GetKeyLastUsage and kms:TrailingDaysWithoutKeyUsage too,
so AWS's guard against disabling or deleting a key in use holds whichever node the call reaches.
Each node's consumer counts only its own calls; the nodes share each key's last use in the store."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.support.postgres import database_url, scratch_database
from tests.support.server import ACCOUNT, KeytrailServer, two_nodes
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

ROOT = f"arn:aws:iam::{ACCOUNT}:root"
# AWS Security Blog, "Identify unused AWS KMS keys and prevent accidental key deletions".
GUARD = {"Effect": "Deny", "Principal": "*", "Action": ["kms:DisableKey", "kms:ScheduleKeyDeletion"],
         "Resource": "*", "Condition": {"NumericLessThan": {"kms:TrailingDaysWithoutKeyUsage": "30"}}}
GUARDED = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"AWS": ROOT}, "Action": "kms:*", "Resource": "*"}, GUARD]})



@pytest.fixture
def store_url() -> Iterator[str]:
    """A database of the test's own on the real server at 127.0.0.1:5432, dropped afterwards."""
    with scratch_database() as name:
        yield database_url(name)


@pytest.fixture
def nodes(tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KeytrailServer,
                                                                                             KeytrailServer]]:
    """Nodes A and B on one store and one root key, each with its own data dir (audit log, consumer)."""
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    with two_nodes(tmp_path, store_url) as both:
        yield both


def _code(call: Any, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    return str(info.value.response["Error"]["Code"])


def _last_use(client: Any, key: str) -> dict[str, Any]:
    return dict(client.get_key_last_usage(KeyId=key)["KeyLastUsage"])


def test_a_key_used_through_one_node_is_used_on_the_other_and_its_guard_holds_there(
        nodes: tuple[KeytrailServer, KeytrailServer]) -> None:
    a, b = nodes
    on_a, on_b = a.client("alice"), b.client("alice")
    guarded = on_a.create_key(Policy=GUARDED)["KeyMetadata"]["Arn"]
    old = on_b.create_key(Policy=GUARDED)["KeyMetadata"]["Arn"]
    on_b.encrypt(KeyId=old, Plaintext=b"x")  # B tracks from now on: its consumer counted a call
    eventually_blocking(lambda: _last_use(on_b, old), what="B's consumer to count its own call")
    for node in nodes:
        node.advance(40 * 86400)
    used = on_a.encrypt(KeyId=guarded, Plaintext=b"x")["ResponseMetadata"]["RequestId"]

    eventually_blocking(lambda: _last_use(on_b, guarded).get("KmsRequestId") == used,
                        what="B's GetKeyLastUsage to name the Encrypt A served")
    assert _last_use(on_b, guarded)["Operation"] == "Encrypt"
    assert _code(on_b.schedule_key_deletion, KeyId=guarded, PendingWindowInDays=7) == "AccessDeniedException"
    assert _code(on_b.disable_key, KeyId=guarded) == "AccessDeniedException"
    # The guard lets go of a key unused for 40 days, on either node.
    on_a.disable_key(KeyId=old)
    assert on_b.describe_key(KeyId=old)["KeyMetadata"]["KeyState"] == "Disabled"
