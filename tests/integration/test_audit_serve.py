"""The audit trail through a real `keytrail serve` (runs once AuditTrail is wired into serve).

boto3 calls by each identity type arrive one record per call, matched on requestID = the
response's x-amzn-RequestId; nothing secret is logged; kill -9 under concurrent load loses no
answered call's record; `audit verify` is clean afterwards.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import BotoCoreError, ClientError

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import load_digests, verify
from keytrail.audit.trail import audit_paths
from keytrail.transport.segment_log import event_log_dir
from tests.support import server as server_support
from tests.support.audit_records import cut_back_to, fill_trail, sign_again_with_a_new_key
from tests.support.waits import eventually_blocking

pytestmark = pytest.mark.integration

ACCOUNT, KeytrailServer = server_support.ACCOUNT, server_support.KeytrailServer
SECRET = b"do-not-log-this-plaintext"


def _events(data_dir: Path) -> dict[str, dict[str, Any]]:
    return {e["requestID"]: e for _, e in iter_events(data_dir) if e.get("requestID")}


def _require_wiring(data_dir: Path) -> None:
    assert event_log_dir(data_dir).exists(), "keytrail serve must write the audit event log"


def test_scripted_session_is_recorded_one_to_one(tmp_path: Path) -> None:
    server = KeytrailServer(tmp_path / "data").start()
    answers: dict[str, tuple[str, str | None]] = {}  # requestID -> (operation, error code)
    try:
        alice, app, root = server.client("alice"), server.client("app"), server.client("root")
        created = alice.create_key(Description="audit")
        _require_wiring(tmp_path / "data")
        key = created["KeyMetadata"]["KeyId"]
        answers[created["ResponseMetadata"]["RequestId"]] = ("CreateKey", None)
        for client in (alice, app):
            reply = client.encrypt(KeyId=key, Plaintext=SECRET, EncryptionContext={"team": "audit"})
            answers[reply["ResponseMetadata"]["RequestId"]] = ("Encrypt", None)
        listed = root.list_keys()
        answers[listed["ResponseMetadata"]["RequestId"]] = ("ListKeys", None)
        with pytest.raises(ClientError) as denied:
            server.client("bob").decrypt(CiphertextBlob=reply["CiphertextBlob"])
        error = denied.value.response
        answers[error["ResponseMetadata"]["RequestId"]] = ("Decrypt", error["Error"]["Code"])
    finally:
        assert server.stop() == 0
    events = _events(tmp_path / "data")
    assert set(events) == set(answers)
    for request_id, (operation, code) in answers.items():
        event = events[request_id]
        assert event["eventName"] == operation and event["eventVersion"] == "1.11"
        assert event.get("errorCode") == {"AccessDeniedException": "AccessDenied"}.get(code, code)
    by_type = {e["userIdentity"]["type"]: e for e in events.values()}
    assert by_type["AssumedRole"]["userIdentity"]["sessionContext"]["sessionIssuer"]["arn"] == \
        f"arn:aws:iam::{ACCOUNT}:role/app"
    assert set(by_type) == {"IAMUser", "AssumedRole", "Root"}
    text = json.dumps(list(events.values()))
    assert base64.b64encode(SECRET).decode() not in text and SECRET.decode() not in text
    assert verify(tmp_path / "data") == []


def test_kill_9_under_load_keeps_every_answered_call(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    key = server.client("alice").create_key()["KeyMetadata"]["KeyId"]
    _require_wiring(data)
    answered: list[str] = []
    refused: list[str] = []  # an answer that is an error: the load met a fault, not the kill
    stop = threading.Event()

    def caller() -> None:
        client = server.client("alice")
        while not stop.is_set():
            try:
                reply = client.encrypt(KeyId=key, Plaintext=b"x")
            except BotoCoreError:  # the server died under us: that call got no answer
                return
            except ClientError as error:
                refused.append(str(error))
                return
            answered.append(reply["ResponseMetadata"]["RequestId"])

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for thread in threads:
        thread.start()
    eventually_blocking(lambda: len(answered) >= 300, timeout=120, what="300 answered Encrypt calls")
    server.kill()
    stop.set()
    for thread in threads:
        thread.join()
    assert refused == []
    restarted = KeytrailServer(data).start()  # recovery: torn tail cut, hash sidecar rebuilt
    assert restarted.stop() == 0
    assert set(answered) <= set(_events(data))
    result = subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


async def _consume_all(bootstrap: str, want: int) -> list[tuple[bytes | None, bytes]]:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer("keytrail.audit.v1", bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    messages: list[tuple[bytes | None, bytes]] = []
    try:
        async with asyncio.timeout(60):
            while len(messages) < want:
                batches = await consumer.getmany(timeout_ms=500)
                messages += [(m.key, m.value) for ms in batches.values() for m in ms]
    finally:
        await consumer.stop()
    return messages


def test_scripted_session_reaches_kafka_one_to_one(tmp_path: Path) -> None:
    import asyncio

    from keytrail.audit.schema import SCHEMA_PATH, EventCodec, load_schema
    from tests.support.services import kafka_broker

    with kafka_broker() as bootstrap:
        server = KeytrailServer(tmp_path / "data", "--kafka", bootstrap).start()
        answers = {}
        try:
            kms = server.client("alice")
            created = kms.create_key()
            _require_wiring(tmp_path / "data")
            key_arn = created["KeyMetadata"]["Arn"]
            answers[created["ResponseMetadata"]["RequestId"]] = key_arn
            for _ in range(20):
                reply = kms.encrypt(KeyId=key_arn, Plaintext=SECRET)
                answers[reply["ResponseMetadata"]["RequestId"]] = key_arn
            answers[kms.list_keys()["ResponseMetadata"]["RequestId"]] = ACCOUNT
        finally:
            assert server.stop() == 0  # SIGTERM: the spool is flushed and shipped
        messages = asyncio.run(_consume_all(bootstrap, len(answers)))
    codec = EventCodec(reader_schema=load_schema(SCHEMA_PATH))
    shipped = {codec.decode(value)["requestID"]: key for key, value in messages}
    assert len(messages) == len(answers)
    assert shipped == {request_id: key.encode() for request_id, key in answers.items()}
    assert not any(SECRET in value for _, value in messages)


def test_write_calls_log_the_affected_key_arn_in_response_elements(tmp_path: Path) -> None:
    # ct-enablekey, ct-disablekey, ct-createalias, ct-updatealias, ct-deletealias,
    # ct-untagresource, ct-enablekeyrotation: entries since December 2022 carry the affected key's
    # ARN in responseElements.keyId; TagResource and DisableKeyRotation entries still show null.
    server = KeytrailServer(tmp_path / "data").start()
    calls: dict[str, str] = {}  # requestID -> the key ARN expected, "" for null
    try:
        kms = server.client("alice")
        first, second = (kms.create_key()["KeyMetadata"] for _ in range(2))
        steps = [
            (first, lambda: kms.create_alias(AliasName="alias/audit", TargetKeyId=first["KeyId"])),
            (second, lambda: kms.update_alias(AliasName="alias/audit", TargetKeyId=second["KeyId"])),
            (second, lambda: kms.delete_alias(AliasName="alias/audit")),
            (first, lambda: kms.disable_key(KeyId=first["KeyId"])),
            (first, lambda: kms.enable_key(KeyId=first["KeyId"])),
            (None, lambda: kms.tag_resource(KeyId=first["KeyId"], Tags=[{"TagKey": "a", "TagValue": "b"}])),
            (first, lambda: kms.untag_resource(KeyId=first["KeyId"], TagKeys=["a"])),
            (first, lambda: kms.enable_key_rotation(KeyId=first["KeyId"])),
            (None, lambda: kms.disable_key_rotation(KeyId=first["KeyId"])),
        ]
        for meta, step in steps:
            calls[step()["ResponseMetadata"]["RequestId"]] = meta["Arn"] if meta else ""
    finally:
        assert server.stop() == 0
    events = _events(tmp_path / "data")
    logged = {events[r]["eventName"]: events[r]["responseElements"] for r in calls}
    expected = {events[r]["eventName"]: {"keyId": arn} if arn else None for r, arn in calls.items()}
    assert logged == expected and len(logged) == len(steps)


def test_signing_mac_and_key_pair_calls_log_what_cloudtrail_shows(tmp_path: Path) -> None:
    # ct-sign, ct-verify, ct-generatemac, ct-verifymac, ct-generatedatakeypair: requestParameters
    # hold keyId as given, the algorithm (messageType, keyPairSpec, encryptionContext), and
    # responseElements is null: never the message, signature, MAC or either key of the pair.
    server = KeytrailServer(tmp_path / "data").start()
    calls: dict[str, dict[str, Any]] = {}  # requestID -> the requestParameters expected
    secrets: list[bytes] = [SECRET]
    try:
        kms = server.client("alice")
        signer = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        mac_key = kms.create_key(KeySpec="HMAC_384", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["Arn"]
        wrapping = kms.create_key()["KeyMetadata"]["KeyId"]
        signing = {"messageType": "RAW", "keyId": signer, "signingAlgorithm": "ECDSA_SHA_256"}
        signed = kms.sign(KeyId=signer, Message=SECRET, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
        calls[signed["ResponseMetadata"]["RequestId"]] = signing
        verified = kms.verify(KeyId=signer, Message=SECRET, MessageType="RAW", Signature=signed["Signature"],
                              SigningAlgorithm="ECDSA_SHA_256")
        calls[verified["ResponseMetadata"]["RequestId"]] = signing
        mac = kms.generate_mac(KeyId=mac_key, Message=SECRET, MacAlgorithm="HMAC_SHA_384")
        calls[mac["ResponseMetadata"]["RequestId"]] = {"macAlgorithm": "HMAC_SHA_384", "keyId": mac_key}
        checked = kms.verify_mac(KeyId=mac_key, Message=SECRET, Mac=mac["Mac"], MacAlgorithm="HMAC_SHA_384")
        calls[checked["ResponseMetadata"]["RequestId"]] = {"macAlgorithm": "HMAC_SHA_384", "keyId": mac_key}
        pair = kms.generate_data_key_pair(KeyId=wrapping, KeyPairSpec="ECC_NIST_P384",
                                          EncryptionContext={"Project": "Alpha"})
        calls[pair["ResponseMetadata"]["RequestId"]] = {
            "keyPairSpec": "ECC_NIST_P384", "encryptionContext": {"Project": "Alpha"}, "keyId": wrapping}
        bare = kms.generate_data_key_pair_without_plaintext(KeyId=wrapping, KeyPairSpec="ECC_NIST_P256")
        calls[bare["ResponseMetadata"]["RequestId"]] = {"keyPairSpec": "ECC_NIST_P256", "keyId": wrapping}
        secrets += [signed["Signature"], mac["Mac"], pair["PrivateKeyPlaintext"], pair["PrivateKeyCiphertextBlob"],
                    pair["PublicKey"], bare["PrivateKeyCiphertextBlob"]]
    finally:
        assert server.stop() == 0
    events = _events(tmp_path / "data")
    assert {r: events[r]["requestParameters"] for r in calls} == calls
    assert all(events[r]["responseElements"] is None for r in calls)
    text = json.dumps([events[r] for r in calls])
    assert not [s for s in secrets if base64.b64encode(s).decode() in text or s.hex() in text]


def test_grant_alias_reencrypt_and_new_key_calls_log_what_cloudtrail_shows(tmp_path: Path) -> None:
    # ct-reencrypt: both contexts as the caller sent them, both algorithms. ct-creategrant: responseElements.keyId is
    # the key ARN. ct-retire-grant: by token alone, requestParameters null and the grant in
    # additionalEventData. ct-createalias / ct-updatealias / ct-deletealias: the alias ARN among the
    # resources. ct-createkey, ct-replicate-key, ct-schedule-key-deletion: camelCase at every level,
    # dates as "Aug 10, 2022, 10:38:27 PM".
    server = KeytrailServer(tmp_path / "data").start()
    ids: dict[str, str] = {}
    try:
        kms = server.client("alice")
        first, second = (kms.create_key()["KeyMetadata"] for _ in range(2))
        multi = kms.create_key(MultiRegion=True)
        ids["CreateKey"] = multi["ResponseMetadata"]["RequestId"]
        blob = kms.encrypt(KeyId=first["KeyId"], Plaintext=SECRET, EncryptionContext={"Project": "Alpha"})
        ids["ReEncrypt"] = kms.re_encrypt(
            CiphertextBlob=blob["CiphertextBlob"], SourceEncryptionContext={"Project": "Alpha"},
            DestinationKeyId=second["KeyId"], DestinationEncryptionContext={"Level": "3A"},
        )["ResponseMetadata"]["RequestId"]
        grant = kms.create_grant(KeyId=first["KeyId"], GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:role/app",
                                 Operations=["Decrypt"])
        ids["CreateGrant"] = grant["ResponseMetadata"]["RequestId"]
        ids["RetireGrant"] = kms.retire_grant(GrantToken=grant["GrantToken"])["ResponseMetadata"]["RequestId"]
        ids["CreateAlias"] = kms.create_alias(AliasName="alias/ct", TargetKeyId=first["KeyId"])[
            "ResponseMetadata"]["RequestId"]
        ids["UpdateAlias"] = kms.update_alias(AliasName="alias/ct", TargetKeyId=second["KeyId"])[
            "ResponseMetadata"]["RequestId"]
        ids["DeleteAlias"] = kms.delete_alias(AliasName="alias/ct")["ResponseMetadata"]["RequestId"]
        ids["ScheduleKeyDeletion"] = kms.schedule_key_deletion(KeyId=second["KeyId"], PendingWindowInDays=7)[
            "ResponseMetadata"]["RequestId"]
    finally:
        assert server.stop() == 0
    events = {name: _events(tmp_path / "data")[request] for name, request in ids.items()}
    reencrypt = events["ReEncrypt"]["requestParameters"]
    assert (reencrypt["sourceEncryptionContext"], reencrypt["destinationEncryptionContext"]) == (
        {"Project": "Alpha"}, {"Level": "3A"})
    # Not named by the caller, logged all the same (ct-reencrypt), as Decrypt's encryptionAlgorithm.
    assert (reencrypt["sourceEncryptionAlgorithm"], reencrypt["destinationEncryptionAlgorithm"]) == (
        "SYMMETRIC_DEFAULT", "SYMMETRIC_DEFAULT")
    assert events["CreateGrant"]["responseElements"] == {"grantId": grant["GrantId"], "keyId": first["Arn"]}
    retired = events["RetireGrant"]
    assert (retired["requestParameters"], retired["additionalEventData"]) == (None, {"grantId": grant["GrantId"]})
    alias_arn = first["Arn"].replace(f"key/{first['KeyId']}", "alias/ct")
    assert {name: [r["ARN"] for r in events[name]["resources"]] for name in ("CreateAlias", "UpdateAlias",
                                                                              "DeleteAlias")} == {
        "CreateAlias": [first["Arn"], alias_arn],
        "UpdateAlias": [alias_arn, first["Arn"], second["Arn"]],
        "DeleteAlias": [alias_arn, second["Arn"]],
    }
    created = events["CreateKey"]["responseElements"]["keyMetadata"]
    assert created["multiRegionConfiguration"] == {
        "multiRegionKeyType": "PRIMARY", "replicaKeys": [],
        "primaryKey": {"arn": multi["KeyMetadata"]["Arn"], "region": "us-east-1"},
    }
    date = r"[A-Z][a-z]{2} \d{1,2}, \d{4}, \d{1,2}:\d{2}:\d{2} [AP]M"
    assert re.fullmatch(date, created["creationDate"])
    assert re.fullmatch(date, events["ScheduleKeyDeletion"]["responseElements"]["deletionDate"])


def _verify_cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", "audit", "verify", "--data-dir", str(data_dir), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_serve_prints_the_public_key_fingerprint_a_replaced_signing_key_is_caught_against(tmp_path: Path) -> None:
    from keytrail.audit.integrity import exported_fingerprint
    from keytrail.audit.trail import audit_paths

    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    try:
        alice = server.client("alice")
        alice.encrypt(KeyId=alice.create_key()["KeyMetadata"]["KeyId"], Plaintext=b"x")
    finally:
        assert server.stop() == 0
    integrity = audit_paths(data)[1]
    assert f"has the SHA-256 fingerprint {exported_fingerprint(integrity)}" in server.log.read_text()
    kept = tmp_path / "kept.pub.pem"  # the copy kept off the node
    kept.write_bytes(integrity.public_key.read_bytes())
    assert _verify_cli(data, "--public-key", str(kept)).returncode == 0
    sign_again_with_a_new_key(data)  # whoever can write the data dir: a key of their own, every digest signed again
    assert _verify_cli(data).returncode == 0  # the data dir alone cannot tell
    replaced = _verify_cli(data, "--public-key", str(kept))
    assert replaced.returncode == 1 and "the signing key was replaced" in replaced.stdout, replaced.stdout


def _session(server: KeytrailServer) -> None:
    """A few boto3 calls through a node started for them, stopped after (its final digest)."""
    server.start()
    try:
        alice = server.client("alice")
        key = alice.create_key()["KeyMetadata"]["KeyId"]
        for _ in range(3):
            alice.encrypt(KeyId=key, Plaintext=b"x")
    finally:
        assert server.stop() == 0


def test_a_trail_cut_back_to_an_older_state_shows_only_against_the_digests_kept_off_the_node(tmp_path: Path) -> None:
    import shutil

    from keytrail.audit.trail import audit_paths

    data, kept = tmp_path / "data", tmp_path / "kept-digests"
    server = KeytrailServer(data)
    _session(server)
    digests = audit_paths(data)[1].digests
    signed = len(list(digests.glob("*.json")))
    first_session_end = json.loads(sorted(digests.glob("*.json"))[-1].read_text())["endOffset"]
    _session(server)
    shutil.copytree(digests, kept)  # as the operator ships each digest off the node
    assert _verify_cli(data, "--digests", str(kept)).returncode == 0
    # The second session's calls gone, with their hashes and the digest that signed them.
    cut_back_to(data, records=first_session_end, digests=signed)
    alone = _verify_cli(data)
    assert alone.returncode == 0, alone.stdout  # consistent in itself: the node cannot tell
    assert f"signs the records before offset {first_session_end}" in alone.stdout
    against = _verify_cli(data, "--digests", str(kept))
    assert against.returncode == 1 and "kept off the node, is gone from" in against.stdout, against.stdout



def test_a_record_added_while_the_node_was_stopped_is_named_and_serve_will_not_sign_it(tmp_path: Path) -> None:
    import hashlib

    from keytrail.audit.schema import decode, encode
    from keytrail.audit.trail import audit_paths
    from tests.support.audit_records import rewrite_segment

    data = tmp_path / "data"
    server = KeytrailServer(data)
    _session(server)  # stopped cleanly: its final digest signs every record it wrote
    forged: list[bytes] = []

    def forge(records: list[bytes]) -> list[bytes]:
        event = decode(records[-1])
        event["eventID"], event["sourceIPAddress"] = "forged-while-stopped", "203.0.113.66"
        forged.append(encode(event))
        return [*records, *forged]

    rewrite_segment(data, forge)
    with audit_paths(data)[1].hashes.open("ab") as hashes:
        hashes.write(hashlib.sha256(forged[0]).digest())
    result = _verify_cli(data)
    assert result.returncode == 1 and "inserted after the final digest" in result.stdout, result.stdout
    with pytest.raises(RuntimeError, match="after the final digest keytrail signed when it last stopped cleanly"):
        server.start()


def test_bytes_appended_while_the_node_was_stopped_are_named_and_not_called_a_crashs_torn_write(
        tmp_path: Path) -> None:
    """They passed `audit verify` (exit 0, with the copies kept off the node too) and `serve` called
    them a crash's torn write, though the final digest shows the node had stopped cleanly."""
    import shutil

    from keytrail.audit.trail import audit_paths

    data = tmp_path / "data"
    server = KeytrailServer(data)
    _session(server)  # stopped cleanly
    log_dir, integrity = audit_paths(data)
    kept = tmp_path / "kept"
    shutil.copytree(integrity.digests, kept)
    [segment] = log_dir.glob("*.seg")
    with segment.open("ab") as appended:
        appended.write(b"EVIL-INJECTED-BYTES-after-clean-stop")
    for verified in (_verify_cli(data), _verify_cli(data, "--digests", str(kept), "--public-key",
                                                    str(integrity.public_key))):
        assert verified.returncode == 1, verified.stdout
        assert "the 36 bytes from record offset" in verified.stdout and ("signed when keytrail last stopped cleanly: "
                                                                         "written in while no node ran, not a write "
                                                                         "torn by a crash") in verified.stdout
    said_before = len(server.log.read_text())
    server.start()  # the bytes hold no record: cut and kept aside, and the node serves
    assert server.stop() == 0
    said = server.log.read_text()[said_before:]
    assert "the 36 bytes after record offset" in said and "were a write torn by a crash" not in said, said
    assert "written in while no node ran, not a write torn by a crash; cut, and kept in " in said, said
    [cut] = log_dir.glob("*.cut-at-*")
    assert cut.read_bytes() == b"EVIL-INJECTED-BYTES-after-clean-stop"


def _killed_after_twenty_calls(data: Path) -> tuple[KeytrailServer, list[str], Path]:
    """A node on `data` that answered a CreateKey and 20 Encrypt calls, then was killed (a crash):
    it, the Encrypt calls' request ids, and its segment."""
    server = KeytrailServer(data).start()
    alice = server.client("alice")
    key = alice.create_key()["KeyMetadata"]["KeyId"]
    answered = [alice.encrypt(KeyId=key, Plaintext=b"x")["ResponseMetadata"]["RequestId"] for _ in range(20)]
    server.kill()
    [segment] = event_log_dir(data).glob("*.seg")
    return server, answered, segment


def _frame_of(segment: bytes, record: int) -> int:
    """Where the frame of `record` (its offset in the segment) begins: past records 0..record - 1."""
    position = 0
    for _ in range(record):
        position += 8 + int.from_bytes(segment[position:position + 4], "little")
    return position


def test_records_a_start_cut_with_a_damaged_record_before_them_are_named_by_verify(tmp_path: Path) -> None:
    """A record damaged mid-segment after a crash: the next start cuts the log there, and the whole
    records after it, answered calls, leave the log (kept beside it in a `.cut-at-` file). No digest
    signed them yet, so `audit verify` said "no record missing" (exit 0) though they were gone from
    every reader. It names them, the file that holds them and how many."""
    data = tmp_path / "data"
    server, answered, segment = _killed_after_twenty_calls(data)
    damaged = bytearray(segment.read_bytes())
    position = _frame_of(damaged, 10)  # past CreateKey and 9 Encrypt calls
    damaged[position + 20] ^= 0xFF  # its payload no longer matches its checksum
    segment.write_bytes(bytes(damaged))
    server.start()  # cuts the log at record 10, the 10 whole records after it with it
    assert server.stop() == 0
    assert set(answered[9:]).isdisjoint(_events(data))  # records 10..20 are out of the log
    [kept] = event_log_dir(data).glob("*.cut-at-*")
    verified = _verify_cli(data)
    assert verified.returncode == 1, verified.stdout
    assert (f"{kept.name}: the record at offset 10 of {segment.name} was damaged, and keytrail serve cut the log "
            f"there when it opened it: the {len(damaged) - position} bytes from it on, 10 whole records among them "
            "(answered calls), are out of the log, kept in this file") in verified.stdout, verified.stdout


@pytest.mark.parametrize(("record", "flipped", "whole"), [
    (10, 1 << 16, "11 whole records"),  # a length past the segment's end: record 10, whole, and 10 after it
    (10, 1 << 30, "11 whole records"),  # a length no record has (over 64 MiB)
    (20, 1 << 16, "1 whole record"),  # the last record: its payload whole up to the segment's end
], ids=["a length past the end", "an impossible length", "the last record's length"])
def test_a_record_whose_length_a_flipped_bit_makes_claim_the_rest_is_no_torn_write(
        tmp_path: Path, record: int, flipped: int, whole: str) -> None:
    """A bit flipped in a frame's length after a crash, so that it claims every byte to the end (or
    more): the bytes looked like one unfinished write, so the start cut the answered records there
    with a warning that a crash tore a write, and verify said nothing of them. The whole records
    behind the length (or the frame's own payload, whole) tell damage from a torn write: cut as
    damage, said in an error, and named by verify."""
    data = tmp_path / "data"
    server, answered, segment = _killed_after_twenty_calls(data)
    damaged = bytearray(segment.read_bytes())
    position = _frame_of(damaged, record)
    length = int.from_bytes(damaged[position:position + 4], "little") ^ flipped
    damaged[position:position + 4] = length.to_bytes(4, "little")
    assert position + 8 + length > len(damaged)  # it claims the rest of the segment, and more
    segment.write_bytes(bytes(damaged))
    said_before = len(server.log.read_text())
    server.start()
    assert server.stop() == 0
    said = server.log.read_text()[said_before:]
    assert f"the record at offset {record} is damaged, and whole records follow the damage: cut" in said, said
    assert "a write torn by a crash" not in said, said
    assert set(answered[record - 1:]).isdisjoint(_events(data))  # out of the log, kept aside
    [kept] = event_log_dir(data).glob("*.cut-at-*")
    verified = _verify_cli(data)
    assert verified.returncode == 1, verified.stdout
    assert (f"{kept.name}: the record at offset {record} of {segment.name} was damaged, and keytrail serve cut the "
            f"log there when it opened it: the {len(damaged) - position} bytes from it on, {whole} among them "
            "(answered calls), are out of the log, kept in this file") in verified.stdout, verified.stdout


@pytest.mark.parametrize("damaged", ["a middle record", "the last record"])
def test_a_start_over_a_damaged_record_the_digests_sign_is_refused_before_it_cuts_anything(
        tmp_path: Path, damaged: str) -> None:
    """A record damaged while the node was stopped (its final digest signs every record): the start
    cut the log at it, the signed records after it with it, and then refused, "signed records are
    gone", the log no longer as it was for a restore or for `verify` to name the damage. Refused
    first, it cuts nothing."""
    data = tmp_path / "data"
    _session(server := KeytrailServer(data))  # CreateKey and 3 Encrypt calls, stopped cleanly
    [segment] = event_log_dir(data).glob("*.seg")
    damaged_bytes = bytearray(segment.read_bytes())
    record, position = (1 if damaged == "a middle record" else 3), 0
    for _ in range(record):
        position += 8 + int.from_bytes(damaged_bytes[position:position + 4], "little")
    damaged_bytes[position + 20] ^= 0xFF  # its payload no longer matches its checksum
    segment.write_bytes(bytes(damaged_bytes))
    with pytest.raises(RuntimeError, match="keytrail serve exited"):
        server.start()
    said = server.log.read_text().splitlines()[-1]
    assert said == (f"keytrail serve: the audit log {segment.parent} is damaged at record offset {record} "
                    f"({segment.name}), and the newest digest signs records up to offset 3: nothing was cut "
                    f"(`keytrail audit verify` names the damage); restore {segment.parent} from a backup, or move "
                    f"{segment.parent.parent} aside to start a new trail"), said
    assert segment.read_bytes() == damaged_bytes and list(segment.parent.glob("*.cut-at-*")) == []
    assert f"record at offset {record}: checksum mismatch (altered)" in _verify_cli(data).stdout


def test_an_idle_node_signs_a_digest_each_digest_interval(tmp_path: Path) -> None:
    """`--digest-interval` sets how often an idle node signs (the default is CloudTrail's hour)."""
    server = KeytrailServer(tmp_path / "data", "--digest-interval", "1", dev_clock=False).start()
    try:
        time.sleep(3.5)  # no call at all
    finally:
        assert server.stop() == 0
    digests = [digest for _, digest in load_digests(audit_paths(tmp_path / "data")[1])]
    idle = digests[1:-1]  # between the genesis digest and the final one
    assert len(idle) >= 2, digests
    assert all((d["startOffset"], d["endOffset"], d["intervalSeconds"]) == (0, 0, 1) for d in digests)
    assert verify(tmp_path / "data") == []


def test_serve_deletes_closed_segments_past_its_retention_age(tmp_path: Path) -> None:
    """`--retention-hours` reaches the audit trail: an idle node's digest timer deletes the closed
    segments older than that, and what is left still verifies."""
    data = tmp_path / "data"
    fill_trail(data, 30, segment_bytes=2000)  # several closed segments, made by an earlier run
    closed = sorted(event_log_dir(data).glob("*.seg"))[:-1]
    assert len(closed) >= 2
    for segment in closed:  # two days old
        os.utime(segment, (time.time() - 172800, time.time() - 172800))
    server = KeytrailServer(data, "--retention-hours", "24", "--digest-interval", "1", dev_clock=False).start()
    try:
        eventually_blocking(lambda: not any(segment.exists() for segment in closed), what="old segments deleted")
    finally:
        assert server.stop() == 0
    assert verify(data) == []
    assert _verify_cli(data).returncode == 0


def _keytrail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keytrail", *args], capture_output=True, text=True, timeout=120)


def test_a_cross_account_call_is_logged_for_the_caller_and_exported_to_the_key_owner_too(tmp_path: Path) -> None:
    """AWS logs a call on another account's key in both accounts, linked by sharedEventID, and a
    denied one in the caller's only: the event log keeps one event per call (the caller's copy),
    the export adds the owner's, and an import of the export stores each call once."""
    data, other = tmp_path / "data", server_support.OTHER_ACCOUNT
    server = KeytrailServer(data).start()
    try:
        alice, carol = server.client("alice"), server.client("carol")
        statements = [{"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*",
                       "Resource": "*"},
                      {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{other}:root"}, "Action": "kms:Encrypt",
                       "Resource": "*"}]
        key = alice.create_key(Policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))
        shared = carol.encrypt(KeyId=key["KeyMetadata"]["Arn"], Plaintext=b"x")["ResponseMetadata"]["RequestId"]
        with pytest.raises(ClientError) as denied:
            carol.generate_data_key(KeyId=key["KeyMetadata"]["Arn"], KeySpec="AES_256")
        refused = denied.value.response["ResponseMetadata"]["RequestId"]
    finally:
        assert server.stop() == 0
    events = _events(data)
    call = events[shared]
    assert (call["recipientAccountId"], call["userIdentity"]["accountId"]) == (other, other)
    assert "sharedEventID" in call and "sharedEventID" not in events[refused]  # AWS: denied, caller's only
    printed = [json.loads(line) for line in _keytrail("audit", "events", "--data-dir", str(data)).stdout.splitlines()]
    assert [e["sharedEventID"] for e in printed if e.get("requestID") == shared] == [call["sharedEventID"]]

    out = tmp_path / "out"
    assert _keytrail("audit", "export", "--format", "cloudtrail", "--data-dir", str(data), str(out)).returncode == 0
    owners = [record for path in (out / "AWSLogs" / ACCOUNT).rglob("*.json.gz")
              for record in json.loads(gzip.decompress(path.read_bytes()))["Records"]
              if record.get("sharedEventID") == call["sharedEventID"]]
    assert [(e["recipientAccountId"], e["requestID"]) for e in owners] == [(ACCOUNT, shared)]
    assert owners[0]["eventID"] != call["eventID"]
    imported = _keytrail("audit", "import", "--data-dir", str(tmp_path / "copy"), str(out))
    assert imported.returncode == 0, imported.stderr
    assert sorted(e["eventID"] for _, e in iter_events(tmp_path / "copy")) == \
        sorted(e["eventID"] for _, e in iter_events(data))


def test_a_stop_after_the_spool_failed_for_good_exits_1_and_says_no_final_digest_was_signed(tmp_path: Path) -> None:
    # A spool that failed for good (a failed fsync, its folder moved away) refuses every record and
    # signs nothing more; its stop skipped the final digest in silence and exited 0, as a clean one.
    server = KeytrailServer(tmp_path / "data").start()
    try:
        kms = server.client("alice")
        key_id = kms.create_key()["KeyMetadata"]["KeyId"]
        log_dir = event_log_dir(server.data_dir)
        log_dir.rename(log_dir.with_name("log-moved"))
        with pytest.raises(ClientError) as refused:
            kms.encrypt(KeyId=key_id, Plaintext=b"x")
        assert refused.value.response["Error"]["Code"] == "KMSInternalException"
        assert server.stop() == 1
    finally:
        if server.proc is not None:
            server.kill()
    stop_errors = [line for line in server.log.read_text().splitlines() if "stopping the node" in line]
    assert len(stop_errors) == 1 and "no final digest was signed" in stop_errors[0], stop_errors
