"""`serve --store postgresql://…` whose database goes away under it (renamed, or the store's role
no longer let in): calls answer AWS's retryable error, the log says why once, and the node serves
again by itself when the database is back."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.support.postgres import admin, database_url, scratch_database
from tests.support.server import KeytrailServer
from tests.support.store_outage import eventually, failed_retryably, failure

pytestmark = pytest.mark.integration

@pytest.fixture(autouse=True)
def _root_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())


def _rename(old: str, new: str) -> None:
    """Rename the database `old`, its sessions (the node's pool) ended first, as ALTER DATABASE asks."""
    async def rename() -> None:
        await admin(f"ALTER DATABASE {old} ALLOW_CONNECTIONS false")
        await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{old}'")
        await admin(f"ALTER DATABASE {old} RENAME TO {new}")
        await admin(f"ALTER DATABASE {new} ALLOW_CONNECTIONS true")

    asyncio.run(rename())


def test_a_database_renamed_away_answers_the_retryable_error_in_one_line_and_serves_again_once_back(
        tmp_path: Path) -> None:
    with scratch_database() as name:
        server = KeytrailServer(tmp_path / "data", "--store", database_url(name), dev_clock=False).start()
        try:
            kms = server.client("alice")
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            _rename(name, f"{name}_away")
            try:
                failures = [failure(lambda: kms.encrypt(KeyId=key, Plaintext=b"x")) for _ in range(5)]
                failures += [failure(kms.create_key) for _ in range(5)]
            finally:
                _rename(f"{name}_away", name)
            assert eventually(lambda: kms.encrypt(KeyId=key, Plaintext=b"x"))["KeyId"].endswith(key)
            log = server.log.read_text()
        finally:
            assert server.stop() == 0
    line = failed_retryably(server.data_dir, failures, log, "the key store is out of reach")
    assert f'database "{name}" does not exist' in line, line
    assert "the key store answers again" in log, log[-3000:]


def _login(role: str, database: str, allowed: bool) -> None:
    """Let `role` log in (or not), its sessions in `database` (the node's pool) ended when not."""
    async def change() -> None:
        await admin(f"ALTER ROLE {role} {'LOGIN' if allowed else 'NOLOGIN'}")
        if not allowed:
            await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'")

    asyncio.run(change())


def test_a_role_no_longer_let_in_answers_the_retryable_error_in_one_line_and_serves_again_once_let_in(
        tmp_path: Path) -> None:
    # The role's login taken away (as a password changed or pg_hba.conf no longer naming it refuse
    # it, SQLSTATE class 28): every call that needed a new connection raised it with a traceback.
    role = f"keytrail_role_{os.urandom(4).hex()}"
    asyncio.run(admin(f"CREATE ROLE {role} LOGIN"))
    try:
        with scratch_database() as name:
            asyncio.run(admin(f"ALTER DATABASE {name} OWNER TO {role}"))
            store = database_url(name).replace("postgres@", f"{role}@")
            server = KeytrailServer(tmp_path / "data", "--store", store, dev_clock=False).start()
            try:
                kms = server.client("alice")
                key = kms.create_key()["KeyMetadata"]["KeyId"]
                _login(role, name, False)
                try:
                    failures = [failure(lambda: kms.encrypt(KeyId=key, Plaintext=b"x")) for _ in range(5)]
                finally:
                    _login(role, name, True)
                assert eventually(lambda: kms.encrypt(KeyId=key, Plaintext=b"x"))["KeyId"].endswith(key)
                log = server.log.read_text()
            finally:
                assert server.stop() == 0
    finally:
        asyncio.run(admin(f"DROP ROLE IF EXISTS {role}"))
    line = failed_retryably(server.data_dir, failures, log, "the key store is out of reach")
    assert f'role "{role}" is not permitted to log in' in line, line
