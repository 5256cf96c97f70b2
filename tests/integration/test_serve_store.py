"""`serve --store postgresql://…` losing its database while it runs: calls answer an AWS error,
/metrics still answers, health says why it is unhealthy, and all recover by themselves once the
database is back."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.errors import aws_error
from tests.support.postgres import ADMIN_DSN, admin, database_url, fetch, scratch_database
from tests.support.server import KeytrailServer
from tests.support.services import TcpRelay

pytestmark = pytest.mark.integration


@pytest.fixture
def database() -> Iterator[str]:
    """A database of the test's own on the real server at 127.0.0.1:5432, dropped afterwards."""
    with scratch_database() as name:
        yield name


def _serve_on(tmp_path: Path, database: str, port: int) -> KeytrailServer:
    """`serve` on the PostgreSQL `database` reached at 127.0.0.1:`port` (a TcpRelay's, to cut it)."""
    return KeytrailServer(tmp_path / "data", "--store", database_url(database, port),
                          dev_clock=False).start()


async def _session_names(database: str) -> set[str]:
    """The application_name of every session on `database` (pg_stat_activity)."""
    rows = await fetch(ADMIN_DSN, "SELECT application_name FROM pg_stat_activity WHERE datname = $1", database)
    return {row[0] for row in rows}


def test_a_node_s_key_store_sessions_say_which_node_holds_them(tmp_path: Path, database: str) -> None:
    # pg_stat_activity showed an empty application_name: a DBA could not tell keytrail's sessions
    # from others', nor which node held them. A name the store's URL gives is kept.
    url = database_url(database)
    for query, name in (("", "keytrail serve 127.0.0.1:{port}"), ("?application_name=billing-kms", "billing-kms")):
        server = KeytrailServer(tmp_path / "data", "--store", url + query, dev_clock=False).start()
        try:
            server.client("alice").create_key()
            assert asyncio.run(_session_names(database)) == {name.format(port=server.port)}
        finally:
            server.stop()

def test_a_lost_key_store_fails_calls_with_an_aws_error_and_metrics_still_answer(
        tmp_path: Path, database: str) -> None:
    relay = TcpRelay(5432).restore()
    server = _serve_on(tmp_path, database, relay.port)
    try:
        alice = server.client("alice")
        key = alice.create_key()["KeyMetadata"]["KeyId"]
        before = len(server.log.read_text())
        relay.cut()
        for _ in range(3):  # each retried by boto3: a dozen failed calls
            assert aws_error(alice.encrypt, KeyId=key, Plaintext=b"x")[0] == "KMSInternalException"
        assert aws_error(alice.create_key)[0] == "KMSInternalException"  # a write too
        status, body = server.get("/metrics")
        assert status == 200, body[-500:]
        assert "keytrail_audit_committed_records_total" in body.decode()
        relay.restore()
        assert alice.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key)
        assert 'keytrail_kms_keys{state="Enabled"} 1' in server.get("/metrics")[1].decode()
        outage = server.log.read_text()[before:]
    finally:
        relay.cut()  # a stop without the store: its last uses of keys are not shared, which it says
        assert server.stop() == 0
    # The outage said once, and its end, in lines of their own: a traceback per call flooded the log.
    assert "Traceback" not in outage, outage[-3000:]
    assert outage.count("the key store is out of reach") == 1, outage[-3000:]
    assert "the key store answers again, after" in outage


def test_metrics_answer_while_the_key_store_hangs(tmp_path: Path, database: str) -> None:
    relay = TcpRelay(5432).restore()
    server = _serve_on(tmp_path, database, relay.port)
    try:
        server.client("alice").create_key()
        relay.hold()  # the database neither answers nor drops the connection
        status, body = server.get("/metrics")
        assert status == 200, body[-500:]
        # left out for the scrape's own bound on the inventory, not the store's later error
        assert "keytrail_kms_keys left out, the key store did not answer in" in server.log.read_text()
        assert "keytrail_audit_committed_records_total" in body.decode()
        assert "keytrail_kms_keys" not in body.decode()
        relay.release()
        assert 'keytrail_kms_keys{state="Enabled"} 1' in server.get("/metrics")[1].decode()
    finally:
        relay.release()
        relay.cut()
        assert server.stop() == 0


def _health(server: KeytrailServer) -> tuple[int, dict[str, str]]:
    status, body = server.get("/_keytrail/health")
    return status, json.loads(body)


def _health_until(server: KeytrailServer, wanted: int) -> dict[str, str]:
    """The health body once it answers `wanted` (its key store outcome is kept for a second)."""
    for _ in range(100):
        status, health = _health(server)
        if status == wanted:
            return health
        time.sleep(0.1)
    raise AssertionError(f"health never answered {wanted}: {health}")


def test_health_is_unhealthy_while_the_key_store_is_lost_and_healthy_once_it_is_back(
        tmp_path: Path, database: str) -> None:
    relay = TcpRelay(5432).restore()
    server = _serve_on(tmp_path, database, relay.port)
    try:
        status, health = _health(server)
        assert status == 200 and health["status"] == "ok" and "keyStore" not in health, health
        relay.cut()
        health = _health_until(server, 503)
        assert health["status"] == "unhealthy" and "audit" not in health
        assert health["keyStore"].startswith("the key store does not answer: "), health
        assert "\n" not in health["keyStore"]
        relay.restore()
        assert _health_until(server, 200)["status"] == "ok"
    finally:
        relay.cut()
        assert server.stop() == 0


def test_health_is_unhealthy_once_the_database_is_dropped(tmp_path: Path, database: str) -> None:
    server = _serve_on(tmp_path, database, 5432)
    try:
        server.client("alice").create_key()
        asyncio.run(admin(f"DROP DATABASE {database} WITH (FORCE)"))  # terminates the node's connections
        health = _health_until(server, 503)
        assert database in health["keyStore"] and "does not exist" in health["keyStore"], health
    finally:
        assert server.stop() == 0


def test_health_answers_unhealthy_while_the_key_store_hangs(tmp_path: Path, database: str) -> None:
    relay = TcpRelay(5432).restore()
    server = _serve_on(tmp_path, database, relay.port)
    try:
        relay.hold()  # the database neither answers nor drops the connection: health must not hang with it
        assert _health_until(server, 503)["keyStore"] == "the key store did not answer within 2 s"
        statuses = [_health(server) for _ in range(3)]  # the query still in flight: no second one waits
        assert statuses == [(503, statuses[0][1])] * 3 and "did not answer" in statuses[0][1]["keyStore"]
        relay.release()
        assert _health_until(server, 200)["status"] == "ok"
    finally:
        relay.release()
        relay.cut()
        assert server.stop() == 0


def test_a_store_url_in_the_environment_keeps_its_password_off_the_command_line(
        tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # A command line is readable by every user of the machine; the environment of serve is not.
    monkeypatch.setenv("KEYTRAIL_STORE", f"postgresql://postgres:pw-in-env@127.0.0.1:5432/{database}")
    server = KeytrailServer(tmp_path / "data").start()
    try:
        key = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
        assert server.proc is not None
        assert b"pw-in-env" not in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "data" / "keys.db").exists()
    dsn = database_url(database)

    async def stored() -> list[str]:
        connection = await asyncpg.connect(dsn, timeout=5)
        try:
            return [row["key_id"] for row in await connection.fetch("SELECT key_id FROM kms_keys")]
        finally:
            await connection.close()

    assert asyncio.run(stored()) == [key]
    assert "pw-in-env" not in server.log.read_text() and "WARNING" not in server.log.read_text()


def test_a_revoked_grant_put_back_in_the_database_stops_serve_starting_in_one_line(
        tmp_path: Path, database: str) -> None:
    server = _serve_on(tmp_path, database, 5432)
    kms = server.client("alice")
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    grant = kms.create_grant(KeyId=key, GranteePrincipal="arn:aws:iam::111122223333:user/bob",
                             Operations=["Decrypt"])["GrantId"]
    dsn = database_url(database)
    revoked = asyncio.run(_fetch(dsn, "SELECT * FROM kms_grants WHERE grant_id=$1", grant))[0]
    kms.revoke_grant(KeyId=key, GrantId=grant)
    assert server.stop() == 0
    columns = ", ".join(f"${n}" for n in range(1, len(revoked) + 1))
    asyncio.run(_fetch(dsn, f"INSERT INTO kms_grants VALUES ({columns})", *revoked.values()))
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        server.start()
    assert server.proc is not None and server.proc.wait(10) == 2
    server.proc = None
    assert server.log.read_text().strip().splitlines()[-1] == (
        f"keytrail serve: cannot open the key store at 127.0.0.1:5432/{database}: the key store does not match its "
        "ledger (rows rolled back, deleted or added outside keytrail): grants 1 row(s), the ledger 0")


async def _fetch(dsn: str, statement: str, *args: object) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(dsn, timeout=5)
    try:
        return list(await connection.fetch(statement, *args))
    finally:
        await connection.close()


def test_a_node_refused_by_a_store_sealed_under_another_root_key_leaves_no_root_key_behind(
        tmp_path: Path, database: str) -> None:
    """A second node pointed at the store without its root key made one of its own to try: left
    in its data dir, a retry would load that wrong key again and hide that the real one is missing."""
    first = _serve_on(tmp_path, database, 5432)
    first.client("alice").create_key()
    assert first.stop() == 0
    second = KeytrailServer(tmp_path / "second", "--store", database_url(database),
                            dev_clock=False)
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        second.start()
    assert second.proc is not None and second.proc.wait(10) == 2
    second.proc = None
    assert "the root key does not open the key material in the key store" in second.log.read_text()
    assert not (tmp_path / "second" / "root.key").exists()


def test_a_node_refused_by_an_empty_store_whose_ledger_it_cannot_verify_says_so_and_leaves_no_root_key(
        tmp_path: Path, database: str) -> None:
    """An empty store whose root key check is gone: nothing but its ledger row to try the root key
    on, so the refusal says the ledger does not verify (not that the key is wrong), and the key
    made to try it goes as for a store sealed under another root key."""
    dsn = database_url(database)
    assert _serve_on(tmp_path, database, 5432).stop() == 0
    asyncio.run(_fetch(dsn, "DELETE FROM kms_root_key"))
    second = KeytrailServer(tmp_path / "second", "--store", dsn, dev_clock=False)
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        second.start()
    assert second.proc is not None and second.proc.wait(10) == 2
    second.proc = None
    assert second.log.read_text().strip().splitlines()[-1] == (
        f"keytrail serve: cannot open the key store at 127.0.0.1:5432/{database}: the key store does not match its "
        "ledger (rows rolled back, deleted or added outside keytrail): the ledger row does not verify under the "
        "root key, and the store holds no other row to tell an edited ledger from a root key that is not the store's")
    assert not (tmp_path / "second" / "root.key").exists()


def _serve_patched(script: str, data: Path, url: str) -> subprocess.CompletedProcess[str]:
    """`keytrail serve` on `data` and the store at `url`, run by `script` (which patches it first)."""
    return subprocess.run([sys.executable, "-c", script, "serve", "--data-dir", str(data), "--port", "0",
                           "--store", url], capture_output=True, text=True, timeout=60)


# `keytrail serve` whose node fails to start, after the key store opened (sealed under its root key).
_START_FAILS = """
import keytrail.cli.node as node
async def _start(*args):
    raise OSError(28, "No space left on device", "/data/audit/spool/00000000.seg")
node._start = _start
from keytrail.cli import main
main()
"""


def test_a_failed_start_on_a_new_postgresql_store_keeps_only_the_root_key_it_is_sealed_under(
        tmp_path: Path, database: str) -> None:
    # The rest of what the start made goes, but that key stays: the store holds its root key check
    # now, and a new key made by the retry would not open it.
    data, url = tmp_path / "data", database_url(database)
    out = _serve_patched(_START_FAILS, data, url)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert out.stderr == (
        "keytrail serve: the node did not start: No space left on device: /data/audit/spool/00000000.seg\n")
    assert [path.name for path in data.iterdir()] == ["root.key"]
    server = KeytrailServer(data, "--store", url, dev_clock=False).start()
    try:
        assert server.client("alice").create_key()["KeyMetadata"]["Enabled"]
    finally:
        assert server.stop() == 0


# `keytrail serve` whose database drops the connection as the node first reads the store's keys,
# after the store opened (its tables made and sealed under the root key the start made).
_FIRST_READ_FAILS = """
import asyncpg
from keytrail.kms.postgres_store import PostgresStore
async def _rows(self, sql, *args):
    async with self._connections.connection() as connection:
        if "FROM kms_keys" in sql:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return list(await connection.fetch(sql, *args))
PostgresStore._rows = _rows
from keytrail.cli import main
main()
"""


def test_a_first_start_whose_database_fails_the_first_read_says_so_in_one_line_and_the_next_start_serves(
        tmp_path: Path, database: str) -> None:
    # The store's KMSInternalException went through as a traceback, exit 1.
    data, url = tmp_path / "data", database_url(database)
    out = _serve_patched(_FIRST_READ_FAILS, data, url)
    assert (out.returncode, out.stdout) == (2, ""), out.stderr
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"keytrail serve: cannot read the key store at 127.0.0.1:5432/{database}: the first read of its keys failed "
        "(The request was rejected because an internal exception occurred. The request can be retried.): start "
        "again once the database answers")
    assert "the key store is out of reach (connection was closed in the middle of operation)" in out.stderr
    assert [path.name for path in data.iterdir()] == ["root.key"]  # the store is sealed under it now
    server = KeytrailServer(data, "--store", url, dev_clock=False).start()
    try:
        kms = server.client("alice")
        blob = kms.encrypt(KeyId=kms.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == b"x"
    finally:
        assert server.stop() == 0


def test_a_database_that_never_answers_stops_serve_starting_in_one_line_that_says_so(tmp_path: Path) -> None:
    # A hung server (or a proxy with nothing behind it) takes the connection and never answers:
    # the line ended in "cannot open the key store at HOST/DB: ", the TimeoutError's empty text.
    with socket.create_server(("127.0.0.1", 0)) as hung:  # never accepted: the kernel's backlog completes the connects
        where = f"127.0.0.1:{hung.getsockname()[1]}/keytrail"
        result = subprocess.run(
            [sys.executable, "-m", "keytrail", "serve", "--data-dir", str(tmp_path / "data"), "--port", "0",
             "--store", f"postgresql://postgres@{where}"],
            capture_output=True, text=True, timeout=120,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"keytrail serve: cannot open the key store at {where}: the database did not answer within 10 s")
    assert "Traceback" not in result.stderr
