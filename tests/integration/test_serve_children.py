"""`keytrail serve` on the real clock runs the metrics consumer and the detector as supervised
child processes (keytrail/children.py, cli/sidecar.py), and with --kafka the audit shipper
(audit/shipping.py): what they produce is served by the parent, a killed child is restarted, and a
killed `serve` leaves no child behind."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from keytrail.children import ANALYTICS_NICENESS
from keytrail.cli.sidecar import consumer_lock, detector_lock
from keytrail.transport.segment_log import lock_held
from tests.integration.e2e.support import consume_sync, eventually
from tests.support.errors import aws_error
from tests.support.processes import autogroup_niceness, child_commands, sessions_are_scheduling_groups
from tests.support.server import KeytrailServer
from tests.support.services import kafka_broker, mosquitto

pytestmark = pytest.mark.integration


def _children(pid: int) -> dict[str, int]:
    """The sidecar children of process `pid`, by kind (consumer, detector)."""
    return {args[args.index(b"keytrail.cli.sidecar") + 1].decode(): child
            for child, args in child_commands(pid).items() if b"keytrail.cli.sidecar" in args}


def _fsync_helper(pid: int) -> int | None:
    """The audit spool's fsync helper among the children of process `pid` (audit/syncer.py)."""
    return next((child for child, args in child_commands(pid).items() if b"keytrail.audit.syncer" in args), None)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _niceness(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])  # field 19: nice


def _runs_below_serve(serve: int, child: int) -> bool:
    """`child` runs ANALYTICS_NICENESS below `serve`, in its process and, where sessions are
    scheduling groups, in its group too (the Kafka shipper has a session of its own)."""
    grouped = not sessions_are_scheduling_groups() or autogroup_niceness(child) == ANALYTICS_NICENESS
    return _niceness(child) == _niceness(serve) + ANALYTICS_NICENESS and grouped


def _runs_when_serve_idles(serve: int, child: int) -> bool:
    """`child` is in serve's session (its scheduling group) but not in its process group (Ctrl-C's),
    and each of its threads runs at SCHED_IDLE."""
    threads = [int(thread.name) for thread in Path(f"/proc/{child}/task").iterdir()]
    return (os.getsid(child) == os.getsid(serve) and os.getpgid(child) == child != os.getpgid(serve)
            and all(os.sched_getscheduler(thread) == os.SCHED_IDLE for thread in threads))


def _alarms_total(server: KeytrailServer, rule: str) -> float:
    _, body = server.get("/metrics")
    pattern = re.compile(rf'^keytrail_alarms_total\{{rule="{rule}",severity="\w+"\}} (\S+)$')
    return sum(float(m[1]) for m in map(pattern.match, body.decode().splitlines()) if m)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KeytrailServer]:
    running = KeytrailServer(tmp_path / "data", dev_clock=False).start()
    try:
        yield running
    finally:
        if running.proc is not None:
            running.stop()


def test_children_serve_last_usage_and_alarms(server: KeytrailServer) -> None:
    alice = server.client("alice")
    key = alice.create_key()["KeyMetadata"]["Arn"]
    blob = alice.encrypt(KeyId=key, Plaintext=b"x")["CiphertextBlob"]
    assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
    assert server.proc is not None
    children = _children(server.proc.pid)
    assert set(children) == {"consumer", "detector"}
    serve = server.proc.pid
    eventually(lambda: all(_runs_when_serve_idles(serve, pid) for pid in children.values()),
               what="both children to run at SCHED_IDLE in serve's session")
    for pid in children.values():  # polars on one thread each
        assert b"POLARS_MAX_THREADS=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")

    usage = eventually(lambda: alice.get_key_last_usage(KeyId=key).get("KeyLastUsage"),
                       what="GetKeyLastUsage from the consumer child's state")
    assert usage["Operation"] == "Encrypt"
    unused = alice.create_key()["KeyMetadata"]["Arn"]  # "an empty object" for a key never used (botocore's model)
    assert alice.get_key_last_usage(KeyId=unused)["KeyLastUsage"] == {}
    eventually(lambda: _alarms_total(server, "unauthorized-decrypt") >= 1, what="the detector child's alarm")
    alarms = (server.data_dir / "alarms.jsonl").read_text()
    assert '"rule":"unauthorized-decrypt"' in alarms.replace(" ", "") and ":user/bob" in alarms
    assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
    eventually(lambda: '"count":2' in (server.data_dir / "alarms.jsonl").read_text().replace(" ", ""),
               what="the alarm's count at the detector child's next tick")
    assert _alarms_total(server, "unauthorized-decrypt") == 1  # raised once; its update is no new alarm
    _, body = server.get("/metrics")
    assert 'keytrail_kms_requests_total{operation="Encrypt",outcome="success"} 1' in body.decode()
    caught_up = 'keytrail_pipeline_consumer_lag{partition="segment-log"} 0'
    eventually(lambda: caught_up in server.get("/metrics")[1].decode(), what="the child's lag to reach 0")
    eventually(lambda: _detector_lag(server) == 0, what="the detector child's lag to reach 0")
    os.kill(children["detector"], signal.SIGSTOP)  # a detector that stalls: its lag grows with each call
    try:
        for _ in range(3):
            alice.encrypt(KeyId=key, Plaintext=b"x")
        assert _detector_lag(server) == 3
    finally:
        os.kill(children["detector"], signal.SIGCONT)
    eventually(lambda: _detector_lag(server) == 0, what="the detector child to catch up")
    assert server.stop() == 0


def test_last_usage_of_a_key_made_after_tracking_began_is_tracked_from_its_creation(
        server: KeytrailServer) -> None:
    """TrackingStartDate is "the date from which KMS began recording cryptographic activity for this
    key, or the date the KMS key was created, whichever is later" (GetKeyLastUsage): a key made after
    the node's first call answered the node's tracking start, a time before the key existed."""
    alice = server.client("alice")
    first = alice.create_key()["KeyMetadata"]["Arn"]
    alice.encrypt(KeyId=first, Plaintext=b"x")
    eventually(lambda: alice.get_key_last_usage(KeyId=first).get("KeyLastUsage"), what="the first use tracked")
    time.sleep(1.1)  # the next key is made in a later second than tracking began (its first event's)
    later = alice.create_key()["KeyMetadata"]
    answer = alice.get_key_last_usage(KeyId=later["Arn"])
    assert answer["KeyLastUsage"] == {}
    assert answer["TrackingStartDate"] == answer["KeyCreationDate"] == later["CreationDate"]


def test_a_key_used_in_the_second_it_was_made_was_used_after_its_tracking_began(server: KeytrailServer) -> None:
    """A use is whole seconds (its record's eventTime), a creation is not: a key used in the second
    it was made answered a last use up to a second before its TrackingStartDate."""
    alice = server.client("alice")
    made = alice.create_key()["KeyMetadata"]
    alice.encrypt(KeyId=made["Arn"], Plaintext=b"x")
    used = eventually(lambda: alice.get_key_last_usage(KeyId=made["Arn"]).get("KeyLastUsage"), what="the use tracked")
    answer = alice.get_key_last_usage(KeyId=made["Arn"])
    assert answer["TrackingStartDate"] <= used["Timestamp"]
    assert answer["TrackingStartDate"] >= made["CreationDate"].replace(microsecond=0)


def test_last_usage_on_a_node_whose_consumer_counted_nothing_yet_names_a_tracking_start(
        server: KeytrailServer) -> None:
    """Every call is in the node's audit log from the key's creation on: with nothing counted yet
    (a new node's first seconds) GetKeyLastUsage still answers its TrackingStartDate, the key's
    creation, where it left the member out and `response["TrackingStartDate"]` failed."""
    assert server.proc is not None
    consumer = _children(server.proc.pid)["consumer"]
    os.kill(consumer, signal.SIGSTOP)  # counts nothing meanwhile
    try:
        alice = server.client("alice")
        made = alice.create_key()["KeyMetadata"]
        answer = alice.get_key_last_usage(KeyId=made["Arn"])
    finally:
        os.kill(consumer, signal.SIGCONT)
    assert answer["KeyLastUsage"] == {}
    assert answer["TrackingStartDate"] == answer["KeyCreationDate"] == made["CreationDate"]


def _detector_lag(server: KeytrailServer) -> float:
    [line] = [line for line in server.get("/metrics")[1].decode().splitlines()
              if line.startswith('keytrail_detector_lag{partition="segment-log"} ')]
    return float(line.rsplit(" ", 1)[1])


def test_a_second_consumer_is_refused_while_serves_child_counts(server: KeytrailServer) -> None:
    eventually(lambda: lock_held(consumer_lock(server.data_dir)), what="the consumer child to hold its lock")
    result = subprocess.run([sys.executable, "-m", "keytrail", "consume", "--data-dir", str(server.data_dir),
                             "--no-follow"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == (f"keytrail consume: the metrics consumer of {server.data_dir} is already running "
                             "(keytrail serve runs one): stop it first\n")


def test_a_killed_child_is_restarted(server: KeytrailServer) -> None:
    assert server.proc is not None
    serve = server.proc.pid
    first = eventually(lambda: _children(serve).get("detector"), what="the detector child")
    os.kill(first, signal.SIGKILL)
    eventually(lambda: _children(serve).get("detector", first) != first, what="a new detector child")
    assert server.get("/_keytrail/health")[0] == 200
    assert "detector child exited with status -9; restarting" in server.log.read_text()
    metrics = server.get("/metrics")[1].decode().splitlines()
    assert 'keytrail_child_restarts_total{child="consumer"} 0' in metrics
    assert 'keytrail_child_restarts_total{child="detector"} 1' in metrics


def _shipper(pid: int) -> int | None:
    """The audit shipper among the children of process `pid` (audit/shipping.py)."""
    return next((child for child, args in child_commands(pid).items() if b"keytrail.audit.shipping" in args), None)


def test_the_kafka_shipper_is_a_child_restarted_when_killed_and_nothing_is_lost(tmp_path: Path) -> None:
    with kafka_broker() as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap).start()
        try:
            assert server.proc is not None
            serve = server.proc.pid
            alice = server.client("alice")
            key = alice.create_key()["KeyMetadata"]["KeyId"]
            first = eventually(lambda: _shipper(serve), what="the shipper child")
            eventually(lambda: _runs_below_serve(serve, first), what="the shipper's lower priority")
            os.kill(first, signal.SIGKILL)
            for _ in range(5):  # answered while the shipper is down: their records wait in the log
                alice.encrypt(KeyId=key, Plaintext=b"x")
            eventually(lambda: _shipper(serve) not in (None, first), what="a new shipper")
            assert "audit shipper child exited with status -9; restarting" in server.log.read_text()
            restarted = 'keytrail_child_restarts_total{child="audit shipper"} 1'
            assert restarted in server.get("/metrics")[1].decode().splitlines()
        finally:
            assert server.stop() == 0
        messages = consume_sync(bootstrap, "keytrail.audit.v1", lambda got: len({value for _, value in got}) >= 6)
    # CreateKey and the five Encrypt calls (at least once: a batch the killed shipper had sent may come twice)
    assert len({value for _, value in messages}) == 6


def test_a_detector_restarted_after_a_crash_runs_on_the_settings_serve_read_not_a_file_broken_since(
        tmp_path: Path) -> None:
    config = tmp_path / "keytrail.toml"
    config.write_text('[rules.unauthorized-decrypt]\nseverity = "HIGH"\n')
    server = KeytrailServer(tmp_path / "data", "--config", str(config), dev_clock=False).start()
    try:
        assert server.proc is not None
        detector = eventually(lambda: _children(server.proc.pid).get("detector"), what="the detector child")
        config.write_text("[rules.no-such-rule]\n")  # an edit not reloaded (no SIGHUP), and broken
        os.kill(detector, signal.SIGKILL)
        eventually(lambda: _children(server.proc.pid).get("detector") not in (None, detector),
                   what="the detector child restarted")
        alice = server.client("alice")
        blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
        alarms = eventually(lambda: (path := server.data_dir / "alarms.jsonl").exists() and path.read_text(),
                            what="the restarted detector's alarm")
    finally:
        assert server.stop() == 0
    # HIGH from the settings serve read, one level up for a principal never seen on the key
    assert json.loads(alarms.splitlines()[0])["severity"] == "CRITICAL"
    log = server.log.read_text()
    assert "no-such-rule" not in log and "exited with status 1" not in log, log


def test_killing_serve_leaves_no_child_behind(server: KeytrailServer) -> None:
    assert server.proc is not None
    serve = server.proc.pid
    children = eventually(lambda: len(found := _children(serve)) == 2 and found, what="both children")
    helper = _fsync_helper(serve)
    assert helper is not None
    server.kill()
    eventually(lambda: not any(_alive(pid) for pid in [*children.values(), helper]), timeout=20,
               what="the orphaned children to exit")


def test_a_killed_fsync_helper_leaves_the_calls_audited(server: KeytrailServer) -> None:
    assert server.proc is not None
    helper = _fsync_helper(server.proc.pid)
    assert helper is not None
    alice = server.client("alice")
    key = alice.create_key()["KeyMetadata"]["KeyId"]
    os.kill(helper, signal.SIGKILL)
    request_ids = [alice.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"] for _ in range(5)]
    assert "the writer thread does the audit fsyncs until a new helper starts" in server.log.read_text()
    # Shown where the other children's restarts are: without it only the log told of a lost helper.
    metrics = server.get("/metrics")[1].decode().splitlines()
    assert 'keytrail_child_restarts_total{child="audit fsync helper"} 1' in metrics
    events = subprocess.run([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(server.data_dir),
                             "--format", "json"], capture_output=True, text=True, timeout=60, check=True)
    assert set(request_ids) <= {json.loads(line)["requestID"] for line in events.stdout.splitlines()}


def test_under_the_dev_clock_serve_holds_the_consumer_lock_itself(fresh_server: KeytrailServer) -> None:
    """Its consumer runs in-process: `keytrail consume` on its data dir is refused all the same."""
    assert lock_held(consumer_lock(fresh_server.data_dir))
    result = subprocess.run([sys.executable, "-m", "keytrail", "consume", "--data-dir", str(fresh_server.data_dir),
                             "--no-follow"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is already running" in result.stderr


def test_serve_with_the_dev_clock_is_refused_while_a_consumer_runs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    lock = consumer_lock(data)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `keytrail consume` holds it
        result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                                 "--dev-clock"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"keytrail serve: the metrics consumer of {data} is already running (keytrail consume): stop it first")


def test_serve_with_the_dev_clock_is_refused_while_another_detector_runs(tmp_path: Path) -> None:
    """Its detector runs in-process and took no lock: beside a `keytrail detect --kafka` on the data
    dir, both announced every alarm, and each emptied the hooks' outboxes of what the other owed."""
    data = tmp_path / "data"
    data.mkdir()
    with detector_lock(data).open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running `keytrail detect --kafka` holds it
        result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                                 "--dev-clock"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"keytrail serve: a detector is already running on {data} (keytrail detect --kafka, or another serve's): "
        "stop it first, or start serve with --no-detector")


def test_serve_refused_for_a_running_consumer_leaves_no_audit_signing_key(tmp_path: Path) -> None:
    # The audit trail was opened (its signing key made, its genesis digest signed) before the
    # consumer's lock refused the build, and stayed: a retry took that key for the trail's own and
    # never printed its fingerprint, nor did the failed start.
    data = tmp_path / "data"
    lock = consumer_lock(data)
    lock.parent.mkdir(parents=True)
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = subprocess.run([sys.executable, "-m", "keytrail", "serve", "--data-dir", str(data), "--port", "0",
                                 "--dev-clock"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert sorted(str(path.relative_to(data)) for path in data.rglob("*")) == [
        str(lock.parent.relative_to(data)), str(lock.relative_to(data))]


def _descendants(pid: int) -> dict[int, list[bytes]]:
    """Every process below `pid` (its children, theirs...) and its command line."""
    found = child_commands(pid)
    for child in list(found):
        found |= _descendants(child)
    return found


async def _denied_decrypt_alarm(server: KeytrailServer, subscriber: aiomqtt.Client) -> dict[str, object]:
    """Provoke an unauthorized-decrypt alarm on a new key and wait for it on MQTT."""
    alice = server.client("alice")
    key = (await asyncio.to_thread(alice.create_key))["KeyMetadata"]["Arn"]
    blob = (await asyncio.to_thread(alice.encrypt, KeyId=key, Plaintext=b"x"))["CiphertextBlob"]
    assert (await asyncio.to_thread(aws_error, server.client("bob").decrypt, CiphertextBlob=blob))[0] == \
        "AccessDeniedException"
    async with asyncio.timeout(30):
        async for message in subscriber.messages:
            alarm = json.loads(message.payload)  # type: ignore[arg-type]
            if alarm["keyArn"] == key:
                return alarm  # type: ignore[no-any-return]
    raise AssertionError("the subscription ended")


async def test_the_mqtt_password_reaches_the_detector_child_but_no_command_line(tmp_path: Path) -> None:
    """serve passed --mqtt to its detector child as an argument, so a password in the URL was in
    /proc/<pid>/cmdline, readable by every user of the machine, for as long as the node ran. The
    child now gets its hooks' addresses on its stdin pipe, at each (re)start, and serve warns
    that its own command line shows the password."""
    password = f"pw-{uuid.uuid4().hex}"
    port = int(mosquitto().rsplit(":", 1)[1])  # anonymous: the password is taken and ignored
    server = KeytrailServer(tmp_path / "data", "--mqtt", f"mqtt://keytrail:{password}@127.0.0.1:{port}",
                            dev_clock=False)
    async with aiomqtt.Client("127.0.0.1", port) as subscriber:
        await subscriber.subscribe("keytrail/alarms/#", qos=1)
        await asyncio.to_thread(server.start)
        try:
            assert server.proc is not None
            serve = server.proc.pid
            assert (await _denied_decrypt_alarm(server, subscriber))["rule"] == "unauthorized-decrypt"
            processes = _descendants(serve)
            assert {"consumer", "detector"} <= set(_children(serve))
            assert not [args for args in processes.values() if password.encode() in b" ".join(args)]
            # nor in their environment, which the user's other processes can read while they are dumpable
            assert not [pid for pid in processes if password.encode() in Path(f"/proc/{pid}/environ").read_bytes()]
            first = _children(serve)["detector"]
            os.kill(first, signal.SIGKILL)  # a restarted child is given the hooks again
            await asyncio.to_thread(eventually, lambda: _children(serve).get("detector", first) != first,
                                    what="a new detector child")
            assert (await _denied_decrypt_alarm(server, subscriber))["rule"] == "unauthorized-decrypt"
            assert not [args for args in _descendants(serve).values() if password.encode() in b" ".join(args)]
        finally:
            assert await asyncio.to_thread(server.stop) == 0
    log = server.log.read_text()
    assert "--mqtt names a password on the command line" in log and password not in log


@pytest.mark.parametrize("arguments", [(), ("--mqtt", "mqtt://keytrail:old-serve-pw@127.0.0.1:1883")])
def test_a_detector_child_started_by_an_older_serve_exits_in_one_line_instead_of_waiting(
    tmp_path: Path, arguments: tuple[str, ...]
) -> None:
    """A serve upgraded in place while it runs restarts its detector child from the new code, and
    an older serve never writes the hooks line on the child's stdin: the child waited for it for
    good (and one from before that gave the hooks as arguments). Started here as such a serve
    starts it, with a stdin pipe held open and never written."""
    child = subprocess.Popen([sys.executable, "-m", "keytrail.cli.sidecar", "detector", str(tmp_path), *arguments],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stderr is not None
    try:
        status = child.wait(60)  # its stdin open, as serve holds it (a line of stderr fits the pipe)
    finally:
        child.kill()
        child.stdin.close()
    [line] = child.stderr.read().decode().splitlines()
    child.stderr.close()
    assert status == 1
    assert "serve older than this keytrail" in line and "restart keytrail serve" in line
    assert ("--mqtt or --kafka" if arguments else "no line came on its stdin within 5 s") in line
    assert "old-serve-pw" not in line and not (tmp_path / "alarms.jsonl").exists()


def test_a_detector_child_whose_event_log_cannot_be_read_exits_in_one_line_instead_of_idling(tmp_path: Path) -> None:
    """The detector child's loop over the event log ended on an error reading it, and the child
    went on waiting for serve's stop: alive, judging nothing, saying nothing, never restarted."""
    from tests.support.audit_records import fill_trail

    fill_trail(tmp_path, 20)
    (tmp_path / "audit" / "log" / f"{99999:020d}.seg").mkdir()  # a folder where a segment would be
    child = subprocess.Popen([sys.executable, "-m", "keytrail.cli.sidecar", "detector", str(tmp_path)],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert child.stdin is not None and child.stderr is not None
    try:
        child.stdin.write(b'{"mqtt": null, "kafka": null}\n')
        child.stdin.flush()
        status = child.wait(60)  # its stdin open, as serve holds it
    finally:
        child.kill()
        child.stdin.close()
    lines = child.stderr.read().decode().splitlines()
    child.stderr.close()
    assert status == 1  # serve restarts it with its backoff, a line each time
    assert len(lines) == 1 and "detector child: " in lines[0] and "Is a directory" in lines[0], lines


def test_the_dev_clock_s_detector_says_an_event_log_it_cannot_read_and_reads_on_once_it_can(tmp_path: Path) -> None:
    """serve --dev-clock runs its detector in-process: its task ended on an error reading the
    event log in silence, and judged no call for the rest of the process."""
    from tests.support.audit_records import fill_trail

    data = tmp_path / "data"
    fill_trail(data, 30, segment_bytes=4000)
    first = sorted((data / "audit" / "log").glob("*.seg"))[0]
    records = first.read_bytes()
    first.unlink()
    first.mkdir()  # a folder where the oldest segment is
    server = KeytrailServer(data).start()
    try:
        said = eventually(lambda: [line for line in server.log.read_text().splitlines() if " detector: " in line],
                          what="the detector's line")
        assert f"ERROR keytrail: detector: Is a directory: {first}; reading the event log again in 0.5 s" in said[0]
        first.rmdir()
        first.write_bytes(records)  # put back: the detector reads on, judging all 30
        eventually(lambda: _detector_lag(server) == 0, what="the detector's lag to reach 0")
    finally:
        server.stop()


def _readers_held(server: KeytrailServer) -> dict[str, float]:
    held = re.findall(r'^keytrail_event_log_reader_held\{reader="([^"]+)"\} (\S+)$', server.get("/metrics")[1].decode(),
                      flags=re.M)
    return {reader: float(value) for reader, value in held}


@pytest.mark.parametrize("dev_clock", [False, True], ids=["children", "in-process"])
def test_readers_held_at_a_damaged_record_show_it_in_metrics_until_the_segment_is_restored(
    tmp_path: Path, dev_clock: bool
) -> None:
    """The consumer's and the detector's one line each was all that said it: on a quiet node their
    lag never reached the lag alerts' 10,000 records, and nothing an alert reads showed them held."""
    from tests.support.audit_records import fill_trail

    data = tmp_path / "data"
    fill_trail(data, 30, segment_bytes=4000)
    middle = sorted((data / "audit" / "log").glob("*.seg"))[1]
    intact = middle.read_bytes()
    middle.write_bytes(intact[:20] + bytes([intact[20] ^ 1]) + intact[21:])  # a bit of its first record flipped
    server = KeytrailServer(data, dev_clock=dev_clock).start()
    try:
        eventually(lambda: _readers_held(server) == {"consumer": 1, "detector": 1}, what="both children held")
        middle.write_bytes(intact)  # the operator restores the segment: both read on
        eventually(lambda: _readers_held(server) == {"consumer": 0, "detector": 0}, what="both children reading on")
    finally:
        server.stop()
    assert f"the consumer reads the event log in {data / 'audit' / 'log'} again" in server.log.read_text()


class _Terminal:
    """`keytrail serve` as a terminal's foreground job (a pseudo-terminal set to `stty tostop`, so
    that a background process writing to it is stopped), its output gathered as it comes."""

    def __init__(self, server: KeytrailServer) -> None:
        args = server.command()
        self.pid, self._fd = pty.fork()
        if self.pid == 0:  # the child: a shell that sets the terminal, then becomes serve
            os.execv("/bin/sh", ["sh", "-c", 'stty tostop && exec "$@"', "sh", *args])
        self.output = bytearray()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):  # EIO once serve and its children have closed the terminal
            while chunk := os.read(self._fd, 65536):
                self.output += chunk

    def ctrl_c(self) -> None:
        os.write(self._fd, b"\x03")

    def exit_code(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while (ended := os.waitpid(self.pid, os.WNOHANG))[0] == 0:
            assert time.monotonic() < deadline, "serve did not exit after Ctrl-C"
            time.sleep(0.1)
        self._reader.join(5)
        os.close(self._fd)
        return os.waitstatus_to_exitcode(ended[1])


def test_ctrl_c_in_a_terminal_stops_serve_and_its_children_in_order(tmp_path: Path) -> None:
    # The consumer and detector are in serve's session but not in its process group: a child that
    # writes to the terminal (the detector's warnings of a hook out of reach) is not stopped by
    # `stty tostop`, and Ctrl-C reaches serve alone, which stops them in order, tracebacks none.
    server = KeytrailServer(tmp_path / "data", "--mqtt", "mqtt://127.0.0.1:1", dev_clock=False)
    terminal = _Terminal(server)
    try:
        eventually(server.answers_health, timeout=90, what="serve in the terminal to start")
        children = eventually(lambda: len(found := _children(terminal.pid)) == 2 and found,
                              what="the consumer and detector children")
        alice = server.client("alice")
        blob = alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")["CiphertextBlob"]
        assert aws_error(server.client("bob").decrypt, CiphertextBlob=blob)[0] == "AccessDeniedException"
        eventually(lambda: b"MQTT: alarm" in terminal.output, what="the detector's warning on the terminal")
        assert all(os.getpgid(child) != os.getpgid(terminal.pid) for child in children.values())  # Ctrl-C's group
        terminal.ctrl_c()
        assert terminal.exit_code() == 0
    finally:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            os.kill(terminal.pid, signal.SIGKILL)
            os.waitpid(terminal.pid, 0)
    text = terminal.output.decode(errors="replace")
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert not any(_alive(pid) for pid in children.values())
