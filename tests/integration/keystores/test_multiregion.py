"""Multi-Region keys through boto3 against a live `keytrail serve`: one server, several Regions."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.integration.keystores.wrapping import import_material as _import
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration

PRIMARY, REPLICA, THIRD = "us-east-1", "eu-west-2", "ap-southeast-2"


def _error(excinfo: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    error = excinfo.value.response["Error"]
    return error["Code"], error.get("Message", "")


def _arn(region: str, key_id: str) -> str:
    return f"arn:aws:kms:{region}:{ACCOUNT}:key/{key_id}"


def _mrk(server: KeytrailServer) -> tuple[Any, str]:
    kms = server.client("alice", PRIMARY)
    return kms, kms.create_key(MultiRegion=True, Description="mrk")["KeyMetadata"]["KeyId"]


def _tick(server: KeytrailServer) -> None:
    server.advance(0)  # one scheduler pass: replicas leave Creating


def test_multi_region_key_has_mrk_id_and_primary_configuration(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    assert re.fullmatch(r"mrk-[0-9a-f]{32}", key_id)
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["MultiRegion"] is True
    assert meta["MultiRegionConfiguration"] == {
        "MultiRegionKeyType": "PRIMARY",
        "PrimaryKey": {"Arn": _arn(PRIMARY, key_id), "Region": PRIMARY},
        "ReplicaKeys": [],
    }


def test_replicate_key_creates_replica_then_enables_it(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    answer = kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Description="replica")
    replica = answer["ReplicaKeyMetadata"]
    assert (replica["KeyState"], replica["Enabled"], replica["Arn"]) == (
        "Creating",
        False,
        _arn(REPLICA, key_id),
    )
    config = replica["MultiRegionConfiguration"]
    assert config["MultiRegionKeyType"] == "REPLICA"
    assert config["PrimaryKey"] == {"Arn": _arn(PRIMARY, key_id), "Region": PRIMARY}
    assert json.loads(answer["ReplicaPolicy"])["Statement"][0]["Sid"] == "Enable IAM User Permissions"
    primary = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert primary["MultiRegionConfiguration"]["ReplicaKeys"] == [
        {"Arn": _arn(REPLICA, key_id), "Region": REPLICA}
    ]
    _tick(server)
    remote = server.client("alice", REPLICA).describe_key(KeyId=key_id)["KeyMetadata"]
    assert (remote["KeyState"], remote["Description"]) == ("Enabled", "replica")
    assert remote["CurrentKeyMaterialId"] == primary["CurrentKeyMaterialId"]


def test_replica_description_is_its_own(server: KeytrailServer) -> None:
    # ReplicateKey: "The default value is an empty string"; the description is not shared.
    kms, key_id = _mrk(server)
    replica = kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)["ReplicaKeyMetadata"]
    assert replica["Description"] == ""
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "mrk"


def test_replicating_a_replica_or_a_single_region_key_is_unsupported(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    remote = server.client("alice", REPLICA)
    with pytest.raises(ClientError) as excinfo:
        remote.replicate_key(KeyId=key_id, ReplicaRegion=THIRD)
    assert _error(excinfo) == (
        "UnsupportedOperationException",
        f"{_arn(REPLICA, key_id)} is not a multi-region primary key.",
    )
    single = kms.create_key()["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as excinfo:
        kms.replicate_key(KeyId=single, ReplicaRegion=REPLICA)
    assert _error(excinfo)[0] == "UnsupportedOperationException"
    with pytest.raises(ClientError) as excinfo:
        kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    assert _error(excinfo)[0] == "AlreadyExistsException"


def test_ciphertext_from_one_region_decrypts_in_another(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    here = kms.encrypt(KeyId=key_id, Plaintext=b"from us-east-1", EncryptionContext={"a": "b"})[
        "CiphertextBlob"
    ]
    there = remote.decrypt(CiphertextBlob=here, EncryptionContext={"a": "b"})
    assert (there["Plaintext"], there["KeyId"]) == (b"from us-east-1", _arn(REPLICA, key_id))
    back = remote.encrypt(KeyId=key_id, Plaintext=b"from eu-west-2")["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=back)["Plaintext"] == b"from eu-west-2"


def test_replica_keeps_its_own_policy_and_enabled_state(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    remote.disable_key(KeyId=key_id)
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled"
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"x")["CiphertextBlob"]
    with pytest.raises(ClientError) as excinfo:
        remote.decrypt(CiphertextBlob=blob)
    assert _error(excinfo)[0] == "DisabledException"


def test_rotation_of_the_primary_reaches_replicas(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    old_blob = kms.encrypt(KeyId=key_id, Plaintext=b"old")["CiphertextBlob"]
    kms.rotate_key_on_demand(KeyId=key_id)
    current = kms.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    assert remote.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == current
    new_blob = kms.encrypt(KeyId=key_id, Plaintext=b"new")["CiphertextBlob"]
    assert remote.decrypt(CiphertextBlob=new_blob)["KeyMaterialId"] == current
    assert remote.decrypt(CiphertextBlob=old_blob)["Plaintext"] == b"old"
    with pytest.raises(ClientError) as excinfo:
        remote.rotate_key_on_demand(KeyId=key_id)
    assert _error(excinfo)[0] == "UnsupportedOperationException"


def test_automatic_rotation_status_of_the_primary_is_shared_by_replicas(server: KeytrailServer) -> None:
    # Automatic key rotation is a shared property: set on the primary, synchronized to replicas.
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    primary = kms.get_key_rotation_status(KeyId=key_id)
    replica = remote.get_key_rotation_status(KeyId=key_id)
    shared = ("KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate")
    assert [replica[name] for name in shared] == [primary[name] for name in shared]
    assert replica["RotationPeriodInDays"] == 90
    kms.disable_key_rotation(KeyId=key_id)
    assert remote.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False


def test_replica_reports_the_rotation_status_of_its_primary_waiting_for_deletion(server: KeytrailServer) -> None:
    # The automatic rotation status is shared (ReplicateKey's synchronized properties), and a primary
    # waiting for its replicas' deletion reports false and never rotates: so does its replica.
    kms, key_id = _mrk(server)
    kms.enable_key_rotation(KeyId=key_id, RotationPeriodInDays=90)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    replica = remote.get_key_rotation_status(KeyId=key_id)
    assert replica["KeyRotationEnabled"] is False and "NextRotationDate" not in replica
    assert replica["KeyId"] == _arn(REPLICA, key_id)
    kms.cancel_key_deletion(KeyId=key_id)
    shared = ("KeyRotationEnabled", "RotationPeriodInDays", "NextRotationDate")
    primary, replica = kms.get_key_rotation_status(KeyId=key_id), remote.get_key_rotation_status(KeyId=key_id)
    assert [replica[name] for name in shared] == [primary[name] for name in shared]
    assert replica["KeyRotationEnabled"] is True


def test_update_primary_region_swaps_roles(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=THIRD)
    _tick(server)
    kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    for region in (PRIMARY, REPLICA, THIRD):
        config = server.client("alice", region).describe_key(KeyId=key_id)["KeyMetadata"][
            "MultiRegionConfiguration"
        ]
        assert config["MultiRegionKeyType"] == ("PRIMARY" if region == REPLICA else "REPLICA")
        assert config["PrimaryKey"] == {"Arn": _arn(REPLICA, key_id), "Region": REPLICA}
        assert sorted(r["Region"] for r in config["ReplicaKeys"]) == sorted([PRIMARY, THIRD])
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=THIRD)
    assert _error(excinfo)[0] == "UnsupportedOperationException"
    server.client("alice", REPLICA).rotate_key_on_demand(KeyId=key_id)


def test_update_primary_region_needs_the_replica_key_policy_too(server: KeytrailServer) -> None:
    # UpdatePrimaryRegion requires kms:UpdatePrimaryRegion in the primary's and the replica's key policy.
    kms, key_id = _mrk(server)
    alice = f"arn:aws:iam::{ACCOUNT}:user/alice"
    replica_policy = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Effect": "Deny", "Principal": {"AWS": alice}, "Action": "kms:UpdatePrimaryRegion", "Resource": "*"},
    ]})
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Policy=replica_policy)
    _tick(server)
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    code, message = _error(excinfo)
    assert code == "AccessDeniedException" and _arn(REPLICA, key_id) in message
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] == (
        "PRIMARY"
    )


@pytest.mark.parametrize("disabled", [PRIMARY, REPLICA])
def test_update_primary_region_needs_both_keys_enabled(server: KeytrailServer, disabled: str) -> None:
    # "Both the primary key and the replica key must be in the Enabled key state" (DisabledException).
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    server.client("alice", disabled).disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    assert _error(excinfo) == ("DisabledException", f"{_arn(disabled, key_id)} is disabled.")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] == (
        "PRIMARY"
    )


def test_update_primary_region_to_its_own_region_still_needs_the_key_enabled(server: KeytrailServer) -> None:
    # Nothing moves, but a disabled primary is refused as for another Region ("Both keys must be enabled").
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    assert kms.update_primary_region(KeyId=key_id, PrimaryRegion=PRIMARY)["ResponseMetadata"]["HTTPStatusCode"] == 200
    kms.disable_key(KeyId=key_id)
    for region in (PRIMARY, REPLICA):
        with pytest.raises(ClientError) as excinfo:
            kms.update_primary_region(KeyId=key_id, PrimaryRegion=region)
        assert _error(excinfo) == ("DisabledException", f"{_arn(PRIMARY, key_id)} is disabled.")


def test_key_states_refusing_replication_or_a_new_primary_are_named_in_awss_words(server: KeytrailServer) -> None:
    # "KMSInvalidStateException: <key ARN> is pending deletion." (Key states of AWS KMS keys), never
    # the enum value ("is PendingDeletion.").
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)  # Creating until the next tick
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    assert _error(excinfo) == ("KMSInvalidStateException", f"{_arn(REPLICA, key_id)} is creating.")
    _tick(server)
    server.client("alice", REPLICA).schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    assert _error(excinfo) == ("KMSInvalidStateException", f"{_arn(REPLICA, key_id)} is pending deletion.")
    kms, key_id = _mrk(server)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    with pytest.raises(ClientError) as excinfo:
        kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    assert _error(excinfo) == ("KMSInvalidStateException", f"{_arn(PRIMARY, key_id)} is pending deletion.")
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)  # waits for its replica's deletion
    with pytest.raises(ClientError) as excinfo:
        kms.enable_key(KeyId=key_id)
    assert _error(excinfo) == ("KMSInvalidStateException", f"{_arn(PRIMARY, key_id)} is pending replica deletion.")


@pytest.mark.parametrize("pending", [PRIMARY, REPLICA])
def test_update_primary_region_refuses_a_copy_pending_import(server: KeytrailServer, pending: str) -> None:
    # "Both the primary key and the replica key must be in the Enabled key state when the operation
    # starts" (multi-region-update): a replica not yet given the imported material, or a primary
    # whose material was deleted, is PendingImport.
    kms = server.client("alice", PRIMARY)
    key_id = kms.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    _import(kms, key_id, material)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    if pending == PRIMARY:
        _import(server.client("alice", REPLICA), key_id, material)
        kms.delete_imported_key_material(KeyId=key_id)
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=REPLICA)
    assert _error(excinfo) == ("KMSInvalidStateException", f"{_arn(pending, key_id)} is pending import.")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["MultiRegionKeyType"] == (
        "PRIMARY"
    )


def test_update_primary_region_to_a_region_without_replica_is_not_found(server: KeytrailServer) -> None:
    kms, key_id = _mrk(server)
    with pytest.raises(ClientError) as excinfo:
        kms.update_primary_region(KeyId=key_id, PrimaryRegion=THIRD)
    assert _error(excinfo) == ("NotFoundException", f"Key '{_arn(THIRD, key_id)}' does not exist")


def test_primary_waits_for_replica_deletion_before_its_own(fresh_server: KeytrailServer) -> None:
    kms, key_id = _mrk(fresh_server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(fresh_server)
    scheduled = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    assert scheduled["KeyState"] == "PendingReplicaDeletion" and "DeletionDate" not in scheduled
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert (meta["KeyState"], meta["PendingDeletionWindowInDays"]) == ("PendingReplicaDeletion", 7)
    with pytest.raises(ClientError) as excinfo:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    assert _error(excinfo)[0] == "KMSInvalidStateException"
    remote = fresh_server.client("alice", REPLICA)
    remote.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    fresh_server.advance(7 * 86400 + 60)
    with pytest.raises(ClientError) as excinfo:
        remote.describe_key(KeyId=key_id)
    assert _error(excinfo)[0] == "NotFoundException"
    meta = kms.describe_key(KeyId=key_id)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["MultiRegionConfiguration"]["ReplicaKeys"] == []
    fresh_server.advance(7 * 86400 + 60)
    with pytest.raises(ClientError) as excinfo:
        kms.describe_key(KeyId=key_id)
    assert _error(excinfo)[0] == "NotFoundException"


def test_imported_multi_region_key_needs_the_same_material_in_each_region(server: KeytrailServer) -> None:
    kms = server.client("alice", PRIMARY)
    key_id = kms.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    _import(kms, key_id, material)
    replica = kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)["ReplicaKeyMetadata"]
    assert replica["KeyState"] == "PendingImport"
    remote = server.client("alice", REPLICA)
    with pytest.raises(ClientError) as excinfo:
        _import(remote, key_id, os.urandom(32))
    assert _error(excinfo)[0] == "IncorrectKeyMaterialException"
    _import(remote, key_id, material)
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"byok everywhere")["CiphertextBlob"]
    assert remote.decrypt(CiphertextBlob=blob)["Plaintext"] == b"byok everywhere"


@pytest.mark.parametrize("first", [PRIMARY, REPLICA])
def test_imported_key_replicated_before_any_import_shares_its_material(server: KeytrailServer, first: str) -> None:
    # Replicated while PendingImport, then imported in either order: the copies accept only one
    # material, and the same material gets the same KeyMaterialId, so ciphertexts cross Regions.
    kms = server.client("alice", PRIMARY)
    key_id = kms.create_key(Origin="EXTERNAL", MultiRegion=True)["KeyMetadata"]["KeyId"]
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    remote = server.client("alice", REPLICA)
    material = os.urandom(32)
    leader, follower = (kms, remote) if first == PRIMARY else (remote, kms)
    material_id = _import(leader, key_id, material)["KeyMaterialId"]
    with pytest.raises(ClientError) as excinfo:
        _import(follower, key_id, os.urandom(32))
    assert _error(excinfo)[0] == "IncorrectKeyMaterialException"
    assert _import(follower, key_id, material)["KeyMaterialId"] == material_id
    blob = kms.encrypt(KeyId=key_id, Plaintext=b"byok")["CiphertextBlob"]
    assert remote.decrypt(CiphertextBlob=blob)["Plaintext"] == b"byok"


def test_key_policy_conditions_on_replica_region_are_enforced(server: KeytrailServer) -> None:
    kms = server.client("alice", PRIMARY)
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "Replicas only in eu-west-2",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "kms:ReplicateKey",
                "Resource": "*",
                "Condition": {"StringNotEquals": {"kms:ReplicaRegion": REPLICA}},
            },
        ],
    }
    key_id = kms.create_key(MultiRegion=True, Policy=json.dumps(policy))["KeyMetadata"]["KeyId"]
    with pytest.raises(ClientError) as excinfo:
        kms.replicate_key(KeyId=key_id, ReplicaRegion=THIRD)
    assert _error(excinfo)[0] == "AccessDeniedException"
    assert (
        kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    )


def _alice_only_when(condition: dict[str, Any]) -> str:
    """A key policy letting alice (and no one else) manage the key when `condition` holds."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/alice"}, "Action": "kms:*",
        "Resource": "*", "Condition": condition}]})


@pytest.mark.parametrize("condition", [
    {"StringEquals": {"kms:MultiRegionKeyType": "REPLICA"}},
    {"StringEquals": {"aws:RequestedRegion": REPLICA}},
    {"StringEquals": {"aws:ResourceTag/team": "blue"}},
])
def test_replica_policy_lockout_check_asks_about_a_put_key_policy_on_the_replica(
    server: KeytrailServer, condition: dict[str, Any],
) -> None:
    # ReplicateKey's Policy "must allow the calling principal to make a subsequent PutKeyPolicy
    # request on the KMS key" (API reference): on the replica, in its Region, with its tags. The
    # check asked about the primary's Region and no key, so such a policy was refused as a lockout.
    kms, key_id = _mrk(server)
    policy = _alice_only_when(condition)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Policy=policy, Tags=[{"TagKey": "team", "TagValue": "blue"}])
    remote = server.client("alice", REPLICA)
    assert remote.get_key_policy(KeyId=key_id)["Policy"] == policy
    remote.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy)  # the check was right: alice can


@pytest.mark.parametrize("condition", [
    {"StringEquals": {"kms:MultiRegionKeyType": "PRIMARY"}},
    {"StringEquals": {"aws:RequestedRegion": PRIMARY}},
    {"StringEquals": {"aws:ResourceTag/team": "red"}},
])
def test_replica_policy_that_locks_the_caller_out_of_the_replica_is_refused(
    server: KeytrailServer, condition: dict[str, Any],
) -> None:
    kms, key_id = _mrk(server)
    with pytest.raises(ClientError) as excinfo:
        kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Policy=_alice_only_when(condition),
                          Tags=[{"TagKey": "team", "TagValue": "blue"}])
    assert _error(excinfo) == ("MalformedPolicyDocumentException",
                               "The new key policy will not allow you to update the key policy in the future.")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["MultiRegionConfiguration"]["ReplicaKeys"] == []
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA, Policy=_alice_only_when(condition),
                      Tags=[{"TagKey": "team", "TagValue": "blue"}], BypassPolicyLockoutSafetyCheck=True)


@pytest.mark.parametrize("operation", ["enable_key_rotation", "disable_key_rotation", "rotate_key_on_demand"])
def test_rotation_is_managed_only_on_the_primary(server: KeytrailServer, operation: str) -> None:
    # EnableKeyRotation / DisableKeyRotation: "set the property on the primary key";
    # RotateKeyOnDemand: "invoke the on-demand rotation on the primary Region key".
    kms, key_id = _mrk(server)
    kms.replicate_key(KeyId=key_id, ReplicaRegion=REPLICA)
    _tick(server)
    remote = server.client("alice", REPLICA)
    material = remote.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"]
    with pytest.raises(ClientError) as excinfo:
        getattr(remote, operation)(KeyId=key_id)
    assert _error(excinfo) == (
        "UnsupportedOperationException",
        f"{_arn(REPLICA, key_id)} is not a multi-region primary key.",
    )
    assert remote.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is False
    assert remote.describe_key(KeyId=key_id)["KeyMetadata"]["CurrentKeyMaterialId"] == material
