"""Key lifecycle through boto3 against a live server (kms-anchors §3d items 1–4, 18–19)."""

from __future__ import annotations

import uuid

from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer


def test_create_key_defaults_are_exactly_awss(kms) -> None:
    meta = kms.create_key()["KeyMetadata"]
    assert set(meta) == {
        "AWSAccountId", "Arn", "CreationDate", "CurrentKeyMaterialId", "CustomerMasterKeySpec", "Description",
        "Enabled", "EncryptionAlgorithms", "KeyId", "KeyManager", "KeySpec", "KeyState", "KeyUsage",
        "MultiRegion", "Origin",
    }
    assert meta["Arn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{meta['KeyId']}"
    assert (meta["KeySpec"], meta["KeyUsage"], meta["KeyState"], meta["Origin"]) == (
        "SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "Enabled", "AWS_KMS")
    assert meta["Enabled"] is True and meta["MultiRegion"] is False
    assert meta["EncryptionAlgorithms"] == ["SYMMETRIC_DEFAULT"]
    assert len(meta["CurrentKeyMaterialId"]) == 64


def test_multi_region_key_ids_are_mrk_and_32_hex(kms) -> None:
    meta = kms.create_key(MultiRegion=True)["KeyMetadata"]
    assert meta["KeyId"].startswith("mrk-") and len(meta["KeyId"]) == 36
    config = meta["MultiRegionConfiguration"]
    assert config["MultiRegionKeyType"] == "PRIMARY"
    assert config["PrimaryKey"] == {"Arn": meta["Arn"], "Region": "us-east-1"}
    assert config["ReplicaKeys"] == []


def test_custom_key_store_members_without_a_custom_key_store_origin_are_refused(kms) -> None:
    # Dropped, they left a caller who forgot Origin with a key in keytrail's own store, unawares.
    store = "cks-1234567890abcdef0"
    refusals = [
        (dict(XksKeyId="abc"), "XksKeyId is valid only when Origin is EXTERNAL_KEY_STORE, not AWS_KMS."),
        (dict(CustomKeyStoreId=store),
         "CustomKeyStoreId is valid only when Origin is AWS_CLOUDHSM or EXTERNAL_KEY_STORE, not AWS_KMS."),
        (dict(CustomKeyStoreId=store, Origin="EXTERNAL"),
         "CustomKeyStoreId is valid only when Origin is AWS_CLOUDHSM or EXTERNAL_KEY_STORE, not EXTERNAL."),
    ]
    def key_count() -> int:
        return sum(len(page["Keys"]) for page in kms.get_paginator("list_keys").paginate())

    before = key_count()
    for params, message in refusals:
        assert aws_error(kms.create_key, **params) == ("ValidationException", message, 400)
    assert key_count() == before


def test_describe_unknown_key_names_its_arn(kms) -> None:
    key_id = str(uuid.uuid4())
    code, message, status = aws_error(kms.describe_key, KeyId=key_id)
    assert (code, status) == ("NotFoundException", 400)
    assert message == f"Key 'arn:aws:kms:us-east-1:{ACCOUNT}:key/{key_id}' does not exist"


def test_describe_malformed_ids_are_invalid(kms) -> None:
    for bad in ("fake-key-id", "0" * 32, "mrk-fake-key-id"):
        code, message, _ = aws_error(kms.describe_key, KeyId=bad)
        assert (code, message) == ("NotFoundException", f"Invalid keyId '{bad}'")
    mrk = "mrk-" + "a" * 32
    code, message, _ = aws_error(kms.describe_key, KeyId=mrk)
    assert message == f"Key 'arn:aws:kms:us-east-1:{ACCOUNT}:key/{mrk}' does not exist"


def test_keys_are_isolated_by_region(server: KeytrailServer) -> None:
    east, west = server.client(region="us-east-1"), server.client(region="eu-west-1")
    meta = east.create_key()["KeyMetadata"]
    code, message, _ = aws_error(west.describe_key, KeyId=meta["KeyId"])
    assert code == "NotFoundException" and message.endswith("does not exist") and "eu-west-1" in message
    code, message, _ = aws_error(west.describe_key, KeyId=meta["Arn"])
    assert (code, message) == ("NotFoundException", "Invalid arn us-east-1")
    assert meta["KeyId"] not in [k["KeyId"] for k in west.list_keys()["Keys"]]


def test_list_keys_pages_with_limit_and_marker(server: KeytrailServer) -> None:
    kms = server.client(region="ap-south-1")
    created = {kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(3)}
    seen, marker, pages = [], None, 0
    while True:
        page = kms.list_keys(Limit=1, **({"Marker": marker} if marker else {}))
        seen += [k["KeyId"] for k in page["Keys"]]
        pages += 1
        if not page["Truncated"]:
            assert "NextMarker" not in page
            break
        marker = page["NextMarker"]
    assert created <= set(seen) and len(seen) == len(set(seen)) and pages == len(seen)
    code, _, _ = aws_error(kms.list_keys, Marker="bm90LWEta2V5")
    assert code == "InvalidMarkerException"


def test_a_marker_is_good_for_its_own_listing_only(server: KeytrailServer) -> None:
    # Positions of different listings share a shape (a date and an id; a name): a marker handed
    # to another listing was taken as a position in it, and answered an empty or short last page
    # with Truncated false. AWS's markers are opaque, each the way on through its own listing.
    kms, other_region = server.client(region="ap-northeast-3"), server.client(region="ca-west-1")
    first, second = (kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2))
    other_region.create_key()
    for key_id in (first, second):
        for name in ("a", "b"):
            kms.create_grant(KeyId=key_id, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/bob",
                             Operations=["Decrypt"], Name=name)
            kms.create_alias(AliasName=f"alias/{name}-{key_id}", TargetKeyId=key_id)
        kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "a", "TagValue": "1"}, {"TagKey": "b", "TagValue": "2"}])
    keys_marker = kms.list_keys(Limit=1)["NextMarker"]
    grants_marker = kms.list_grants(KeyId=first, Limit=1)["NextMarker"]
    tags_marker = kms.list_resource_tags(KeyId=first, Limit=1)["NextMarker"]
    aliases_marker = kms.list_aliases(KeyId=first, Limit=1)["NextMarker"]
    foreign = [
        (kms.list_grants, {"KeyId": second, "Marker": grants_marker}),
        (kms.list_grants, {"KeyId": first, "Marker": keys_marker}),
        (kms.list_keys, {"Marker": grants_marker}),
        (other_region.list_keys, {"Marker": keys_marker}),
        (kms.list_aliases, {"Marker": tags_marker}),
        (kms.list_aliases, {"KeyId": second, "Marker": aliases_marker}),
        (kms.list_resource_tags, {"KeyId": second, "Marker": tags_marker}),
        (kms.list_key_rotations, {"KeyId": first, "Marker": grants_marker}),
    ]
    for call, params in foreign:
        assert aws_error(call, **params)[:2] == ("InvalidMarkerException", "The marker is not valid."), params
    rest = kms.list_grants(KeyId=first, Marker=grants_marker)
    assert [g["Name"] for g in rest["Grants"]] == ["b"] and rest["Truncated"] is False


def test_disabled_key_refuses_crypto_until_enabled(kms) -> None:
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    kms.disable_key(KeyId=arn)
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "Disabled"
    code, message, _ = aws_error(kms.generate_data_key, KeyId=arn, KeySpec="AES_256")
    assert (code, message) == ("DisabledException", f"{arn} is disabled.")
    kms.enable_key(KeyId=arn)
    assert kms.generate_data_key(KeyId=arn, KeySpec="AES_256")["KeyId"] == arn


def test_schedule_and_cancel_deletion(kms) -> None:
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    scheduled = kms.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
    assert scheduled["KeyId"] == arn and scheduled["KeyState"] == "PendingDeletion"
    assert scheduled["PendingWindowInDays"] == 7
    meta = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["Enabled"] is False and "DeletionDate" in meta
    code, message, _ = aws_error(kms.encrypt, KeyId=arn, Plaintext=b"x")
    assert (code, message) == ("KMSInvalidStateException", f"{arn} is pending deletion.")
    code, _, _ = aws_error(kms.schedule_key_deletion, KeyId=arn)
    assert code == "KMSInvalidStateException"
    assert kms.cancel_key_deletion(KeyId=arn)["KeyId"] == arn
    meta = kms.describe_key(KeyId=arn)["KeyMetadata"]
    assert meta["KeyState"] == "Disabled" and "DeletionDate" not in meta


def test_deletion_window_outside_7_to_30_is_refused(kms) -> None:
    arn = kms.create_key()["KeyMetadata"]["Arn"]
    code, _, _ = aws_error(kms.schedule_key_deletion, KeyId=arn, PendingWindowInDays=6)
    assert code == "ValidationException"
    assert kms.describe_key(KeyId=arn)["KeyMetadata"]["KeyState"] == "Enabled"


def test_update_key_description(kms) -> None:
    key_id = kms.create_key(Description="before")["KeyMetadata"]["KeyId"]
    kms.update_key_description(KeyId=key_id, Description="after")
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Description"] == "after"


def test_dry_run_answers_dry_run_operation(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    code, message, _ = aws_error(kms.encrypt, KeyId=key_id, Plaintext=b"x", DryRun=True)
    assert (code, message) == ("DryRunOperationException",
                               "The request would have succeeded, but the DryRun option is set.")


def test_symmetric_key_with_bad_usage_or_missing_usage(server: KeytrailServer) -> None:
    kms = server.client(parameter_validation=False)
    code, message, _ = aws_error(kms.create_key, KeySpec="HMAC_256")
    assert (code, message) == ("ValidationException", "You must specify a KeyUsage value for all KMS keys "
                               "except for symmetric encryption keys.")
    code, message, _ = aws_error(kms.create_key, KeySpec="NOPE")
    assert code == "ValidationException"
    assert message.startswith("1 validation error detected: Value 'NOPE' at 'keySpec' failed to satisfy "
                              "constraint: Member must satisfy enum value set: [")


def test_list_keys_pages_by_100_unless_limit_is_given(server: KeytrailServer) -> None:
    # ListKeys, Limit: "If you do not include a value, it defaults to 100."
    kms = server.client(region="sa-east-1")
    for _ in range(101):
        kms.create_key()
    first = kms.list_keys()
    assert len(first["Keys"]) == 100 and first["Truncated"] is True
    rest = kms.list_keys(Marker=first["NextMarker"])
    assert len(rest["Keys"]) == 1 and rest["Truncated"] is False


def test_limit_of_every_list_operation_is_the_models_1_to_1000(server: KeytrailServer) -> None:
    # botocore's LimitType (1..1000) is the only bound AWS publishes as a constraint; the API
    # reference's narrower ranges (ListAliases, ListGrants, ListRetirableGrants 1..100,
    # ListResourceTags 1..50) come with no documented error, so 1000 is accepted everywhere.
    kms = server.client(parameter_validation=False)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    calls = {"ListKeys": (kms.list_keys, {}), "ListAliases": (kms.list_aliases, {}),
             "ListGrants": (kms.list_grants, {"KeyId": key_id}),
             "ListRetirableGrants": (kms.list_retirable_grants, {"RetiringPrincipal": f"arn:aws:iam::{ACCOUNT}:root"}),
             "ListKeyPolicies": (kms.list_key_policies, {"KeyId": key_id}),
             "ListResourceTags": (kms.list_resource_tags, {"KeyId": key_id}),
             "ListKeyRotations": (kms.list_key_rotations, {"KeyId": key_id})}
    for name, (call, params) in calls.items():
        for limit, bound in ((0, "greater than or equal to 1"), (1001, "less than or equal to 1000")):
            code, message, status = aws_error(call, Limit=limit, **params)
            assert (code, status, message) == ("ValidationException", 400, (
                f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy constraint: "
                f"Member must have value {bound}")), name
        assert call(Limit=1000, **params)["ResponseMetadata"]["HTTPStatusCode"] == 200, name
