"""A change left without its audit record by a node killed between the key store's write and the
spool's record (kms/owed_calls.py): the record was written into keys.db with the change, and the
next `keytrail serve` records it as it starts, under the eventID and requestID it had, into a trail
that `keytrail audit verify` still passes. The node is killed in this process, at that very point
(a spool that dies as it is handed the record): a real `kill -9` cannot be timed there."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.support import server as server_support
from tests.support.owed_calls import TIGHT, Crash, Spool, context, node

pytestmark = pytest.mark.integration

KeytrailServer = server_support.KeytrailServer


async def _killed_after_its_write(data: Path, key_id: str) -> str:
    """PutKeyPolicy on `key_id` by a node that dies before its record is durable; the eventID owed."""
    store = SqliteStore(data / "keys.db", RootKey.load(data, create=False))
    spool = Spool()
    spool.crash_at = {"PutKeyPolicy"}
    with pytest.raises(Crash):
        await node(store, spool, ManualClock()).execute(
            "PutKeyPolicy", context("req-left-owed"), {"KeyId": key_id, "Policy": TIGHT})
    [owed] = await store.owed_records()
    await store.close()
    return owed.event_id


def test_a_change_whose_node_died_before_its_record_is_recorded_by_the_next_serve(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    key_id = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
    assert server.stop() == 0
    event_id = asyncio.run(_killed_after_its_write(data, key_id))
    assert not any(e.get("requestID") == "req-left-owed" for _, e in iter_events(data))

    restarted = KeytrailServer(data).start()
    assert restarted.client("alice").get_key_policy(KeyId=key_id, PolicyName="default")["Policy"] == TIGHT
    assert restarted.stop() == 0
    [event] = [e for _, e in iter_events(data) if e.get("requestID") == "req-left-owed"]
    assert (event["eventID"], event["eventName"], event.get("errorCode")) == (event_id, "PutKeyPolicy", None)
    assert event["requestParameters"]["policy"] == TIGHT
    assert event["userIdentity"]["arn"].endswith(":user/alice")
    with sqlite3.connect(data / "keys.db") as db:
        assert db.execute("SELECT count(*) FROM owed_records").fetchone() == (0,)
    db.close()
    result = subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
