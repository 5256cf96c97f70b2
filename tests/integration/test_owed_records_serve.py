"""A change left without its audit record by a node killed between the key store's write and the
spool's record (kms/owed_calls.py): the record was written into keys.db with the change, and the
next `keytrail serve` records it as it starts, under the eventID and requestID it had, into a trail
that `keytrail audit verify` still passes. The node is killed in this process, at that very point
(a spool that dies as it is handed the record): a real `kill -9` cannot be timed there; one under a
load of state-changing calls checks that wherever it lands, no change stands without its record."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.clock import ManualClock
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.support import server as server_support
from tests.support.owed_calls import TIGHT, Crash, Spool, context, node
from tests.support.waits import eventually_blocking

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


def _tag_until_stopped(server: KeytrailServer, key_id: str, answered: list[str], refused: list[str],
                       stop: threading.Event) -> None:
    client = server.client("alice")
    for n in itertools.count():
        if stop.is_set():
            return
        try:
            reply = client.tag_resource(KeyId=key_id, Tags=[{"TagKey": "n", "TagValue": str(n)}])
        except BotoCoreError:  # the server died under us: that call got no answer
            return
        except ClientError as error:  # an error answer: the load met a fault, not the kill
            refused.append(str(error))
            return
        answered.append(reply["ResponseMetadata"]["RequestId"])


def test_kill_9_under_state_changing_load_leaves_no_change_without_its_record(tmp_path: Path) -> None:
    # Whatever instant the kill lands on (between a write and its record, or not), each key's tag
    # as the store holds it after the restart is one a TagResource record in the trail set.
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    keys = [server.client("alice").create_key()["KeyMetadata"]["KeyId"] for _ in range(4)]
    answered: list[str] = []
    refused: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_tag_until_stopped, args=(server, key, answered, refused, stop))
               for key in keys]
    for thread in threads:
        thread.start()
    eventually_blocking(lambda: len(answered) >= 200, timeout=120, what="200 answered TagResource calls")
    server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    assert refused == []
    restarted = KeytrailServer(data).start()
    alice = restarted.client("alice")
    held = {(key, tag["TagValue"]) for key in keys for tag in alice.list_resource_tags(KeyId=key)["Tags"]}
    assert restarted.stop() == 0
    events = [e for _, e in iter_events(data)]
    tagged = {(e["requestParameters"]["keyId"], e["requestParameters"]["tags"][0]["tagValue"])
              for e in events if e["eventName"] == "TagResource" and "errorCode" not in e}
    assert held and held <= tagged
    assert set(answered) <= {e.get("requestID") for e in events}
    result = subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
