"""A real `keytrail serve` whose wall clock steps (an NTP step, a clock set by hand) while it runs:
its own detector, reading the node's event log in the order the calls were logged, judges them
as they happened."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.support.postgres import database_url, scratch_database
from tests.support.server import KeytrailServer
from tests.support.waits import eventually_blocking
from tests.support.wall_clock import SteppedWallClock

# usage-spike sooner than its defaults (100 calls a minute over an hour of history), as configured
_RULES = "[rules.usage-spike.parameters]\nmin_calls = 20\nmin_history_minutes = 5\n"


class _Minutes:
    """Sets the node's clock 5 s into a minute counted from where the test began (minute 0)."""

    def __init__(self, clock: SteppedWallClock, start: float) -> None:
        self.clock, self.start = clock, start

    def at(self, minute: int) -> None:
        self.clock.step_to(round(self.start + minute * 60 + 5 - time.time()))


@pytest.fixture
def stepped_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[KeytrailServer, _Minutes]]:
    """A node (its detector a child process, on the real clock's path) whose clock the test sets;
    --dev-credentials, so that the test's own calls, signed by the real clock, are not refused as
    expired whatever the node's clock says."""
    clock = SteppedWallClock(tmp_path)
    minutes = _Minutes(clock, (time.time() // 60 - 120) * 60)  # two hours back: never ahead of the real clock
    minutes.at(0)
    rules = tmp_path / "rules.toml"
    rules.write_text(_RULES)
    server = KeytrailServer(tmp_path / "data", "--dev-credentials", "--config", str(rules), "--scheduler-interval", "1",
                            dev_clock=False)
    with clock.preloaded(monkeypatch):
        server.start()
    try:
        yield server, minutes
    finally:
        if server.proc is not None:  # not stopped by the test
            assert server.stop() == 0


def _kms(server: KeytrailServer) -> Any:
    return boto3.client("kms", endpoint_url=server.endpoint, region_name="us-east-1",
                        aws_access_key_id="111122223333", aws_secret_access_key="unchecked",
                        config=Config(retries={"total_max_attempts": 1}))


def _spikes(server: KeytrailServer) -> list[dict[str, Any]]:
    path = server.data_dir / "alarms.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [alarm for alarm in map(json.loads, lines) if alarm["rule"] == "usage-spike"]


def test_a_steady_caller_raises_no_usage_spike_when_the_node_clock_steps_back(
        stepped_node: tuple[KeytrailServer, _Minutes]) -> None:
    """20 minutes at 2 calls a minute, the clock set back 15 minutes, the same 2 calls a minute
    on: every call of the 15 repeated minutes was counted in the minute before the step, and the
    node's detector paged a spike ("21 calls/min against a baseline of 2.05/min") for a caller
    that never changed its pace. A real surge afterwards is still raised, and is the only alarm."""
    server, minutes = stepped_node
    kms = _kms(server)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    for minute in [*range(20), *range(5, 21)]:  # minutes 5..19 twice: the step back
        minutes.at(minute)
        for _ in range(2):
            kms.encrypt(KeyId=key, Plaintext=b"x")
    for _ in range(60):  # 30 times the pace, in one minute however slowly the calls go
        minutes.at(21)
        kms.encrypt(KeyId=key, Plaintext=b"x")
    eventually_blocking(lambda: _spikes(server), what="the surge's usage-spike alarm", timeout=60)
    raised = list({alarm["alarmId"]: alarm for alarm in _spikes(server)}.values())  # its last line, if it escalated
    assert len(raised) == 1, [alarm["summary"] for alarm in raised]
    [alarm] = raised
    surge = f"{datetime.fromtimestamp(minutes.start + 21 * 60, UTC):%Y-%m-%dT%H:%M:%SZ}"
    assert alarm["firstSeen"] >= surge, f"raised at {alarm['firstSeen']}, before the surge: {alarm['summary']}"
    assert int(alarm["details"]["observedRate"]) >= 20


def test_audit_verify_tells_a_clock_set_ahead_and_back_from_a_node_down(
        stepped_node: tuple[KeytrailServer, _Minutes]) -> None:
    """The node's clock set two days ahead for a call, then back (NTP correcting a bad source):
    verify said "no digest from … (48.0 h …): the node was down after a crash or hung, or the
    digests and records of that time were removed" of a node that ran throughout."""
    server, minutes = stepped_node
    kms = _kms(server)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    minutes.at(2 * 1440)
    kms.encrypt(KeyId=key, Plaintext=b"x")
    minutes.at(1)
    kms.encrypt(KeyId=key, Plaintext=b"x")
    assert server.stop() == 0
    verify = subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(server.data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "no digest from" not in verify.stdout, verify.stdout
    assert "h after" in verify.stdout and ", in one session: its wall clock was stepped ahead" in verify.stdout, \
        verify.stdout


def test_serve_says_in_one_line_when_its_wall_clock_steps(stepped_node: tuple[KeytrailServer, _Minutes]) -> None:
    """Deletions fall due and calls are dated by the wall clock: a node whose clock NTP stepped two
    days ahead (deleting the keys due meanwhile) or back (its calls dated before those logged)
    said nothing of it."""
    server, minutes = stepped_node
    minutes.at(2 * 1440)
    eventually_blocking(lambda: "WARNING keytrail: the wall clock stepped 48.0 h ahead (" in server.log.read_text(),
                        what="the line of the step ahead", timeout=30)
    minutes.at(1)
    eventually_blocking(lambda: "WARNING keytrail: the wall clock stepped 48.0 h back (" in server.log.read_text(),
                        what="the line of the step back", timeout=30)
    assert server.log.read_text().count("the wall clock stepped") == 2  # once each, not at each run of the scheduler


def test_deletions_due_only_by_a_step_ahead_are_held_until_the_clock_is_set_right(
        stepped_node: tuple[KeytrailServer, _Minutes]) -> None:
    """A key scheduled for deletion 7 days out, the node's clock stepped 8 days ahead (a VM restored
    with a wrong RTC, NTP given a bad source): the scheduler deleted the key at its next tick, for
    good, though its waiting period was not over. It is now held (PendingDeletion, to DescribeKey
    too) for the grace period, in one line saying so; setting the clock right releases the hold and
    leaves the key waiting for its own date."""
    server, minutes = stepped_node
    kms = _kms(server)
    key = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)
    minutes.at(8 * 1440)
    eventually_blocking(lambda: "WARNING keytrail: the wall clock stepped 192.0 h ahead (" in server.log.read_text(),
                        what="the line of the step ahead", timeout=30)
    assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    eventually_blocking(lambda: "fell due only by the wall clock's step" in server.log.read_text(),
                        what="the line of the held deletion", timeout=30)
    log = server.log.read_text()
    assert log.count("fell due only by the wall clock's step") == 1, log  # once, not at each tick
    assert key in log.split("fell due only by the wall clock's step")[1].splitlines()[0]
    minutes.at(0)  # the clock set right
    eventually_blocking(lambda: "the wall clock went back" in server.log.read_text(),
                        what="the line of the hold released", timeout=30)
    metadata = kms.describe_key(KeyId=key)["KeyMetadata"]
    assert metadata["KeyState"] == "PendingDeletion"
    assert "DeleteKey" not in server.log.read_text()


def test_a_node_holding_a_deletion_after_its_step_leaves_the_key_to_a_node_whose_clock_is_right(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes on one PostgreSQL key store, only A's clock stepped 8 days ahead: A holds the
    deletion, B (which saw no step) shows the key waiting for its own date and can cancel it."""
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    clock = SteppedWallClock(tmp_path)
    with scratch_database() as name:
        url = database_url(name)
        right = KeytrailServer(tmp_path / "b", "--store", url, dev_clock=False).start()
        stepped = KeytrailServer(tmp_path / "a", "--store", url, "--dev-credentials", "--scheduler-interval", "1",
                                 dev_clock=False)
        with clock.preloaded(monkeypatch):
            stepped.start()
        try:
            kms, steady = _kms(stepped), right.client()
            key = steady.create_key()["KeyMetadata"]["KeyId"]
            date = steady.schedule_key_deletion(KeyId=key, PendingWindowInDays=7)["DeletionDate"]
            clock.step_to(8 * 86400)
            eventually_blocking(lambda: "fell due only by the wall clock's step" in stepped.log.read_text(),
                                what="the line of the held deletion", timeout=30)
            assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "PendingDeletion"
            assert steady.describe_key(KeyId=key)["KeyMetadata"]["DeletionDate"] == date
            steady.cancel_key_deletion(KeyId=key)
            assert kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Disabled"
        finally:
            assert stepped.stop() == 0
            assert right.stop() == 0
