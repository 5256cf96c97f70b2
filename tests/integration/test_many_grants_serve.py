"""A caller with many grants on a key, through boto3 against a real `keytrail serve`: each call
reads only the grants filed under its own terms (kms/grants.py), and the one that allows it still
does, constrained by EncryptionContextSubset or EncryptionContextEquals, until it is revoked or
retired; on PostgreSQL, whichever of two nodes on one store created, revoked or retired it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_authorization import error_of
from tests.integration.test_serve_store import database  # noqa: F401  (a fixture)
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"
GRANTS = 150


def _volume(n: int) -> dict[str, str]:
    return {"app": "disks", "volume": f"vol-{n:08d}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[KeytrailServer, KeytrailServer]]:
    """Two nodes serving one store: the same SQLite node twice, or two nodes on one PostgreSQL
    database (the second with the first's root key)."""
    if request.param == "sqlite":
        server = KeytrailServer(tmp_path / "data").start()
        yield server, server
        server.stop()
        return
    store = ("--store", f"postgresql://postgres@127.0.0.1:5432/{request.getfixturevalue('database')}")
    first = KeytrailServer(tmp_path / "first", *store).start()
    (tmp_path / "second").mkdir()
    shutil.copy(tmp_path / "first" / "root.key", tmp_path / "second" / "root.key")
    second = KeytrailServer(tmp_path / "second", *store).start()
    yield first, second
    first.stop()
    second.stop()


def _encrypts(bob: Any, key: str, context: dict[str, str]) -> bool:
    try:
        bob.encrypt(KeyId=key, Plaintext=b"x", EncryptionContext=context)
    except bob.exceptions.ClientError as error:
        assert error.response["Error"]["Code"] == "AccessDeniedException"
        return False
    return True


def test_the_grant_for_a_context_allows_among_many_to_the_caller_until_revoked_or_retired(nodes: Any) -> None:
    first, second = nodes
    alice, bob = first.client("alice"), second.client("bob")
    key = alice.create_key()["KeyMetadata"]["Arn"]  # the default policy: bob's IAM allows nothing, grants decide
    granted = [alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Encrypt", "Decrypt"],
                                  Constraints={"EncryptionContextSubset": _volume(n)}, RetiringPrincipal=BOB)
               for n in range(GRANTS)]
    equals = alice.create_grant(KeyId=key, GranteePrincipal=BOB, Operations=["Encrypt"],
                                Constraints={"EncryptionContextEquals": {"volume": "vol-shared"}})
    assert _encrypts(bob, key, _volume(137))
    assert _encrypts(bob, key, {**_volume(5), "more": "pairs"})  # a subset of the context
    assert _encrypts(bob, key, {"APP": "disks", "VOLUME": "vol-00000042"})  # keys match whatever their case
    assert not _encrypts(bob, key, _volume(GRANTS))  # no grant for this volume
    assert not _encrypts(bob, key, {"volume": "vol-00000137"})  # half of the grant's subset
    assert _encrypts(bob, key, {"volume": "vol-shared"})
    assert not _encrypts(bob, key, {"volume": "vol-shared", "more": "pairs"})  # equals: these pairs only
    assert error_of(bob.describe_key, KeyId=key)[0] == "AccessDeniedException"  # no grant's operation
    first.client("alice").revoke_grant(KeyId=key, GrantId=granted[137]["GrantId"])
    assert not _encrypts(bob, key, _volume(137))
    first.client("bob").retire_grant(GrantToken=granted[5]["GrantToken"])
    assert not _encrypts(second.client("bob"), key, {**_volume(5), "more": "pairs"})
    alice.revoke_grant(KeyId=key, GrantId=equals["GrantId"])
    assert not _encrypts(bob, key, {"volume": "vol-shared"})
    assert _encrypts(bob, key, _volume(138))  # the others stand
