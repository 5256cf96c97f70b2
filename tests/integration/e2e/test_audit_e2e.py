"""The audit trail end to end: a scripted boto3 session against `keytrail serve --kafka`.

Each call has exactly one CloudTrail record (requestID = the response's RequestId), in the
embedded log and on Kafka `keytrail.audit.v1`; no secret bytes reach any file; `audit verify`
passes on the live-written log and fails once a segment byte is flipped.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from botocore.exceptions import ClientError

from keytrail.transport.segment_log import event_log_dir
from tests.integration.e2e.support import audit_events, cli, consume_sync, raw_files, reply_id
from tests.support.server import ACCOUNT, KeytrailServer
from tests.support.services import kafka_broker

pytestmark = pytest.mark.integration

SCHEMA = Path(__file__).parents[3] / "schemas" / "cloudtrail_event.avsc"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"


@dataclass
class Session:
    """What the scripted session did: requestID -> (eventName, errorCode, key ARN or None), secrets."""

    calls: dict[str, tuple[str, str | None, str | None]] = field(default_factory=dict)
    secrets: list[bytes] = field(default_factory=list)
    key_arn: str = ""

    def ok(self, name: str, reply: dict[str, Any], key_arn: str | None = None) -> dict[str, Any]:
        self.calls[reply_id(reply)] = (name, None, key_arn)
        return reply

    def failed(self, name: str, error: ClientError, key_arn: str | None = None) -> str:
        code = error.response["Error"]["Code"]
        self.calls[reply_id(error)] = (name, code, key_arn)
        return str(code)


def _expect_error(session: Session, name: str, key_arn: str | None, call: Any, **params: Any) -> str:
    with pytest.raises(ClientError) as raised:
        call(**params)
    return session.failed(name, raised.value, key_arn)


def run_session(server: KeytrailServer) -> Session:
    """create key, alias, encrypt, decrypt, data key, denied decrypt, validation error, deletion."""
    alice, app, bob, root = (server.client(who) for who in ("alice", "app", "bob", "root"))
    session = Session(secrets=[os.urandom(32)])
    created = alice.create_key(Description="e2e")
    arn = session.key_arn = created["KeyMetadata"]["Arn"]
    key = session.ok
    key("CreateKey", created, arn)  # the created key is the record's resource, so its Kafka key
    key("CreateAlias", alice.create_alias(AliasName="alias/e2e-audit", TargetKeyId=arn), arn)
    blob = key("Encrypt", alice.encrypt(KeyId="alias/e2e-audit", Plaintext=session.secrets[0]), arn)
    session.secrets.append(blob["CiphertextBlob"])
    decrypted = key("Decrypt", app.decrypt(CiphertextBlob=blob["CiphertextBlob"]), arn)
    assert decrypted["Plaintext"] == session.secrets[0]
    data_key = key("GenerateDataKey", alice.generate_data_key(KeyId=arn, KeySpec="AES_256"), arn)
    session.secrets += [data_key["Plaintext"], data_key["CiphertextBlob"]]
    assert _expect_error(session, "Decrypt", arn, bob.decrypt, CiphertextBlob=blob["CiphertextBlob"]) \
        == "AccessDeniedException"
    # rejected before the key is resolved: no resource, so keyed by the account on Kafka
    assert _expect_error(session, "GenerateDataKey", None, alice.generate_data_key, KeyId=arn,
                         NumberOfBytes=2048) == "ValidationException"
    key("ListKeys", root.list_keys())
    key("ScheduleKeyDeletion", alice.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7), arn)
    return session


def _check_records(session: Session, events: list[dict[str, Any]]) -> None:
    by_request = {event["requestID"]: event for event in events}
    assert len(events) == len(by_request) == len(session.calls)  # one record per call, no more
    assert set(by_request) == set(session.calls)
    for request_id, (name, code, _) in session.calls.items():
        event = by_request[request_id]
        assert (event["eventName"], event["eventSource"]) == (name, "kms.amazonaws.com")
        # CloudTrail records a denial as AccessDenied; other errors under their API error code
        assert event.get("errorCode") == ("AccessDenied" if code == "AccessDeniedException" else code), event
        assert event["recipientAccountId"] == ACCOUNT and event["eventVersion"] == "1.11"
    types = {by_request[r]["userIdentity"]["type"] for r in session.calls}
    assert types == {"IAMUser", "AssumedRole", "Root"}
    for event in events:
        identity = event["userIdentity"]
        if identity["type"] == "IAMUser":
            assert identity["arn"] in (ALICE, f"arn:aws:iam::{ACCOUNT}:user/bob")
        if identity["type"] == "AssumedRole":
            assert identity["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/app-session"
            assert identity["sessionContext"]["sessionIssuer"]["arn"] == f"arn:aws:iam::{ACCOUNT}:role/app"
        if identity["type"] == "Root":
            assert identity["arn"] == f"arn:aws:iam::{ACCOUNT}:root"


def _check_no_secrets(session: Session, root: Path) -> None:
    """Grep every byte the server wrote for the plaintext, ciphertexts and data key, raw and base64."""
    needles = session.secrets + [base64.b64encode(s) for s in session.secrets]
    files = raw_files(root)
    # The log stores strings as plain bytes, so a grep of it would find a secret: it finds every requestID.
    log_bytes = b"".join(data for path, data in files if path.parent == event_log_dir(root))
    assert all(request_id.encode() in log_bytes for request_id in session.calls)
    for path, data in files:
        for needle in needles:
            assert needle not in data, f"secret bytes in {path}"


def _check_kafka(session: Session, bootstrap: str, events: list[dict[str, Any]]) -> None:
    schema = fastavro.parse_schema(json.loads(SCHEMA.read_text()))
    crc = fastavro.schema.fingerprint(fastavro.schema.to_parsing_canonical_form(schema), "CRC-64-AVRO")
    fingerprint = int(crc, 16).to_bytes(8, "little")
    messages = consume_sync(bootstrap, "keytrail.audit.v1", lambda got: len(got) >= len(session.calls))
    shipped: dict[str, tuple[bytes | None, dict[str, Any]]] = {}
    for key, value in messages:
        assert value[:2] == b"\xc3\x01"  # Avro single-object encoding: marker, fingerprint, body
        assert value[2:10] == fingerprint
        record = cast(dict[str, Any], fastavro.schemaless_reader(io.BytesIO(value[10:]), schema, schema))
        shipped[record["requestID"]] = (key, record)
    assert len(messages) == len(session.calls) and set(shipped) == set(session.calls)
    stored = {event["requestID"]: event for event in events}
    for request_id, (_, _, key_arn) in session.calls.items():
        key, record = shipped[request_id]
        assert key == (key_arn or ACCOUNT).encode()
        assert record["eventID"] == stored[request_id]["eventID"]
        assert record["eventName"] == stored[request_id]["eventName"]
    for _, value in messages:
        assert not any(secret in value for secret in session.secrets)


def test_scripted_session_is_audited_one_to_one_in_the_log_and_on_kafka(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with kafka_broker() as bootstrap:
        server = KeytrailServer(data, "--kafka", bootstrap).start()
        try:
            session = run_session(server)
        finally:
            assert server.stop() == 0  # SIGTERM: in-flight calls finish, the spool is flushed
        events = audit_events(data)
        _check_records(session, events)
        _check_no_secrets(session, data)
        _check_kafka(session, bootstrap, events)


def test_verify_passes_on_the_live_written_log_and_fails_after_a_flipped_byte(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = KeytrailServer(data).start()
    try:
        run_session(server)
    finally:
        assert server.stop() == 0
    assert cli("audit", "verify", "--data-dir", str(data)).returncode == 0
    segment = max(event_log_dir(data).glob("*.seg"), key=lambda path: path.stat().st_size)
    raw = bytearray(segment.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    segment.write_bytes(bytes(raw))
    result = cli("audit", "verify", "--data-dir", str(data), check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert (result.stdout + result.stderr).strip()  # it names what is wrong
