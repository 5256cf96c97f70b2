"""`serve --store postgresql://…` on a PostgreSQL server of the test's own that restarts under the
calls (fast and immediate stops), fills its disk, or turns read-only: every call answers its AWS
error or succeeds, each is in the audit trail as answered, and the node needs no restart."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.integration.e2e.support import audit_events, reply_id
from tests.support.errors import aws_error
from tests.support.mounts import filled
from tests.support.postgres import admin, database_url, fetch_value, scratch_database
from tests.support.postgres_cluster import PostgresCluster, private_cluster
from tests.support.server import KeytrailServer
from tests.support.store_outage import RETRYABLE, eventually

pytestmark = pytest.mark.integration

Answer = tuple[str, str]  # the error code ("OK" for a success), the request id


@pytest.fixture(autouse=True)
def _root_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())


def _answer(call: Callable[[], Any]) -> Answer:
    try:
        return "OK", reply_id(call())
    except ClientError as error:
        return str(error.response["Error"]["Code"]), reply_id(error)


def _recorded_as_answered(server: KeytrailServer, answers: list[Answer]) -> None:
    """Exactly one event per answered call in the node's trail, with the answer's errorCode."""
    events = [event for event in audit_events(server.data_dir) if "requestID" in event]
    count = Counter(event["requestID"] for event in events)
    codes = {event["requestID"]: event.get("errorCode") or "OK" for event in events}
    assert [(code, count[request], codes.get(request)) for code, request in answers] == [
        (code, 1, code) for code, _ in answers]


class _Load:
    """Calls from `threads` threads (Encrypt, DescribeKey, CreateKey) until stopped; their answers."""

    def __init__(self, server: KeytrailServer, key: str, threads: int = 3) -> None:
        self.answers: list[Answer] = []
        self._server, self._key = server, key
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._calls) for _ in range(threads)]

    def _calls(self) -> None:
        kms = self._server.client("alice")
        calls = [lambda: kms.encrypt(KeyId=self._key, Plaintext=b"x"), lambda: kms.describe_key(KeyId=self._key),
                 kms.create_key]
        turn = 0
        while not self._stop.is_set():
            self.answers.append(_answer(calls[turn % len(calls)]))
            turn += 1

    def __enter__(self) -> _Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def answered(self, codes: set[str], at_least: int) -> None:
        """Wait until `at_least` calls more have answered one of `codes`."""
        wanted = sum(code in codes for code, _ in self.answers) + at_least
        deadline = time.monotonic() + 60
        while sum(code in codes for code, _ in self.answers) < wanted:
            assert time.monotonic() < deadline, Counter(code for code, _ in self.answers)
            time.sleep(0.05)


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    with private_cluster() as running:
        yield running


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_calls_through_a_restart_of_the_database_answer_the_retryable_error_and_serve_again_after(
        tmp_path: Path, cluster: PostgresCluster, mode: str) -> None:
    server = KeytrailServer(tmp_path / "data", "--store", cluster.url(), dev_clock=False).start()
    try:
        kms = server.client("alice")
        key = kms.create_key()["KeyMetadata"]["KeyId"]
        with _Load(server, key) as load:
            load.answered({"OK"}, 10)
            cluster.stop(mode)
            load.answered({"KMSInternalException"}, 10)
            cluster.start()
            load.answered({"OK"}, 30)  # the same node, its pool's connections broken by the restart
        log = server.log.read_text()
    finally:
        assert server.stop() == 0
    assert set(code for code, _ in load.answers) <= {"OK", "KMSInternalException", "DependencyTimeoutException"}
    _recorded_as_answered(server, load.answers)
    assert "Traceback" not in log, log[-3000:]
    assert log.count("the key store is out of reach") == 1, log[-3000:]
    assert "the key store answers again" in log


def _writes(kms: Any, key: str) -> list[tuple[str, str, int]]:
    """CreateKey and TagResource in turn until four have failed (of 40); the (code, message,
    status) of each that failed."""
    failures = []
    for turn in range(40):
        try:
            if turn % 2:
                kms.create_key()
            else:
                kms.tag_resource(KeyId=key, Tags=[{"TagKey": f"t{turn}", "TagValue": "v" * 256}])
        except ClientError as error:
            failures.append((error.response["Error"]["Code"], error.response["Error"]["Message"],
                             error.response["ResponseMetadata"]["HTTPStatusCode"]))
            if len(failures) == 4:
                break
    return failures


def _refusals(log: str) -> list[str]:
    return [line for line in log.splitlines() if "the key store refused a write" in line]


def test_a_database_out_of_disk_fails_writes_with_the_retryable_error_in_one_line_and_serves_reads(
        tmp_path: Path) -> None:
    # PostgreSQL's "could not extend file …: No space left on device" (SQLSTATE 53100) raised out of
    # each write as a bug: a traceback a call (118 for 120 writes) and "An internal error occurred."
    with private_cluster(disk="64m") as cluster:
        server = KeytrailServer(tmp_path / "data", "--store", cluster.url(), dev_clock=False).start()
        try:
            kms = server.client("alice")
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            filler = filled(cluster.folder)
            failures = _writes(kms, key)
            assert kms.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key)  # reads write nothing
            filler.unlink()
            assert eventually(kms.create_key)["KeyMetadata"]["Enabled"]
            log = server.log.read_text()
        finally:
            assert server.stop() == 0
    assert failures and set(failures) == {("KMSInternalException", RETRYABLE, 500)}, failures
    assert "Traceback" not in log, log[-3000:]
    [line] = _refusals(log)  # once, not a line a call
    assert "No space left on device" in line, line


def test_a_read_only_database_fails_writes_with_the_retryable_error_in_one_line_and_serves_reads(
        tmp_path: Path) -> None:
    # A database that takes no writes while it answers reads: the hot standby a failover left the
    # store's address on, or default_transaction_read_only (set by hand for maintenance, or by a
    # managed PostgreSQL whose storage is nearly full). "cannot execute INSERT in a read-only
    # transaction" (SQLSTATE 25006) raised out of each write as a bug.
    with scratch_database() as name:
        server = KeytrailServer(tmp_path / "data", "--store", database_url(name), dev_clock=False).start()
        try:
            kms = server.client("alice")
            key = kms.create_key()["KeyMetadata"]["KeyId"]
            _read_only(name, True)
            failures = _writes(kms, key)
            assert kms.encrypt(KeyId=key, Plaintext=b"x")["KeyId"].endswith(key)
            assert aws_error(kms.create_key)[:2] == ("KMSInternalException", RETRYABLE)
            _read_only(name, False)
            assert eventually(kms.create_key)["KeyMetadata"]["Enabled"]
            log = server.log.read_text()
        finally:
            assert server.stop() == 0
    assert set(failures) == {("KMSInternalException", RETRYABLE, 500)}, failures
    assert "Traceback" not in log, log[-3000:]
    [line] = _refusals(log)
    assert "in a read-only transaction" in line, line


def _read_only(database: str, on: bool) -> None:
    """Make `database`'s sessions read-only (or not), its current ones ended so that the node's
    pool opens new ones under the setting."""
    setting = "SET default_transaction_read_only = on" if on else "RESET default_transaction_read_only"
    asyncio.run(admin(f"ALTER DATABASE {database} {setting}"))
    asyncio.run(admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"))


def _rotate(data_dir: Path, store: str, new_key: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "root-key", "rotate", "--data-dir", str(data_dir),
                           "--store", store, "--new-key", str(new_key)], capture_output=True, text=True, timeout=300)


def _leave_free(folder: Path, room: int) -> Path:
    """Fill the filesystem of `folder` but for `room` bytes; the file that holds the rest."""
    stat = os.statvfs(folder)
    filler = folder / "filler"
    with filler.open("wb") as handle:
        handle.write(bytes(max(stat.f_bavail * stat.f_frsize - room, 0)))
    return filler


_TABLES_SIZE = ("SELECT sum(pg_total_relation_size(oid))::bigint FROM pg_class "
                "WHERE relname LIKE 'kms_%' AND relkind = 'r'")


def test_a_root_key_rotation_on_a_full_database_disk_says_what_it_did_and_leaves_a_root_key_that_opens_the_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The rotation's VACUUM FULL runs after its commit, and needs room for a copy of the tables:
    # refused for a full disk, the rotation said "could not extend file …: nothing was changed" (on two
    # lines), and left root.key holding the old key, which no longer opened the store (serve refused to
    # start). An operator told nothing changed could delete new.key, the one key that opens it. A
    # write refused before the commit raised out of the command as a traceback.
    monkeypatch.delenv(ROOT_KEY_ENV)  # serve makes <data-dir>/root.key, which the rotation replaces
    data = tmp_path / "data"
    new_key = tmp_path / "new.key"
    new_key.write_bytes(os.urandom(32))
    new_key.chmod(0o600)
    with private_cluster(disk="64m") as cluster:
        server = KeytrailServer(data, "--store", cluster.url(), dev_clock=False).start()
        try:
            kms = server.client("alice")
            for _ in range(150):  # tables of a few MB, which the rewrite copies
                key = kms.create_key(Description="".join(random.choices(string.ascii_letters, k=8000)))
            blob = kms.encrypt(KeyId=key["KeyMetadata"]["KeyId"], Plaintext=b"sealed")["CiphertextBlob"]
        finally:
            assert server.stop() == 0
        old_key = (data / "root.key").read_bytes()
        tables = asyncio.run(fetch_value(cluster.url(), _TABLES_SIZE))

        filler = filled(cluster.folder)  # no room for the rows resealed: refused before the commit
        refused = _rotate(data, cluster.url(), new_key)
        filler.unlink()
        assert (data / "root.key").read_bytes() == old_key

        filler = _leave_free(cluster.folder, tables * 6 // 10)  # room for the rows, not for the rewrite
        unvacuumed = _rotate(data, cluster.url(), new_key)
        filler.unlink()
        assert (data / "root.key").read_bytes() == new_key.read_bytes()  # the key that opens the store

        server.start()
        try:
            assert server.client("alice").decrypt(CiphertextBlob=blob)["Plaintext"] == b"sealed"
        finally:
            assert server.stop() == 0
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert len(refused.stderr.splitlines()) == 1, refused.stderr
    [said] = refused.stderr.splitlines()
    assert said.startswith("keytrail root-key rotate: the key store could not be resealed (") and (
        "keep both root keys until it succeeds") in said, said
    assert unvacuumed.returncode == 2 and "Traceback" not in unvacuumed.stderr, unvacuumed.stderr
    assert f"{data / 'root.key'} now holds the new root key" in unvacuumed.stdout, unvacuumed.stdout
    [said] = unvacuumed.stderr.splitlines()
    assert "nothing was changed" not in said, said
    assert "VACUUM FULL failed after the commit (could not extend file" in said and "run VACUUM FULL kms_" in said, said
