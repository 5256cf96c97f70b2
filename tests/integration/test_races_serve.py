"""Conflicting calls fired at once through two `keytrail serve` nodes on one PostgreSQL key store
(docker-compose.yml's topology), by boto3 clients in threads: the store keeps one outcome, every
answered call has exactly one audit event whose errorCode is its answer's, and work the clock makes
due is done once by the two nodes together, with one service event."""

from __future__ import annotations

import base64
import os
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from keytrail.kms.sealing import ROOT_KEY_ENV
from tests.integration.e2e.support import audit_events, reply_id
from tests.support.postgres import database_url, scratch_database
from tests.support.server import KeytrailServer, two_nodes

pytestmark = pytest.mark.integration

Nodes = tuple[KeytrailServer, KeytrailServer]
Answer = tuple[str, str]  # the error code ("OK" for a success), the request id


@pytest.fixture
def nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Nodes]:
    """Nodes A and B on one scratch database and one root key, each with its own data dir (and trail)."""
    monkeypatch.setenv(ROOT_KEY_ENV, base64.b64encode(os.urandom(32)).decode())
    with scratch_database() as name, two_nodes(tmp_path, database_url(name)) as both:
        yield both


def _at_once(calls: list[tuple[Any, str, dict[str, Any]]]) -> list[Answer]:
    """Each (client, operation, parameters), every one in its own thread, released together."""
    start = threading.Barrier(len(calls))

    def answer(client: Any, operation: str, params: dict[str, Any]) -> Answer:
        start.wait()
        try:
            return "OK", reply_id(getattr(client, operation)(**params))
        except ClientError as error:
            return str(error.response["Error"]["Code"]), reply_id(error)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda call: answer(*call), calls))


def _recorded_as_answered(nodes: Nodes, answers: list[Answer]) -> None:
    """Exactly one event per answered call, in either node's trail, with the answer's errorCode."""
    events = [event for node in nodes for event in audit_events(node.data_dir) if "requestID" in event]
    by_request = Counter(event["requestID"] for event in events)
    codes = {event["requestID"]: event.get("errorCode") or "OK" for event in events}
    assert [(code, by_request[request], codes.get(request)) for code, request in answers] == [
        (code, 1, code) for code, _ in answers]


def _both(nodes: Nodes, count: int) -> list[Any]:
    """`count` clients, every other one on each node."""
    return [nodes[i % 2].client("alice") for i in range(count)]


def test_one_alias_name_created_through_both_nodes_at_once_is_made_once_and_each_call_recorded_as_answered(
        nodes: Nodes) -> None:
    key_id = nodes[0].client("alice").create_key()["KeyMetadata"]["KeyId"]
    answers = _at_once([(client, "create_alias", {"AliasName": "alias/raced", "TargetKeyId": key_id})
                        for client in _both(nodes, 8)])
    assert sorted(code for code, _ in answers) == ["AlreadyExistsException"] * 7 + ["OK"]
    assert [a["AliasName"] for a in nodes[1].client("alice").list_aliases(KeyId=key_id)["Aliases"]] == [
        "alias/raced"]
    _recorded_as_answered(nodes, answers)


def test_on_demand_rotations_through_both_nodes_at_once_stop_at_the_quota(nodes: Nodes) -> None:
    # AWS: "You can perform on-demand key rotation a maximum of 25 times per KMS key".
    key_id = nodes[0].client("alice").create_key()["KeyMetadata"]["KeyId"]
    answers = _at_once([(client, "rotate_key_on_demand", {"KeyId": key_id}) for client in _both(nodes, 30)])
    assert Counter(code for code, _ in answers) == {"OK": 25, "LimitExceededException": 5}
    assert len(nodes[1].client("alice").list_key_rotations(KeyId=key_id)["Rotations"]) == 25
    _recorded_as_answered(nodes, answers)


def _import_expiring(client: Any, key_id: str, valid_to: datetime) -> None:
    parameters = client.get_parameters_for_import(KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256",
                                                  WrappingKeySpec="RSA_2048")
    public_key = serialization.load_der_public_key(parameters["PublicKey"])
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    client.import_key_material(KeyId=key_id, ImportToken=parameters["ImportToken"],
                               EncryptedKeyMaterial=public_key.encrypt(os.urandom(32), oaep),  # type: ignore[union-attr]
                               ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)


def test_due_deletion_rotation_and_expiry_are_each_done_once_when_both_nodes_advance_at_once(nodes: Nodes) -> None:
    first, second = (node.client("alice") for node in nodes)
    deleted = first.create_key()["KeyMetadata"]["KeyId"]
    first.schedule_key_deletion(KeyId=deleted, PendingWindowInDays=7)
    rotated = second.create_key()["KeyMetadata"]["KeyId"]
    second.enable_key_rotation(KeyId=rotated, RotationPeriodInDays=90)
    expired = first.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    _import_expiring(first, expired, datetime.fromisoformat(nodes[0].advance(0)) + timedelta(days=3))

    with ThreadPoolExecutor(2) as pool:  # each advance runs its node's scheduler tick before it answers
        list(pool.map(lambda node: node.advance(100 * 86400), nodes))

    service_events = {e["eventID"]: e for node in nodes for e in audit_events(node.data_dir)
                      if e["eventType"] == "AwsServiceEvent"}
    done = Counter((e["eventName"], e["resources"][0]["ARN"].rsplit("/", 1)[1]) for e in service_events.values())
    assert done == {("DeleteKey", deleted): 1, ("RotateKey", rotated): 1, ("DeleteExpiredKeyMaterial", expired): 1}
    assert len(second.list_key_rotations(KeyId=rotated)["Rotations"]) == 1
    assert first.describe_key(KeyId=expired)["KeyMetadata"]["KeyState"] == "PendingImport"
