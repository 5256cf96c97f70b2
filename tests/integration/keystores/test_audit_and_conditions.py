"""What the audit trail records and which condition keys reach the authorizer, for imports,
multi-Region keys, custom key stores and the key lifecycle (rotation, deletion): the service run
in-process over a real SQLite store (and SoftHSM2 for the custom key store)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from keytrail.audit.records import to_cloudtrail
from keytrail.clock import ManualClock
from keytrail.kms.authz import AccessDecision, AccessRequest, Verdict
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.wrapping import wrap
from tests.support.softhsm import SoftHsm

ACCOUNT = "111122223333"


class Recorder:
    """Audit sink and authorizer at once: keeps every record and every access request."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []
        self.requests: list[AccessRequest] = []

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)

    def authorize(self, request: AccessRequest) -> AccessDecision:
        self.requests.append(request)
        return AccessDecision(Verdict.ALLOW)

    def conditions(self, action: str) -> dict[str, Any]:
        return dict(next(r for r in reversed(self.requests) if r.action == action).conditions)

    def events(self, name: str) -> list[CallRecord]:
        return [r for r in self.records if r.event_name == name]


class Caller:
    def __init__(self, svc: KmsService) -> None:
        self.svc = svc

    async def __call__(self, operation: str, region: str = "us-east-1", **params: Any) -> dict[str, Any]:
        principal = Principal.account_root(ACCOUNT, "AKIAROOT000000000001")
        context = CallContext(principal, region, request_id=os.urandom(8).hex())
        return await self.svc.execute(operation, context, params)


KeyStoreMaker = Callable[[str], Awaitable[tuple[str, str]]]


@pytest.fixture
def new_key_store(service: tuple[Caller, Recorder, ManualClock], hsm: SoftHsm, clusters: Iterator[str],
                  trust_anchor: str) -> KeyStoreMaker:
    """Makes an AWS CloudHSM key store named so over a cluster of its own (SoftHSM), not yet
    connected: (its id, the cluster)."""
    call = service[0]

    async def make(name: str) -> tuple[str, str]:
        cluster = next(clusters)
        created = await call("CreateCustomKeyStore", CustomKeyStoreName=name, CloudHsmClusterId=cluster,
                             TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN)
        return str(created["CustomKeyStoreId"]), cluster

    return make


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Caller, Recorder, ManualClock]]:
    recorder, clock = Recorder(), ManualClock()
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    svc = KmsService(ServiceDeps(store=store, clock=clock, audit=recorder, authorizer=recorder))
    yield Caller(svc), recorder, clock
    await store.close()


async def test_import_conditions_audit_and_expiry_event(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    call, recorder, clock = service
    key_id = (await call("CreateKey", Origin="EXTERNAL"))["KeyMetadata"]["KeyId"]
    params = await call(
        "GetParametersForImport",
        KeyId=key_id,
        WrappingAlgorithm="RSA_AES_KEY_WRAP_SHA_256",
        WrappingKeySpec="RSA_3072",
    )
    conditions = recorder.conditions("kms:GetParametersForImport")
    assert conditions["kms:WrappingAlgorithm"] == "RSA_AES_KEY_WRAP_SHA_256"
    assert conditions["kms:WrappingKeySpec"] == "RSA_3072"
    valid_to = clock.now() + timedelta(hours=1)
    imported = await call(
        "ImportKeyMaterial",
        KeyId=key_id,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params["PublicKey"], "RSA_AES_KEY_WRAP_SHA_256", os.urandom(32)),
        ExpirationModel="KEY_MATERIAL_EXPIRES",
        ValidTo=valid_to,
    )
    conditions = recorder.conditions("kms:ImportKeyMaterial")
    assert conditions["kms:ExpirationModel"] == "KEY_MATERIAL_EXPIRES"
    assert conditions["kms:ValidTo"] == valid_to.timestamp()
    event = recorder.events("ImportKeyMaterial")[-1]
    assert event.additional_event_data == {"keyMaterialId": imported["KeyMaterialId"]}
    # ct-importkeymaterial: responseElements names the key (ARN) and the material.
    assert event.response_elements == {"keyId": imported["KeyId"], "keyMaterialId": imported["KeyMaterialId"]}
    assert "encryptedKeyMaterial" not in (event.request_parameters or {})
    assert "importToken" not in (event.request_parameters or {})
    clock.advance(5 * 3600)
    await call.svc.run_due()
    expired = recorder.events("DeleteExpiredKeyMaterial")
    assert [e.event_time for e in expired] == [valid_to]  # at ValidTo, not at the tick
    # ct-deleteexpiredkeymaterial.html: serviceEventDetails names the key (its id) and the material.
    assert len(expired) == 1 and expired[0].service_event_details == {
        "keyId": key_id, "keyMaterialId": imported["KeyMaterialId"]
    }


async def test_multi_region_conditions_and_synchronize_events(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    call, recorder, _ = service
    key_id = (await call("CreateKey", MultiRegion=True))["KeyMetadata"]["KeyId"]
    await call("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
    conditions = recorder.conditions("kms:ReplicateKey")
    assert conditions["kms:ReplicaRegion"] == "eu-west-1"
    assert (conditions["kms:MultiRegion"], conditions["kms:MultiRegionKeyType"]) == (True, "PRIMARY")
    replicate = recorder.events("ReplicateKey")[-1]
    # ct-replicate-key: resources name the primary only; responseElements the replica and its policy.
    assert replicate.resources == (f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}",)
    response = replicate.response_elements or {}
    assert response["replicaKeyMetadata"]["arn"] == f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{key_id}"
    assert json.loads(response["replicaPolicy"])["Statement"][0]["Sid"] == "Enable IAM User Permissions"
    # "A ReplicateKey request results in a ReplicateKey operation and a CreateKey operation": KMS
    # writes the CreateKey in the replica's Region, for the caller, the replica named there.
    created = [to_cloudtrail(e) for e in recorder.events("CreateKey") if e.region == "eu-west-1"]
    called = to_cloudtrail(replicate)
    assert len(created) == 1
    assert created[0]["userIdentity"] == {**called["userIdentity"], "invokedBy": "kms.amazonaws.com"}
    assert [r["ARN"] for r in created[0]["resources"]] == [response["replicaKeyMetadata"]["arn"]]
    assert created[0]["responseElements"] == {"keyMetadata": response["replicaKeyMetadata"]}
    assert created[0]["requestParameters"] == {
        "description": "", "origin": "AWS_KMS", "bypassPolicyLockoutSafetyCheck": False,
        "customerMasterKeySpec": "SYMMETRIC_DEFAULT", "keySpec": "SYMMETRIC_DEFAULT", "keyUsage": "ENCRYPT_DECRYPT",
        "multiRegion": True,
    }
    assert created[0]["requestID"] == called["requestID"] and created[0]["eventID"] != called["eventID"]
    assert (created[0]["sourceIPAddress"], created[0]["userAgent"]) == ("kms.amazonaws.com", "kms.amazonaws.com")
    assert (created[0]["readOnly"], created[0]["recipientAccountId"]) == (False, ACCOUNT)
    await call.svc.run_due()  # the replica leaves Creating
    synced = {(r.region, r.resources) for r in recorder.events("SynchronizeMultiRegionKey")}
    assert ("eu-west-1", (f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{key_id}",)) in synced
    # ct-synchronize-multi-region-key: entries since December 2022 carry the copy's ARN.
    assert all(r.response_elements == {"keyId": r.resources[0]} for r in recorder.events("SynchronizeMultiRegionKey"))
    # ...and are calls KMS makes itself: AwsApiCall with a requestID, its internal identity, no details.
    logged = to_cloudtrail(recorder.events("SynchronizeMultiRegionKey")[-1])
    assert (logged["eventType"], logged["userIdentity"]) == ("AwsApiCall", {"accountId": ACCOUNT,
                                                                           "invokedBy": "AWS Internal"})
    assert logged["requestID"] and logged["requestID"] != logged["eventID"]
    assert (logged["requestParameters"], logged["readOnly"], logged["sourceIPAddress"]) == (None, False, "AWS Internal")
    assert "serviceEventDetails" not in logged
    await call("UpdatePrimaryRegion", KeyId=key_id, PrimaryRegion="eu-west-1")
    assert recorder.conditions("kms:UpdatePrimaryRegion")["kms:PrimaryRegion"] == "eu-west-1"
    # ct-update-primary-region: two entries, one in each Region, for the one request.
    entries = {e.region: to_cloudtrail(e) for e in recorder.events("UpdatePrimaryRegion")}
    old_primary, new_primary = (f"arn:aws:kms:{r}:{ACCOUNT}:key/{key_id}" for r in ("us-east-1", "eu-west-1"))
    called, echoed = entries["us-east-1"], entries["eu-west-1"]
    assert [r["ARN"] for r in called["resources"]] == [old_primary]
    assert called["responseElements"] == {"keyId": old_primary}
    assert called["requestParameters"] == {"keyId": key_id, "primaryRegion": "eu-west-1"}
    assert "invokedBy" not in called["userIdentity"]
    # The new primary's entry: the caller invoked by KMS, the key by its ARN there, no resources.
    assert echoed["userIdentity"] == {**called["userIdentity"], "invokedBy": "kms.amazonaws.com"}
    assert echoed["requestParameters"] == {"keyId": new_primary, "primaryRegion": "eu-west-1"}
    assert (echoed["responseElements"], "resources" in echoed) == ({"keyId": new_primary}, False)
    assert echoed["requestID"] == called["requestID"] and echoed["eventID"] != called["eventID"]
    # KMS makes that request, for the caller: CloudTrail names the service as its origin.
    assert (echoed["eventType"], echoed["sourceIPAddress"], echoed["userAgent"]) == (
        "AwsApiCall", "kms.amazonaws.com", "kms.amazonaws.com")
    assert called["sourceIPAddress"] != "kms.amazonaws.com"
    # KMS's entry for the caller comes before its own SynchronizeMultiRegionKey calls (as
    # ReplicateKey's CreateKey does), and the call's own record after what its write owed.
    moved = [(r.event_name, r.region) for r in recorder.records[-4:]]
    assert moved == [("UpdatePrimaryRegion", "eu-west-1"), ("SynchronizeMultiRegionKey", "us-east-1"),
                     ("SynchronizeMultiRegionKey", "eu-west-1"), ("UpdatePrimaryRegion", "us-east-1")], moved


async def test_custom_key_store_calls_name_store_and_backing_key(
    service: tuple[Caller, Recorder, ManualClock], new_key_store: KeyStoreMaker
) -> None:
    call, recorder, _ = service
    store_id, cluster = await new_key_store("audit")
    assert "keyStorePassword" not in (recorder.events("CreateCustomKeyStore")[-1].request_parameters or {})
    await call("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    key_id = (await call("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    created = recorder.events("CreateKey")[-1].additional_event_data or {}
    blob = (await call("Encrypt", KeyId=key_id, Plaintext=b"x"))["CiphertextBlob"]
    await call("Decrypt", CiphertextBlob=blob)  # no KeyId: the key comes from the blob
    assert (recorder.events("Decrypt")[-1].additional_event_data or {})["customKeyStoreId"] == store_id
    data = recorder.events("Encrypt")[-1].additional_event_data or {}
    assert data["customKeyStoreId"] == store_id == created["customKeyStoreId"]
    assert data["clusterId"] == cluster
    assert data["backingKeyId"] == created["backingKeyId"]
    assert json.loads(data["backingKeys"]) == [{"backingKeyId": created["backingKeyId"]}]
    await call("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)  # logs out of the token


async def test_delete_key_service_event_names_the_key_by_its_id(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    # ct-delete-key.html: the AwsServiceEvent of the end of the waiting period, with KMS-internal
    # identity and no requestID; where AWS logs serviceEventDetails, keyId is the key id, not the ARN.
    call, recorder, clock = service
    key_id = (await call("CreateKey"))["KeyMetadata"]["KeyId"]
    scheduled = await call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    arn = scheduled["KeyId"]
    clock.advance(30 * 86400)  # the key is deleted when its waiting period ends, not at the tick
    await call.svc.run_due()
    [deleted] = recorder.events("DeleteKey")
    assert deleted.event_time == scheduled["DeletionDate"]
    record = to_cloudtrail(deleted)
    assert record["serviceEventDetails"] == {"keyId": key_id}
    assert record["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
    assert (record["eventType"], record["readOnly"], record["managementEvent"]) == ("AwsServiceEvent", False, True)
    assert record["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": arn}]
    assert "requestID" not in record and record["requestParameters"] is None
    # ct-delete-key: entries since December 2022 carry the key ARN in responseElements.keyId.
    assert record["responseElements"] == {"keyId": arn}


async def test_rotate_key_on_demand_logs_its_key_in_response_elements(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    # ct-rotatekeyondemand.html: the AwsApiCall logs requestParameters and responseElements
    # {keyId}; the rotation itself is the RotateKey service event, rotationType ON_DEMAND.
    call, recorder, _ = service
    key_id = (await call("CreateKey"))["KeyMetadata"]["KeyId"]
    arn = (await call("RotateKeyOnDemand", KeyId=key_id))["KeyId"]
    [api_call] = recorder.events("RotateKeyOnDemand")
    record = to_cloudtrail(api_call)
    assert (record["eventType"], record["readOnly"]) == ("AwsApiCall", False)
    assert record["requestParameters"] == {"keyId": key_id}
    assert record["responseElements"] == {"keyId": arn}
    [rotation] = recorder.events("RotateKey")
    assert rotation.service_event_details is not None
    assert rotation.service_event_details["rotationType"] == "ON_DEMAND"


async def test_rotate_key_service_event_names_the_key_by_its_id(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    # ct-rotatekey (eventVersion 1.11): serviceEventDetails {rotationType, keyOrigin,
    # previousKeyMaterialId, currentKeyMaterialId, keyId}, keyId the key id (so in every older
    # example too); the record named the materials but not the key.
    call, recorder, _ = service
    key_id = (await call("CreateKey"))["KeyMetadata"]["KeyId"]
    await call("RotateKeyOnDemand", KeyId=key_id)
    [rotation] = recorder.events("RotateKey")
    details = to_cloudtrail(rotation)["serviceEventDetails"]
    assert list(details) == ["rotationType", "keyOrigin", "previousKeyMaterialId", "currentKeyMaterialId", "keyId"]
    assert (details["rotationType"], details["keyOrigin"], details["keyId"]) == ("ON_DEMAND", "AWS_KMS", key_id)
    assert details["previousKeyMaterialId"] != details["currentKeyMaterialId"]


async def test_delete_imported_key_material_logs_key_and_material(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    # ct-deleteimportedkeymaterial: responseElements is the response, {keyId (ARN), keyMaterialId}.
    call, recorder, _ = service
    key_id = (await call("CreateKey", Origin="EXTERNAL"))["KeyMetadata"]["KeyId"]
    params = await call(
        "GetParametersForImport", KeyId=key_id, WrappingAlgorithm="RSAES_OAEP_SHA_256", WrappingKeySpec="RSA_2048"
    )
    imported = await call(
        "ImportKeyMaterial",
        KeyId=key_id,
        ImportToken=params["ImportToken"],
        EncryptedKeyMaterial=wrap(params["PublicKey"], "RSAES_OAEP_SHA_256", os.urandom(32)),
        ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE",
    )
    await call("DeleteImportedKeyMaterial", KeyId=key_id)
    assert recorder.events("DeleteImportedKeyMaterial")[-1].response_elements == {
        "keyId": imported["KeyId"], "keyMaterialId": imported["KeyMaterialId"]
    }


async def test_schedule_key_deletion_of_a_primary_with_replicas_omits_deletion_date(
    service: tuple[Caller, Recorder, ManualClock],
) -> None:
    # ct-schedule-key-deletion: for a multi-Region primary with replicas, responseElements holds
    # keyId, keyState PendingReplicaDeletion and pendingWindowInDays; the deletionDate field is omitted.
    call, recorder, _ = service
    key_id = (await call("CreateKey", MultiRegion=True))["KeyMetadata"]["KeyId"]
    await call("ReplicateKey", KeyId=key_id, ReplicaRegion="eu-west-1")
    await call.svc.run_due()  # the replica leaves Creating
    await call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=30)
    record = to_cloudtrail(recorder.events("ScheduleKeyDeletion")[-1])
    assert record["responseElements"] == {
        "keyId": f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}", "keyState": "PendingReplicaDeletion",
        "pendingWindowInDays": 30,
    }


async def test_custom_key_store_calls_name_the_store_in_additional_event_data(
    service: tuple[Caller, Recorder, ManualClock], new_key_store: KeyStoreMaker
) -> None:
    # ct-connect-keystore, ct-disconnect-keystore, ct-update-keystore, ct-delete-keystore: the request
    # gives the store's id only, and additionalEventData names the store and its cluster.
    call, recorder, _ = service
    store_id, cluster = await new_key_store("ExampleKeyStore")
    await call("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call("DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
    await call("UpdateCustomKeyStore", CustomKeyStoreId=store_id, NewCustomKeyStoreName="Renamed")
    await call("DeleteCustomKeyStore", CustomKeyStoreId=store_id)
    # ct-create-keystore: the request logged as {customKeyStoreName, clusterId}; no trust anchor, no password.
    created = to_cloudtrail(recorder.events("CreateCustomKeyStore")[-1])
    assert created["requestParameters"] == {"customKeyStoreName": "ExampleKeyStore", "clusterId": cluster}
    named = {"customKeyStoreName": "ExampleKeyStore", "clusterId": cluster}
    for name, data in [("ConnectCustomKeyStore", named), ("DisconnectCustomKeyStore", named),
                       ("UpdateCustomKeyStore", {**named, "customKeyStoreName": "Renamed"}),
                       ("DeleteCustomKeyStore", {**named, "customKeyStoreName": "Renamed"})]:
        record = to_cloudtrail(recorder.events(name)[-1])
        assert (record["requestParameters"]["customKeyStoreId"], record["additionalEventData"]) == (store_id, data)
        assert (record["responseElements"], "resources" in record) == (None, False)


async def test_deleting_a_key_in_a_custom_key_store_names_store_and_backing_key(
    service: tuple[Caller, Recorder, ManualClock], new_key_store: KeyStoreMaker
) -> None:
    # ct-schedule-key-deletion (a key in an AWS CloudHSM key store): additionalEventData names the
    # store, its cluster and the key's backing keys.
    call, recorder, clock = service
    store_id, cluster = await new_key_store("audit")
    await call("ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    key_id = (await call("CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]["KeyId"]
    backing = (recorder.events("CreateKey")[-1].additional_event_data or {})["backingKeyId"]
    await call("ScheduleKeyDeletion", KeyId=key_id, PendingWindowInDays=7)
    named = {"customKeyStoreId": store_id, "clusterId": cluster, "backingKeys": f'[{{"backingKeyId":"{backing}"}}]'}
    assert to_cloudtrail(recorder.events("ScheduleKeyDeletion")[-1])["additionalEventData"] == named
    # ct-delete-key: so does the DeleteKey service event at the end of the waiting period (AWS adds
    # backingKeysDeletionStatus, which keytrail cannot know yet: it deletes the backing key after the record).
    clock.advance(8 * 86400)
    await call.svc.run_due()
    assert to_cloudtrail(recorder.events("DeleteKey")[-1])["additionalEventData"] == named
