"""Aliases, tags and key policies through boto3 (kms-anchors §3d items 8–9, 26, 33)."""

from __future__ import annotations

import json
import uuid

from keytrail.kms.managed_keys import PREDEFINED
from tests.support.errors import aws_error
from tests.support.server import ACCOUNT, KeytrailServer


def _name() -> str:
    return f"alias/t-{uuid.uuid4().hex[:12]}"


def test_alias_lifecycle(kms) -> None:
    first, second = (kms.create_key()["KeyMetadata"] for _ in range(2))
    name = _name()
    kms.create_alias(AliasName=name, TargetKeyId=first["KeyId"])
    entry = next(a for a in kms.list_aliases(KeyId=first["KeyId"])["Aliases"] if a["AliasName"] == name)
    assert entry["AliasArn"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:{name}"
    assert entry["TargetKeyId"] == first["KeyId"] and "LastUpdatedDate" in entry
    kms.update_alias(AliasName=name, TargetKeyId=second["KeyId"])
    assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == second["KeyId"]
    kms.delete_alias(AliasName=name)
    code, message, _ = aws_error(kms.describe_key, KeyId=name)
    assert (code, message) == ("NotFoundException", f"Alias arn:aws:kms:us-east-1:{ACCOUNT}:{name} is not found.")


def test_alias_rules(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    code, message, _ = aws_error(kms.create_alias, AliasName="no-prefix", TargetKeyId=key_id)
    assert code == "ValidationException" and message.startswith('Alias must start with the prefix "alias/".')
    assert aws_error(kms.create_alias, AliasName="alias/aws/mine", TargetKeyId=key_id)[0] == \
        "InvalidAliasNameException"
    name = _name()
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    code, message, _ = aws_error(kms.create_alias, AliasName=name, TargetKeyId=key_id)
    assert (code, message) == ("AlreadyExistsException",
                               f"An alias with the name arn:aws:kms:us-east-1:{ACCOUNT}:{name} already exists")
    assert aws_error(kms.enable_key_rotation, KeyId=name)[:2] == (
        "InvalidArnException", "Key Aliases are not supported for this operation.")


def test_operations_on_a_key_id_or_key_arn_only_refuse_an_alias_with_invalid_arn(kms) -> None:
    # AWS: "InvalidArnException ... Key Aliases are not supported for this operation." (GetKeyPolicy
    # and ListResourceTags as their callers quote it, CreateGrant in boto/boto#3202), whether or not
    # the alias exists; every such operation lists InvalidArnException in the model.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    name = _name()
    kms.create_alias(AliasName=name, TargetKeyId=key_id)
    grant_id = kms.create_grant(KeyId=key_id, GranteePrincipal=f"arn:aws:iam::{ACCOUNT}:user/bob",
                                Operations=["Decrypt"])["GrantId"]
    calls = [
        (kms.get_key_policy, {"PolicyName": "default"}), (kms.list_key_policies, {}),
        (kms.put_key_policy, {"PolicyName": "default", "Policy": kms.get_key_policy(KeyId=key_id)["Policy"]}),
        (kms.list_resource_tags, {}), (kms.tag_resource, {"Tags": [{"TagKey": "a", "TagValue": "b"}]}),
        (kms.untag_resource, {"TagKeys": ["a"]}), (kms.list_grants, {}), (kms.list_aliases, {}),
        (kms.revoke_grant, {"GrantId": grant_id}), (kms.retire_grant, {"GrantId": grant_id}),
        (kms.disable_key, {}), (kms.get_key_rotation_status, {}),
    ]
    for alias in (name, f"arn:aws:kms:us-east-1:{ACCOUNT}:{name}", "alias/never-made"):
        for call, params in calls:
            assert aws_error(call, KeyId=alias, **params) == (
                "InvalidArnException", "Key Aliases are not supported for this operation.", 400), call
    assert kms.describe_key(KeyId=key_id)["KeyMetadata"]["Enabled"]
    assert [g["GrantId"] for g in kms.list_grants(KeyId=key_id)["Grants"]] == [grant_id]
    # CreateAlias and UpdateAlias list no InvalidArnException: an alias as TargetKeyId names no key.
    assert aws_error(kms.create_alias, AliasName=_name(), TargetKeyId=name)[:2] == (
        "NotFoundException", f"Invalid keyId '{name}'")


def test_alias_slash_alone_is_refused_and_names_no_alias(kms) -> None:
    # "This value must begin with alias/ followed by a name" (CreateAlias, API reference).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    code, message, status = aws_error(kms.create_alias, AliasName="alias/", TargetKeyId=key_id)
    assert (code, message, status) == ("InvalidAliasNameException",
                                       'Alias must include a name after the prefix "alias/".', 400)
    missing = ("NotFoundException", f"Alias arn:aws:kms:us-east-1:{ACCOUNT}:alias/ is not found.")
    assert aws_error(kms.encrypt, KeyId="alias/", Plaintext=b"x")[:2] == missing
    assert aws_error(kms.update_alias, AliasName="alias/", TargetKeyId=key_id)[:2] == missing
    assert aws_error(kms.delete_alias, AliasName="alias/")[:2] == missing


def test_alias_name_with_a_colon_is_refused(kms) -> None:
    # The model's pattern takes ':' (alias ARNs share it); AWS answers CreateAlias
    # "alias/Service:Test" with this ValidationException (hashicorp/terraform-provider-aws#12891).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    name = f"alias/t-{uuid.uuid4().hex[:8]}:x"
    code, message, status = aws_error(kms.create_alias, AliasName=name, TargetKeyId=key_id)
    assert (code, message, status) == ("ValidationException", f"{name} contains invalid characters for an alias", 400)
    assert kms.list_aliases(KeyId=key_id)["Aliases"] == []
    assert aws_error(kms.describe_key, KeyId=name)[0] == "NotFoundException"

def test_tags_round_trip_and_rules(server: KeytrailServer) -> None:
    kms = server.client(parameter_validation=False)
    key_id = kms.create_key(Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]["KeyId"]
    kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "env", "TagValue": "prod"}, {"TagKey": "team", "TagValue": "b"}])
    tags = {t["TagKey"]: t["TagValue"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]}
    assert tags == {"team": "b", "env": "prod"}
    kms.untag_resource(KeyId=key_id, TagKeys=["env"])
    assert [t["TagKey"] for t in kms.list_resource_tags(KeyId=key_id)["Tags"]] == ["team"]
    duplicate = [{"TagKey": "a", "TagValue": "1"}, {"TagKey": "a", "TagValue": "2"}]
    assert aws_error(kms.tag_resource, KeyId=key_id, Tags=duplicate)[:2] == ("TagException", "Duplicate tag keys")
    many = [{"TagKey": f"k{i}", "TagValue": "v"} for i in range(51)]
    assert aws_error(kms.tag_resource, KeyId=key_id, Tags=many)[:2] == ("TagException", "Too many tags")
    for prefix in ("aws:", "AWS:", "Aws:"):  # reserved in any case
        reserved = [{"TagKey": f"{prefix}x", "TagValue": "v"}]
        assert aws_error(kms.tag_resource, KeyId=key_id, Tags=reserved)[:2] == (
            "TagException", "Tags beginning with aws: are reserved")
    code, message, _ = aws_error(kms.tag_resource, KeyId=key_id, Tags=[{"TagKey": "k" * 129, "TagValue": "v"}])
    assert code == "ValidationException" and "at 'tags.1.member.tagKey'" in message


def test_tags_of_128_non_latin_letters_page_one_by_one(kms) -> None:
    # MarkerType is 1..1024 characters: each page's NextMarker must be one the next call may send
    # (it held the tag key as \uXXXX escapes, 1,032 characters, and the second page was refused).
    keys = sorted(letter * 128 for letter in "名値鍵")
    key_id = kms.create_key(Tags=[{"TagKey": k, "TagValue": "v"} for k in keys])["KeyMetadata"]["KeyId"]
    pages = list(kms.get_paginator("list_resource_tags").paginate(KeyId=key_id, PaginationConfig={"PageSize": 1}))
    assert [t["TagKey"] for p in pages for t in p["Tags"]] == keys
    assert all(len(p.get("NextMarker", "")) <= 1024 for p in pages)



def test_tags_of_128_control_characters_or_4_byte_letters_page_one_by_one(kms) -> None:
    # JSON writes a control character as \u0001: a marker holding 128 of them was 1,056 characters
    # long, and the call for the second page was refused with ValidationException.
    for keys in (sorted(chr(code) * 128 for code in (1, 2, 31)), sorted(chr(0x1F600 + i) * 128 for i in range(3))):
        key_id = kms.create_key(Tags=[{"TagKey": k, "TagValue": "v"} for k in keys])["KeyMetadata"]["KeyId"]
        pages = list(kms.get_paginator("list_resource_tags").paginate(KeyId=key_id,
                                                                       PaginationConfig={"PageSize": 1}))
        assert [t["TagKey"] for p in pages for t in p["Tags"]] == keys
        assert all(len(p.get("NextMarker", "")) <= 1024 for p in pages)

def test_default_policy_and_round_trip(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.list_key_policies(KeyId=key_id)["PolicyNames"] == ["default"]
    policy = json.loads(kms.get_key_policy(KeyId=key_id)["Policy"])
    assert policy["Id"] == "key-default-1" and policy["Version"] == "2012-10-17"
    assert policy["Statement"] == [{
        "Sid": "Enable IAM User Permissions", "Effect": "Allow",
        "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*",
    }]
    policy["Statement"][0]["Sid"] = "Changed"
    kms.put_key_policy(KeyId=key_id, Policy=json.dumps(policy))
    assert json.loads(kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"]) == policy
    code, _, _ = aws_error(kms.put_key_policy, KeyId=key_id, Policy="{not json")
    assert code == "MalformedPolicyDocumentException"


def test_default_policy_text_is_the_one_aws_returns(kms) -> None:
    # GetKeyPolicy's example in the API reference (and botocore's examples-1.json): AWS's text, as
    # its JSON writer lays it out (` : `, `[ {`), byte for byte, so a caller comparing texts matches.
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    assert kms.get_key_policy(KeyId=key_id)["Policy"] == (
        '{\n  "Version" : "2012-10-17",\n  "Id" : "key-default-1",\n  "Statement" : [ {\n'
        '    "Sid" : "Enable IAM User Permissions",\n    "Effect" : "Allow",\n    "Principal" : {\n'
        f'      "AWS" : "arn:aws:iam::{ACCOUNT}:root"\n    }},\n    "Action" : "kms:*",\n'
        '    "Resource" : "*"\n  } ]\n}')


def _policy_of_size(size: int) -> str:
    statement = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                 "Action": "kms:*", "Resource": "*"}
    text = json.dumps({"Version": "2012-10-17", "Statement": [statement]})
    return text[:-1] + " " * (size - len(text)) + "}"


def test_key_policy_over_32_kb_is_limit_exceeded(kms) -> None:
    # API reference, CreateKey and PutKeyPolicy: "If the key policy exceeds the length constraint,
    # KMS returns a LimitExceededException" (the quota: 32 KB, 32,768 bytes).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.put_key_policy(KeyId=key_id, Policy=_policy_of_size(32_768))
    assert len(kms.get_key_policy(KeyId=key_id)["Policy"]) == 32_768
    assert aws_error(kms.put_key_policy, KeyId=key_id, Policy=_policy_of_size(32_769))[0] == "LimitExceededException"
    assert aws_error(kms.create_key, Policy=_policy_of_size(32_769))[0] == "LimitExceededException"


def test_key_policy_can_be_changed_while_the_key_is_pending_deletion(kms) -> None:
    # Key states table: PutKeyPolicy succeeds in every key state, PendingDeletion included
    # (an administrator may need to grant kms:CancelKeyDeletion to save the key).
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    policy = json.loads(kms.get_key_policy(KeyId=key_id)["Policy"])
    policy["Statement"][0]["Sid"] = "WhilePendingDeletion"
    kms.put_key_policy(KeyId=key_id, Policy=json.dumps(policy))
    assert json.loads(kms.get_key_policy(KeyId=key_id)["Policy"]) == policy


def test_list_aliases_pages_by_50_unless_limit_is_given(server: KeytrailServer) -> None:
    # ListAliases, Limit: "If you do not include a value, it defaults to 50."
    kms = server.client(region="ca-central-1")
    key_ids = [kms.create_key()["KeyMetadata"]["KeyId"] for _ in range(2)]  # 50 aliases a key at most
    for index in range(51):
        kms.create_alias(AliasName=f"alias/page-{index:02d}", TargetKeyId=key_ids[index // 50])
    first = kms.list_aliases()
    assert len(first["Aliases"]) == 50 and first["Truncated"] is True
    rest = kms.list_aliases(Marker=first["NextMarker"])  # and the predefined aliases (alias/aws/s3, …)
    assert len(rest["Aliases"]) == 1 + len(PREDEFINED) and rest["Truncated"] is False


def test_aliases_deleted_page_by_page_are_all_listed_and_deleted(server: KeytrailServer) -> None:
    # A cleanup loop deletes each page's aliases before asking for the next: the marker then names
    # an alias that is gone, and the listing goes on after it (it was InvalidMarkerException).
    kms = server.client(region="eu-north-1")
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    names = {f"alias/drain-{index}" for index in range(5)}
    for name in names:
        kms.create_alias(AliasName=name, TargetKeyId=key_id)
    deleted = set()
    for page in kms.get_paginator("list_aliases").paginate(PaginationConfig={"PageSize": 2}):
        for alias in page["Aliases"]:
            if alias["AliasName"].startswith("alias/aws/"):
                continue  # predefined, for AWS managed keys: no one deletes those, on AWS neither
            kms.delete_alias(AliasName=alias["AliasName"])
            deleted.add(alias["AliasName"])
    assert deleted == names and [a["AliasName"] for a in kms.list_aliases()["Aliases"]] == sorted(PREDEFINED)


def test_grants_revoked_page_by_page_are_all_listed_and_revoked(kms) -> None:
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    grantee = f"arn:aws:iam::{ACCOUNT}:user/bob"
    granted = {kms.create_grant(KeyId=key_id, GranteePrincipal=grantee, Operations=["Decrypt"])["GrantId"]
               for _ in range(5)}
    revoked = set()
    for page in kms.get_paginator("list_grants").paginate(KeyId=key_id, PaginationConfig={"PageSize": 2}):
        for grant in page["Grants"]:
            kms.revoke_grant(KeyId=key_id, GrantId=grant["GrantId"])
            revoked.add(grant["GrantId"])
    assert revoked == granted and kms.list_grants(KeyId=key_id)["Grants"] == []


def test_update_alias_keeps_the_key_type_and_usage_not_the_key_spec(kms) -> None:
    def new_key(spec: str, usage: str) -> str:
        return kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]["KeyId"]

    for first, second in ((("RSA_2048", "SIGN_VERIFY"), ("ECC_NIST_P256", "SIGN_VERIFY")),
                          (("HMAC_256", "GENERATE_VERIFY_MAC"), ("HMAC_512", "GENERATE_VERIFY_MAC")),
                          (("RSA_2048", "ENCRYPT_DECRYPT"), ("RSA_4096", "ENCRYPT_DECRYPT"))):
        name = _name()
        kms.create_alias(AliasName=name, TargetKeyId=new_key(*first))
        target = new_key(*second)
        kms.update_alias(AliasName=name, TargetKeyId=target)
        assert kms.describe_key(KeyId=name)["KeyMetadata"]["KeyId"] == target
    name = _name()
    kms.create_alias(AliasName=name, TargetKeyId=new_key("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"))
    for refused in (new_key("RSA_2048", "ENCRYPT_DECRYPT"), new_key("ECC_NIST_P256", "SIGN_VERIFY")):
        code, message, _ = aws_error(kms.update_alias, AliasName=name, TargetKeyId=refused)
        assert code == "ValidationException" and "same type" in message
