"""On-demand rotation of imported key material, through boto3 against a live `keytrail serve`.

AWS KMS developer guide, "Import the key material" and "Rotate AWS KMS keys": a symmetric key of
EXTERNAL origin takes new material with `ImportType=NEW_KEY_MATERIAL` (PENDING_ROTATION), and
`RotateKeyOnDemand` makes it current; older material keeps decrypting what it encrypted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.keystores.wrapping import import_material as _import
from tests.support.blobs import open_locally
from tests.support.errors import aws_error
from tests.support.server import KeytrailServer

pytestmark = pytest.mark.integration

NEVER = {"ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE"}
PRIMARY, REPLICA, THIRD = "us-east-1", "eu-west-2", "ap-southeast-2"


def _server_now(server: KeytrailServer) -> datetime:
    return datetime.fromisoformat(server.advance(0))


def _imported_key(kms: Any, material: bytes) -> tuple[str, str, str]:
    """A symmetric key of EXTERNAL origin holding `material`: (key id, ARN, KeyMaterialId)."""
    meta = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]
    imported = _import(kms, meta["KeyId"], material)
    return meta["KeyId"], meta["Arn"], imported["KeyMaterialId"]


def _import_new(kms: Any, key_id: str, material: bytes, **extra: Any) -> dict[str, Any]:
    return _import(kms, key_id, material, ImportType="NEW_KEY_MATERIAL", **(extra or NEVER))


def _rotations(kms: Any, key_id: str, include: str = "ALL_KEY_MATERIAL") -> list[dict[str, Any]]:
    return kms.list_key_rotations(KeyId=key_id, IncludeKeyMaterial=include)["Rotations"]  # type: ignore[no-any-return]


def _states(kms: Any, key_id: str) -> dict[str, tuple[str, str]]:
    """KeyMaterialId -> (KeyMaterialState, ImportState) of every material of the key."""
    return {e["KeyMaterialId"]: (e["KeyMaterialState"], e["ImportState"]) for e in _rotations(kms, key_id)}


def test_new_material_becomes_current_on_demand_and_old_ciphertext_still_decrypts(kms: Any) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id, arn, first_id = _imported_key(kms, first)
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"before rotation")["CiphertextBlob"]

    new = _import_new(kms, key_id, second, KeyMaterialDescription="second material", **NEVER)
    assert new["KeyId"] == arn and new["KeyMaterialId"] not in (first_id, None)
    second_id = new["KeyMaterialId"]
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["CurrentKeyMaterialId"]) == ("Enabled", first_id)  # not current yet
    assert kms.decrypt(CiphertextBlob=kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"])[
        "KeyMaterialId"] == first_id
    pending = _rotations(kms, key_id)[-1]
    assert pending == {
        "KeyId": arn, "KeyMaterialId": second_id, "KeyMaterialDescription": "second material",
        "ImportState": "IMPORTED", "KeyMaterialState": "PENDING_ROTATION",
        "ExpirationModel": "KEY_MATERIAL_DOES_NOT_EXPIRE",
    }
    assert _rotations(kms, key_id, "ROTATIONS_ONLY") == []

    assert kms.rotate_key_on_demand(KeyId=key_id)["KeyId"] == arn
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == second_id
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"after rotation")["CiphertextBlob"]
    assert open_locally(second, new_blob, key_id) == b"after rotation"  # really the imported bytes
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == second_id
    old = kms.decrypt(CiphertextBlob=old_blob)
    assert (old["Plaintext"], old["KeyMaterialId"]) == (b"before rotation", first_id)
    assert _states(kms, key_id) == {first_id: ("NON_CURRENT", "IMPORTED"), second_id: ("CURRENT", "IMPORTED")}
    [rotation] = _rotations(kms, key_id, "ROTATIONS_ONLY")
    assert (rotation["KeyMaterialId"], rotation["RotationType"]) == (second_id, "ON_DEMAND")
    assert "RotationDate" in rotation


def test_rotating_an_imported_key_without_pending_material_is_refused(kms: Any) -> None:
    key_id, arn, first_id = _imported_key(kms, os.urandom(32))
    code, message, _ = aws_error(kms.rotate_key_on_demand, KeyId=key_id)
    assert (code, message) == (
        "UnsupportedOperationException",
        f"{arn} has no key material in PENDING_ROTATION state: import new key material "
        "(ImportKeyMaterial with ImportType NEW_KEY_MATERIAL) before rotating it on demand.",
    )
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == first_id


def test_rotation_status_of_an_imported_key_is_unsupported_also_once_rotated(kms: Any) -> None:
    # Key states table: GetKeyRotationStatus of a key of imported material is
    # UnsupportedOperationException "<key ARN> origin is EXTERNAL which is not valid for this
    # operation." in every state; on-demand rotation to imported material does not change that.
    key_id, arn, _ = _imported_key(kms, os.urandom(32))
    expected = ("UnsupportedOperationException", f"{arn} origin is EXTERNAL which is not valid for this operation.")
    assert aws_error(kms.get_key_rotation_status, KeyId=key_id)[:2] == expected
    _import_new(kms, key_id, os.urandom(32))
    kms.rotate_key_on_demand(KeyId=key_id)
    assert aws_error(kms.get_key_rotation_status, KeyId=arn)[:2] == expected


def test_new_material_sequences_that_are_refused(kms: Any) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id, arn, first_id = _imported_key(kms, first)
    with pytest.raises(ClientError) as excinfo:  # the key's own material is not new
        _import_new(kms, key_id, first)
    assert excinfo.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    with pytest.raises(ClientError) as excinfo:
        _import_new(kms, key_id, second, KeyMaterialId=first_id, **NEVER)
    assert excinfo.value.response["Error"] == {
        "Code": "ValidationException",
        "Message": "You cannot specify a KeyMaterialId with ImportType NEW_KEY_MATERIAL.",
    }
    second_id = _import_new(kms, key_id, second)["KeyMaterialId"]
    with pytest.raises(ClientError) as excinfo:  # one material pending rotation at a time
        _import_new(kms, key_id, os.urandom(32))
    assert excinfo.value.response["Error"] == {
        "Code": "KMSInvalidStateException",
        "Message": f"{arn} already has key material {second_id} in PENDING_ROTATION state: rotate to it "
                   "(RotateKeyOnDemand) or delete it (DeleteImportedKeyMaterial) first.",
    }
    with pytest.raises(ClientError) as excinfo:  # without ImportType: EXISTING, and this one is not
        _import(kms, key_id, os.urandom(32))
    assert excinfo.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert _states(kms, key_id) == {first_id: ("CURRENT", "IMPORTED"), second_id: ("PENDING_ROTATION", "IMPORTED")}


def test_existing_material_type_needs_material_imported_before(kms: Any) -> None:
    key_id = kms.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as excinfo:
        _import(kms, key_id, os.urandom(32), ImportType="EXISTING_KEY_MATERIAL", **NEVER)
    assert excinfo.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "PendingImport"
    # An explicit NEW_KEY_MATERIAL into an empty key is its first material, current at once.
    first_id = _import_new(kms, key_id, os.urandom(32))["KeyMaterialId"]
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == first_id


def test_import_type_on_a_key_that_is_not_symmetric_encryption_is_refused(kms: Any) -> None:
    # "For asymmetric, or HMAC KMS keys with EXTERNAL origin, only one key material can ever be
    # associated with the key. AWS KMS will reject ImportKeyMaterial API requests with the
    # ImportType parameter."
    spec, material = "HMAC_256", os.urandom(32)
    meta = kms.create_key(Origin="EXTERNAL", KeySpec=spec, KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    for extra in ({"ImportType": "NEW_KEY_MATERIAL"}, {"ImportType": "EXISTING_KEY_MATERIAL"},
                  {"KeyMaterialDescription": "mine"}):
        with pytest.raises(ClientError) as excinfo:
            _import(kms, meta["KeyId"], material, **extra, **NEVER)
        name = next(iter(extra))
        assert excinfo.value.response["Error"] == {
            "Code": "ValidationException",
            "Message": f"{name} is only valid for symmetric encryption KMS keys; {meta['Arn']} has key spec {spec}.",
        }
    _import(kms, meta["KeyId"], material)
    assert kms.describe_key(KeyId=meta["KeyId"])["KeyMetadata"]["KeyState"] == "Enabled"


def _multi_region_key(server: KeytrailServer, material: bytes) -> tuple[Any, Any, str, str]:
    """An imported multi-Region key with `material` in its primary and one replica:
    (primary client, replica client, key id, KeyMaterialId)."""
    kms, remote = server.client("alice", PRIMARY), server.client("alice", REPLICA)
    key_id = kms.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    first_id = _import(kms, key_id, material)["KeyMaterialId"]
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _import(remote, key_id, material)
    return kms, remote, key_id, first_id


def test_multi_region_key_rotates_once_every_replica_holds_the_new_material(server: KeytrailServer) -> None:
    # ImportKeyMaterial: new material goes into the primary Region key (NEW_KEY_MATERIAL), the
    # same material into each replica (EXISTING_KEY_MATERIAL), then RotateKeyOnDemand on the primary.
    first, second = os.urandom(32), os.urandom(32)
    kms, remote, key_id, first_id = _multi_region_key(server, first)
    old_blob = remote.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    with pytest.raises(ClientError) as excinfo:
        _import_new(remote, key_id, second)
    replica_arn = remote.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"]
    assert excinfo.value.response["Error"] == {
        "Code": "UnsupportedOperationException",
        "Message": f"{replica_arn} is a replica Region key: import new key material into its primary Region key "
                   f"({PRIMARY}), then the same key material here with ImportType EXISTING_KEY_MATERIAL.",
    }
    second_id = _import_new(kms, key_id, second)["KeyMaterialId"]
    waiting = ("PENDING_MULTI_REGION_IMPORT_AND_ROTATION", "IMPORTED")
    assert _states(kms, key_id)[second_id] == waiting
    assert _states(remote, key_id)[second_id] == ("PENDING_MULTI_REGION_IMPORT_AND_ROTATION", "PENDING_IMPORT")
    code, message, _ = aws_error(kms.rotate_key_on_demand, KeyId=key_id)
    assert (code, message) == (
        "UnsupportedOperationException",
        f"Key material {second_id} of {_arn(kms, key_id)} is in PENDING_MULTI_REGION_IMPORT_AND_ROTATION state: "
        f"import it into {replica_arn} (ImportType EXISTING_KEY_MATERIAL) before rotating.",
    )
    with pytest.raises(ClientError) as excinfo:  # the replica takes only the primary's material
        _import(remote, key_id, os.urandom(32))
    assert excinfo.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"
    assert _import(remote, key_id, second, ImportType="EXISTING_KEY_MATERIAL", **NEVER)["KeyMaterialId"] == second_id
    assert _states(kms, key_id)[second_id] == ("PENDING_ROTATION", "IMPORTED")
    assert _states(remote, key_id)[second_id] == ("PENDING_ROTATION", "IMPORTED")
    assert aws_error(remote.rotate_key_on_demand, KeyId=key_id)[0] == "UnsupportedOperationException"

    kms.rotate_key_on_demand(KeyId=key_id)
    for client in (kms, remote):
        assert client.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == second_id
        assert _states(client, key_id) == {first_id: ("NON_CURRENT", "IMPORTED"), second_id: ("CURRENT", "IMPORTED")}
    new_blob = remote.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == second_id
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"old"


def test_deleting_new_material_of_the_primary_deletes_it_from_the_replicas(server: KeytrailServer) -> None:
    second = os.urandom(32)
    kms, remote, key_id, first_id = _multi_region_key(server, os.urandom(32))
    second_id = _import_new(kms, key_id, second)["KeyMaterialId"]
    _import(remote, key_id, second)
    # "If you delete any key material of a replica Region key, the primary Region key and other
    # replica Region keys remain unchanged": the replica must import it again.
    remote.delete_imported_key_material(KeyId=key_id, KeyMaterialId=second_id)
    assert _states(remote, key_id)[second_id] == ("PENDING_MULTI_REGION_IMPORT_AND_ROTATION", "PENDING_IMPORT")
    assert _states(kms, key_id)[second_id] == ("PENDING_MULTI_REGION_IMPORT_AND_ROTATION", "IMPORTED")
    assert remote.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=second_id)
    for client in (kms, remote):
        assert _states(client, key_id) == {first_id: ("CURRENT", "IMPORTED")}
    with pytest.raises(ClientError) as excinfo:
        _import(remote, key_id, second)
    assert excinfo.value.response["Error"]["Code"] == "IncorrectKeyMaterialException"


def test_a_replica_made_after_a_rotation_needs_every_material_of_the_primary(server: KeytrailServer) -> None:
    first, second = os.urandom(32), os.urandom(32)
    kms = server.client("alice", PRIMARY)
    key_id = kms.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    first_id = _import(kms, key_id, first)["KeyMaterialId"]
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    second_id = _import_new(kms, key_id, second)["KeyMaterialId"]
    kms.rotate_key_on_demand(KeyId=key_id)
    assert kms.replicate_key(KeyId=key_id, ReplicaRegion=THIRD)["ReplicaKeyMetadata"]["KeyState"] == "PendingImport"
    remote = server.client("alice", THIRD)
    assert _states(remote, key_id) == {
        first_id: ("NON_CURRENT", "PENDING_IMPORT"), second_id: ("CURRENT", "PENDING_IMPORT"),
    }
    _import(remote, key_id, second)
    meta = remote.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["CurrentKeyMaterialId"]) == ("PendingImport", second_id)
    _import(remote, key_id, first)
    assert remote.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert remote.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"old"
    assert kms.decrypt(CiphertextBlob=remote.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"])[
        "KeyMaterialId"] == second_id


def test_expired_new_material_of_the_primary_goes_from_the_replicas(fresh_server: KeytrailServer) -> None:
    second = os.urandom(32)
    kms, remote, key_id, first_id = _multi_region_key(fresh_server, os.urandom(32))
    valid_to = _server_now(fresh_server) + timedelta(days=1)
    _import_new(kms, key_id, second, ExpirationModel="KEY_MATERIAL_EXPIRES", ValidTo=valid_to)
    _import(remote, key_id, second, ImportType="EXISTING_KEY_MATERIAL", **NEVER)
    fresh_server.advance(2 * 86400)
    for client in (kms, remote):
        assert _states(client, key_id) == {first_id: ("CURRENT", "IMPORTED")}
        assert client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"


def _arn(kms: Any, key_id: str) -> str:
    return str(kms.describe_key(KeyId=key_id)["KeyMetadata"]["Arn"])


def test_deleting_pending_material_leaves_the_key_enabled(kms: Any) -> None:
    key_id, arn, first_id = _imported_key(kms, os.urandom(32))
    second_id = _import_new(kms, key_id, os.urandom(32))["KeyMaterialId"]
    deleted = kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=second_id)
    assert (deleted["KeyId"], deleted["KeyMaterialId"]) == (arn, second_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert _states(kms, key_id) == {first_id: ("CURRENT", "IMPORTED")}  # no longer the key's
    assert aws_error(kms.rotate_key_on_demand, KeyId=key_id)[0] == "UnsupportedOperationException"
    third_id = _import_new(kms, key_id, os.urandom(32))["KeyMaterialId"]  # another in its place
    kms.rotate_key_on_demand(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == third_id


def test_deleted_older_material_makes_the_key_pending_import_until_imported_again(kms: Any) -> None:
    first, second = os.urandom(32), os.urandom(32)
    key_id, arn, first_id = _imported_key(kms, first)
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    second_id = _import_new(kms, key_id, second)["KeyMaterialId"]
    kms.rotate_key_on_demand(KeyId=key_id)

    assert kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=first_id)["KeyMaterialId"] == first_id
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["CurrentKeyMaterialId"]) == ("PendingImport", second_id)
    assert _states(kms, key_id) == {first_id: ("NON_CURRENT", "PENDING_IMPORT"), second_id: ("CURRENT", "IMPORTED")}
    assert "ExpirationModel" not in _rotations(kms, key_id)[0]
    assert aws_error(kms.encrypt, KeyId=key_id, Plaintext=b"x")[:2] == (
        "KMSInvalidStateException", f"{arn} is pending import.")
    code, message, _ = aws_error(kms.delete_imported_key_material, KeyId=key_id, KeyMaterialId="ab" * 32)
    assert (code, message) == ("NotFoundException", f"Key material {'ab' * 32} does not exist for {arn}")

    with pytest.raises(ClientError) as excinfo:  # the id named must be the material's
        _import(kms, key_id, first, KeyMaterialId=second_id, **NEVER)
    assert excinfo.value.response["Error"] == {
        "Code": "IncorrectKeyMaterialException",
        "Message": f"The key material does not match key material ID {second_id}.",
    }
    again = _import(kms, key_id, first, ImportType="EXISTING_KEY_MATERIAL", KeyMaterialId=first_id, **NEVER)
    assert again["KeyMaterialId"] == first_id
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    assert kms.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"old"


def test_deleting_the_current_material_keeps_its_place(kms: Any) -> None:
    # Without KeyMaterialId, DeleteImportedKeyMaterial deletes the current material, not the
    # one pending rotation; re-importing it brings the key back as it was.
    first = os.urandom(32)
    key_id, _, first_id = _imported_key(kms, first)
    second_id = _import_new(kms, key_id, os.urandom(32))["KeyMaterialId"]
    assert kms.delete_imported_key_material(KeyId=key_id)["KeyMaterialId"] == first_id
    assert _states(kms, key_id) == {
        first_id: ("CURRENT", "PENDING_IMPORT"), second_id: ("PENDING_ROTATION", "IMPORTED"),
    }
    assert aws_error(kms.rotate_key_on_demand, KeyId=key_id)[0] == "KMSInvalidStateException"
    _import(kms, key_id, first)
    kms.rotate_key_on_demand(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == second_id


def test_on_demand_rotation_limit_counts_imported_rotations(kms: Any) -> None:
    key_id, arn, _ = _imported_key(kms, os.urandom(32))
    for _ in range(25):
        _import_new(kms, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
        kms.rotate_key_on_demand(KeyId=key_id)
    assert len(_rotations(kms, key_id, "ROTATIONS_ONLY")) == 25
    _import_new(kms, key_id, os.urandom(32))
    code, message, _ = aws_error(kms.rotate_key_on_demand, KeyId=key_id)
    assert (code, message) == (
        "LimitExceededException",
        "The on-demand rotations limit has been reached for the given keyId. "
        f"No more on-demand rotations can be performed for this key: {arn}",
    )


def test_pending_material_expires_alone_and_survives_a_restart(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key_id, _, first_id = _imported_key(kms, os.urandom(32))
    valid_to = (_server_now(fresh_server) + timedelta(days=1)).replace(microsecond=0)
    second_id = _import_new(kms, key_id, os.urandom(32), ExpirationModel="KEY_MATERIAL_EXPIRES",
                            ValidTo=valid_to)["KeyMaterialId"]
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    # DescribeKey's ValidTo is that of material "permanently associated" with the key.
    assert meta["ExpirationModel"] == "KEY_MATERIAL_DOES_NOT_EXPIRE" and "ValidTo" not in meta
    fresh_server.stop()
    fresh_server.start()
    assert _rotations(kms, key_id)[-1]["ValidTo"] == valid_to
    fresh_server.advance(2 * 86400)
    assert _states(kms, key_id) == {first_id: ("CURRENT", "IMPORTED")}
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    events = _events(fresh_server)
    expired = [e for e in events if e["eventName"] == "DeleteExpiredKeyMaterial"]
    assert [e["serviceEventDetails"] for e in expired] == [{"keyId": key_id, "keyMaterialId": second_id}]


def test_audit_names_the_imported_materials_of_a_rotation(fresh_server: KeytrailServer) -> None:
    kms = fresh_server.client("alice")
    key_id, arn, first_id = _imported_key(kms, os.urandom(32))
    second_id = _import_new(kms, key_id, os.urandom(32), KeyMaterialDescription="q3", **NEVER)["KeyMaterialId"]
    kms.rotate_key_on_demand(KeyId=key_id)
    kms.delete_imported_key_material(KeyId=key_id, KeyMaterialId=first_id)
    events = [e for e in _events(fresh_server) if e.get("resources") and e["resources"][0]["ARN"] == arn]
    imports = [e for e in events if e["eventName"] == "ImportKeyMaterial"]
    assert [e["additionalEventData"] for e in imports] == [{"keyMaterialId": first_id}, {"keyMaterialId": second_id}]
    assert imports[1]["requestParameters"]["importType"] == "NEW_KEY_MATERIAL"
    assert imports[1]["requestParameters"]["keyMaterialDescription"] == "q3"
    assert "encryptedKeyMaterial" not in imports[1]["requestParameters"]
    [call] = [e for e in events if e["eventName"] == "RotateKeyOnDemand"]
    assert call["responseElements"] == {"keyId": arn} and call["eventType"] == "AwsApiCall"
    [rotated] = [e for e in events if e["eventName"] == "RotateKey"]
    assert rotated["eventType"] == "AwsServiceEvent"
    assert rotated["serviceEventDetails"] == {
        "rotationType": "ON_DEMAND", "keyOrigin": "EXTERNAL",
        "previousKeyMaterialId": first_id, "currentKeyMaterialId": second_id, "keyId": key_id,
    }
    [deleted] = [e for e in events if e["eventName"] == "DeleteImportedKeyMaterial"]
    assert deleted["requestParameters"]["keyMaterialId"] == first_id
    assert deleted["additionalEventData"] == {"keyMaterialId": first_id}


def _events(server: KeytrailServer) -> list[dict[str, Any]]:
    """The server's audit events as `keytrail audit events --format json` prints them."""
    out = subprocess.run([sys.executable, "-m", "keytrail", "audit", "events", "--data-dir", str(server.data_dir),
                          "--format", "json"], capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]
