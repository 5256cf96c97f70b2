"""The PostgreSQL store under a least-privilege role, as a DBA sets one up: tables made by an
administrator, a role that may only read and write them; what the store needs is asked of it once,
as the node starts, and what it lacks is said in one line."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from keytrail.cli.key_store import StoreUnavailable, open_store
from keytrail.clock import ManualClock
from keytrail.config import ServeSettings
from keytrail.kms import errors
from keytrail.kms.postgres_store import PostgresStore, StoreBusy
from keytrail.kms.sealing import RootKey
from tests.integration.keystores.test_postgres_store import Node
from tests.support.postgres import ADMIN_DSN

pytestmark = pytest.mark.integration


async def _admin(dsn: str, *statements: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
async def role() -> AsyncIterator[str]:
    """A login role of the test's own that owns nothing and holds no privilege, dropped afterwards
    (ask for it before `dsn`, whose database, holding its privileges, goes first)."""
    name = f"keytrail_role_{os.urandom(6).hex()}"
    await _admin(ADMIN_DSN, f"CREATE ROLE {name} LOGIN")
    try:
        yield name
    finally:
        await _admin(ADMIN_DSN, f"DROP ROLE {name}")


async def _made_by_the_administrator(dsn: str, root: RootKey) -> None:
    """The store's tables made, and a key written, by the administrator's role."""
    store = await PostgresStore.connect(dsn, root)
    await Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")("CreateKey")
    await store.close()


def _as(dsn: str, role: str) -> str:
    return dsn.replace("postgres@", f"{role}@")


async def _opened_as_a_user_of_the_tables(dsn: str, role: str) -> tuple[PostgresStore, RootKey]:
    """The store (and its root key), its tables made by the administrator, opened as `role`, which
    may use them only."""
    root = RootKey(os.urandom(32))
    await _made_by_the_administrator(dsn, root)
    await _admin(dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
    return await PostgresStore.connect(_as(dsn, role), root), root


async def test_a_role_that_may_only_use_the_tables_an_administrator_made_serves_from_them(
        role: str, dsn: str) -> None:
    # CREATE TABLE IF NOT EXISTS needs CREATE on the schema even for a table that is there: every
    # start ran it, and such a role was refused ("permission denied for schema public").
    store, _ = await _opened_as_a_user_of_the_tables(dsn, role)
    try:
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("CreateKey"))["KeyMetadata"]["KeyId"]
        assert len((await node("ListKeys"))["Keys"]) == 2
        await node("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    finally:
        await store.close()


async def test_a_role_lacking_a_privilege_on_the_tables_is_refused_as_the_node_starts_naming_it(
        role: str, dsn: str) -> None:
    # Before, such a node started, and then each RevokeGrant failed with a traceback in the log
    # ("permission denied for table kms_grants"), and no write's owed records were ever deleted.
    root = RootKey(os.urandom(32))
    await _made_by_the_administrator(dsn, root)
    await _admin(dsn, f"GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO {role}",
                 f"REVOKE UPDATE ON kms_ledger FROM {role}")
    with pytest.raises(PermissionError) as refused:
        await PostgresStore.connect(_as(dsn, role), root)
    assert str(refused.value) == (
        f"the role {role} lacks UPDATE on kms_ledger; DELETE on kms_aliases, kms_custom_key_stores, kms_grant_terms, "
        "kms_grants, "
        "kms_import_parameters, kms_key_last_use, kms_keys, kms_ledger, kms_owed_records, kms_root_key: "
        "GRANT SELECT, INSERT, UPDATE, DELETE on the key store's tables to it")


async def test_a_role_without_connect_is_refused_in_one_line_naming_the_privilege(
        role: str, dsn: str, tmp_path: Path) -> None:
    # PostgreSQL's DETAIL, which names the privilege, came on a line of its own.
    database = dsn.rsplit("/", 1)[1]
    await _admin(ADMIN_DSN, f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
    with pytest.raises(StoreUnavailable) as refused:
        await open_store(ServeSettings(data_dir=tmp_path, store=_as(dsn, role)))
    assert str(refused.value) == (f'cannot open the key store at 127.0.0.1:5432/{database}: permission denied for '
                                  f'database "{database}" DETAIL: User does not have CONNECT privilege.')


async def test_a_store_of_a_version_before_is_refused_in_one_line_to_a_role_that_cannot_add_to_it(
        role: str, dsn: str, tmp_path: Path) -> None:
    # A version that adds to the tables (kms_grants.grantee) is opened first as their owner.
    store, root = await _opened_as_a_user_of_the_tables(dsn, role)
    await store.close()
    await _admin(dsn, "ALTER TABLE kms_grants DROP COLUMN grantee")
    with pytest.raises(StoreUnavailable) as refused:
        await open_store(ServeSettings(data_dir=tmp_path, store=_as(dsn, role)))
    # It was PostgreSQL's own words only: "permission denied for schema public".
    assert str(refused.value) == (
        f"cannot open the key store at 127.0.0.1:5432/{dsn.rsplit('/', 1)[1]}: the role {role} may not make the "
        "key store's tables, or add to them what this version of keytrail needs (permission denied for schema "
        "public): start one node once as the tables' owner")
    store = await PostgresStore.connect(dsn, root)  # the owner adds the column; the role then serves
    await store.close()
    await (await PostgresStore.connect(_as(dsn, role), root)).close()


async def test_a_rotation_by_the_tables_owner_is_refused_while_a_node_of_another_role_is_connected(
        role: str, dsn: str) -> None:
    # pg_stat_activity shows a role without pg_read_all_stats another role's sessions with no
    # backend_type: the rotation, run as the tables' owner (no superuser), counted no other client
    # and resealed under a node serving as `role`, whose every call then failed as if forged.
    owner, database = f"keytrail_owner_{os.urandom(6).hex()}", dsn.rsplit("/", 1)[1]
    await _admin(ADMIN_DSN, f"CREATE ROLE {owner} LOGIN", f"ALTER DATABASE {database} OWNER TO {owner}")
    try:
        root = RootKey(os.urandom(32))
        rotating = await PostgresStore.connect(_as(dsn, owner), root)  # makes the tables: their owner
        await _admin(dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}")
        node = await PostgresStore.connect(_as(dsn, role), root)
        try:
            with pytest.raises(StoreBusy, match="^1 other client"):
                await rotating.reseal(RootKey(os.urandom(32)))
        finally:
            await node.close()
            await rotating.close()
        await (await PostgresStore.connect(dsn, root)).close()  # still sealed under the old root key
    finally:
        await _admin(dsn, f"REASSIGN OWNED BY {owner} TO postgres")
        await _admin(ADMIN_DSN, f"DROP ROLE {owner}")


async def test_a_root_key_rotation_by_a_role_that_does_not_own_the_tables_is_refused_changing_nothing(
        role: str, dsn: str) -> None:
    # PostgreSQL skips VACUUM FULL of a table the role does not own with a warning only: the rotation
    # was answered as done while the old root key's sealed values stayed in the tables' files.
    store, root = await _opened_as_a_user_of_the_tables(dsn, role)
    try:
        with pytest.raises(StoreBusy, match=f"the role {role} does not own kms_aliases, .*nothing was changed"):
            await store.reseal(RootKey(os.urandom(32)))
    finally:
        await store.close()
    await (await PostgresStore.connect(dsn, root)).close()  # still sealed under the old root key


@pytest.mark.parametrize("operation", ["DescribeKey", "TagResource", "CreateKey"])
async def test_a_statement_timeout_set_on_the_database_gives_dependency_timeout(operation: str, dsn: str) -> None:
    # The database cancelling a statement (a DBA's statement_timeout on the role or the database)
    # raised QueryCanceledError out of the call: "An internal error occurred." and a traceback.
    root = RootKey(os.urandom(32))
    await _made_by_the_administrator(dsn, root)
    await _admin(ADMIN_DSN, f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} SET statement_timeout = '200ms'")
    store = await PostgresStore.connect(dsn, root)
    blocker = await asyncpg.connect(dsn)
    try:
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("ListKeys"))["Keys"][0]["KeyId"]
        params = {"KeyId": key_id, "Tags": [{"TagKey": "k", "TagValue": "v"}]} if operation == "TagResource" else (
            {"KeyId": key_id} if operation == "DescribeKey" else {})
        async with blocker.transaction():
            await blocker.execute("LOCK TABLE kms_keys, kms_ledger IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(errors.DependencyTimeoutException, match=r"due to statement timeout\)\. You can retry"):
                await node(operation, **params)
        await node(operation, **params)  # once the lock is gone, the same call goes through
    finally:
        await blocker.close()
        await store.close()


async def test_a_connection_limit_reached_fails_the_calls_needing_a_new_connection_as_retryable(
        role: str, dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    # The role's CONNECTION LIMIT (or max_connections) reached under load: TooManyConnectionsError
    # raised out of each call that needed a new connection, "An internal error occurred." and a
    # traceback in the log each.
    root = RootKey(os.urandom(32))
    await _made_by_the_administrator(dsn, root)
    await _admin(dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                 f"ALTER ROLE {role} CONNECTION LIMIT 1")
    store = await PostgresStore.connect(_as(dsn, role), root)
    try:
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("ListKeys"))["Keys"][0]["KeyId"]
        async with store._connections.connection():  # the role's one connection, busy
            for _ in range(3):
                with pytest.raises(errors.KMSInternalException, match="The request can be retried"):
                    await node("DescribeKey", KeyId=key_id)
        await node("DescribeKey", KeyId=key_id)
    finally:
        await store.close()
    refusals = [record for record in caplog.records if "refused a new connection" in record.getMessage()]
    assert len(refusals) == 1 and refusals[0].exc_info is None, caplog.text
    assert f'too many connections for role "{role}"' in refusals[0].getMessage()


async def test_a_privilege_revoked_while_the_node_runs_fails_the_calls_needing_it_in_one_log_line(
        role: str, dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    # Before, InsufficientPrivilegeError raised out of each such call: "An internal error
    # occurred." and a traceback in the log each.
    store, _ = await _opened_as_a_user_of_the_tables(dsn, role)
    try:
        node = Node(store, ManualClock(datetime(2026, 1, 1, tzinfo=UTC)), "us-east-1")
        key_id = (await node("ListKeys"))["Keys"][0]["KeyId"]
        await _admin(dsn, f"REVOKE UPDATE ON kms_ledger FROM {role}")
        for _ in range(3):
            with pytest.raises(errors.KMSInternalException, match="The request can be retried"):
                await node("TagResource", KeyId=key_id, Tags=[{"TagKey": "k", "TagValue": "v"}])
        await node("DescribeKey", KeyId=key_id)  # reads go on
    finally:
        await store.close()
    denials = [record for record in caplog.records if "refused a statement" in record.getMessage()]
    assert len(denials) == 1 and denials[0].exc_info is None, caplog.text
    assert "permission denied for table kms_ledger" in denials[0].getMessage()
    assert "Traceback" not in caplog.text


async def test_a_database_read_only_for_the_role_is_refused_as_the_node_starts(role: str, dsn: str) -> None:
    # A hot standby, or default_transaction_read_only: the tables' CREATE, which every start ran,
    # refused it; a store whose tables are there must say so itself.
    root = RootKey(os.urandom(32))
    await _made_by_the_administrator(dsn, root)
    await _admin(dsn, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
                 f"ALTER ROLE {role} SET default_transaction_read_only = on")
    with pytest.raises(PermissionError, match="^the database is read-only for this node"):
        await PostgresStore.connect(_as(dsn, role), root)
