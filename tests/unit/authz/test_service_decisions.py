"""Operations through KmsService in process with the real PolicyAuthorizer: which resource and
which permission each asks for, and the audit record of every refusal."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import errors, evaluator
from keytrail.kms.context import CallContext, Principal
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.grants import grant_allows
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore
from keytrail.kms.store import Grant

from .support import ACCOUNT, NOW, REGION, allow_all_identity, doc, root, user

BOB_ARN = f"arn:aws:iam::{ACCOUNT}:user/bob"


class Trail:
    """The audit sink: keeps every record."""

    def __init__(self) -> None:
        self.records: list[CallRecord] = []

    async def record(self, call: CallRecord) -> None:
        self.records.append(call)


@pytest.fixture
def service(tmp_path: Path) -> tuple[KmsService, Trail]:
    trail = Trail()
    clock = ManualClock(NOW)
    store = SqliteStore(tmp_path / "keys.db", RootKey(os.urandom(32)))
    deps = ServiceDeps(store=store, clock=clock, audit=trail, authorizer=PolicyAuthorizer(clock))
    return KmsService(deps), trail


async def call(svc: KmsService, principal: Principal, name: str, **params: Any) -> dict[str, Any]:
    return await svc.execute(name, CallContext(principal=principal, region=REGION, request_id="req"), params)


async def refusal(svc: KmsService, principal: Principal, name: str, **params: Any) -> str:
    with pytest.raises(errors.AccessDeniedException) as info:
        await call(svc, principal, name, **params)
    return str(info.value)


def _only(action: str, resource: str, effect: str = "Allow") -> dict[str, Any]:
    return doc({"Effect": effect, "Action": action, "Resource": resource})


async def test_list_retirable_grants_is_authorized_on_the_retiring_principal(service) -> None:
    # "The authorized resource in ListRetirableGrants calls is the retiring principal specified in
    # the request" (API reference): an IAM policy scoped to it allows, a Deny on it refuses.
    svc, trail = service
    scoped = user("alice", ACCOUNT, _only("kms:ListRetirableGrants", BOB_ARN))
    assert (await call(svc, scoped, "ListRetirableGrants", RetiringPrincipal=BOB_ARN))["Grants"] == []
    message = await refusal(svc, scoped, "ListRetirableGrants", RetiringPrincipal=f"arn:aws:iam::{ACCOUNT}:user/eve")
    assert message == (f"User: arn:aws:iam::{ACCOUNT}:user/alice is not authorized to perform: "
                       f"kms:ListRetirableGrants on resource: arn:aws:iam::{ACCOUNT}:user/eve because no "
                       "identity-based policy allows the kms:ListRetirableGrants action")
    denied = user("alice", ACCOUNT, allow_all_identity(), _only("kms:ListRetirableGrants", BOB_ARN, "Deny"))
    message = await refusal(svc, denied, "ListRetirableGrants", RetiringPrincipal=BOB_ARN)
    assert message.endswith("with an explicit deny in an identity-based policy")
    record = trail.records[-1]
    assert (record.event_name, record.error_code, record.error_message) == (
        "ListRetirableGrants", "AccessDeniedException", message)


async def test_root_lists_retirable_grants_of_any_principal_of_its_account(service) -> None:
    svc, _ = service
    assert (await call(svc, root(), "ListRetirableGrants", RetiringPrincipal=BOB_ARN))["Grants"] == []


async def test_put_key_policy_nested_too_deeply_is_malformed_and_audited(service) -> None:
    svc, trail = service
    key_id = (await call(svc, root(), "CreateKey"))["KeyMetadata"]["KeyId"]
    with pytest.raises(errors.MalformedPolicyDocumentException):
        await call(svc, root(), "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy="[" * 16_000 + "]" * 16_000)
    record = trail.records[-1]
    assert (record.event_name, record.error_code) == ("PutKeyPolicy", "MalformedPolicyDocumentException")


def _key_policy(*statements: dict[str, Any]) -> str:
    return json.dumps(doc({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"},
                           "Action": "kms:*", "Resource": "*"}, *statements))


async def test_bypass_lockout_check_key_is_absent_unless_the_request_sets_it(service) -> None:
    # AWS's example key policy statement for kms:BypassPolicyLockoutSafetyCheck ("AWS KMS condition
    # keys") allows PutKeyPolicy "only when the request does not include the
    # BypassPolicyLockoutSafetyCheck parameter", with the Null operator: the key is absent then.
    svc, _ = service
    bob = user("bob")
    without_bypass = {"Effect": "Allow", "Principal": {"AWS": BOB_ARN}, "Action": "kms:PutKeyPolicy", "Resource": "*",
                      "Condition": {"Null": {"kms:BypassPolicyLockoutSafetyCheck": True}}}
    policy = _key_policy(without_bypass)
    key_id = (await call(svc, root(), "CreateKey", Policy=policy))["KeyMetadata"]["KeyId"]
    await call(svc, bob, "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy=policy)
    message = await refusal(svc, bob, "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy=policy,
                            BypassPolicyLockoutSafetyCheck=False)
    assert message.endswith("because no identity-based policy allows the kms:PutKeyPolicy action")


async def test_expiration_model_key_is_absent_unless_the_request_sets_it(service) -> None:
    # AWS's example for kms:ExpirationModel allows ImportKeyMaterial "only when the request does not
    # have an ExpirationModel parameter" with the Null operator: the key is absent then.
    svc, _ = service
    default_only = {"Effect": "Allow", "Principal": {"AWS": BOB_ARN}, "Action": "kms:ImportKeyMaterial",
                    "Resource": "*", "Condition": {"Null": {"kms:ExpirationModel": True}}}
    created = await call(svc, root(), "CreateKey", Origin="EXTERNAL", Policy=_key_policy(default_only))
    params = {"KeyId": created["KeyMetadata"]["KeyId"], "ImportToken": b"not a token", "EncryptedKeyMaterial": b"x",
              "ValidTo": NOW.replace(year=NOW.year + 1)}
    with pytest.raises(errors.InvalidImportTokenException):  # authorized: refused for its token only
        await call(svc, user("bob"), "ImportKeyMaterial", **params)
    await refusal(svc, user("bob"), "ImportKeyMaterial", ExpirationModel="KEY_MATERIAL_EXPIRES", **params)


async def test_replicate_key_asks_create_key_with_the_replicas_properties(service) -> None:
    # ReplicateKey needs kms:CreateKey in the replica's Region; the key it creates is a multi-Region
    # replica of the primary's spec, so an IAM Deny of CreateKey for multi-Region keys refuses it
    # (it was asked with kms:MultiRegion false and kms:KeySpec SYMMETRIC_DEFAULT, whatever the key).
    svc, _ = service
    no_multi_region = doc({"Effect": "Allow", "Action": "kms:*", "Resource": "*"},
                          {"Effect": "Deny", "Action": "kms:CreateKey", "Resource": "*",
                           "Condition": {"Bool": {"kms:MultiRegion": "true"}}})
    alice = user("alice", ACCOUNT, no_multi_region)
    primary = (await call(svc, root(), "CreateKey", MultiRegion=True, KeySpec="ECC_NIST_P256",
                          KeyUsage="SIGN_VERIFY"))["KeyMetadata"]["KeyId"]
    message = await refusal(svc, alice, "ReplicateKey", KeyId=primary, ReplicaRegion="eu-west-1")
    assert "kms:CreateKey" in message and message.endswith("with an explicit deny in an identity-based policy")
    only_replicas_of_ecc = user("alice", ACCOUNT, doc(
        {"Effect": "Allow", "Action": "kms:ReplicateKey", "Resource": "*"},
        {"Effect": "Allow", "Action": "kms:CreateKey", "Resource": "*",
         "Condition": {"StringEquals": {"kms:MultiRegionKeyType": "REPLICA", "kms:KeySpec": "ECC_NIST_P256"}}}))
    await call(svc, only_replicas_of_ecc, "ReplicateKey", KeyId=primary, ReplicaRegion="eu-west-1")


async def test_lockout_check_asks_about_a_later_put_key_policy_on_this_key(service) -> None:
    # PutKeyPolicy: "the principal making the request must be allowed to make a subsequent
    # PutKeyPolicy request on the KMS key": such a request has the key's condition keys (its tags).
    svc, _ = service
    bob = user("bob")
    by_tag = {"Effect": "Allow", "Principal": {"AWS": BOB_ARN}, "Action": "kms:PutKeyPolicy", "Resource": "*",
              "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}}}
    only_bob = json.dumps(doc(by_tag))
    key_id = (await call(svc, root(), "CreateKey", Policy=_key_policy(by_tag),
                         Tags=[{"TagKey": "team", "TagValue": "blue"}]))["KeyMetadata"]["KeyId"]
    await call(svc, bob, "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy=only_bob)
    await call(svc, bob, "PutKeyPolicy", KeyId=key_id, PolicyName="default", Policy=only_bob)  # and again


async def test_create_key_lockout_check_sees_the_new_keys_tags(service) -> None:
    svc, _ = service
    by_tag = {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*",
              "Resource": "*", "Condition": {"StringEquals": {"aws:ResourceTag/team": "blue"}}}
    policy = json.dumps(doc(by_tag))
    await call(svc, root(), "CreateKey", Policy=policy, Tags=[{"TagKey": "team", "TagValue": "blue"}])
    with pytest.raises(errors.MalformedPolicyDocumentException):
        await call(svc, root(), "CreateKey", Policy=policy, Tags=[{"TagKey": "team", "TagValue": "red"}])


async def test_a_call_weighs_only_the_grants_that_name_its_caller(service, monkeypatch) -> None:
    # A key may hold 50,000 grants (AWS's quota), and every call on it is authorized: a grantee's
    # call weighed every grant of the key (≈ 290 ms at the quota) where only its own can allow it.
    svc, _ = service
    store = svc.store
    key = (await call(svc, root(), "CreateKey"))["KeyMetadata"]
    for number in range(200):
        await store.put_grant(Grant(ACCOUNT, REGION, key["KeyId"], f"{number:064x}",
                                    f"arn:aws:iam::{ACCOUNT}:user/u{number}", ("Encrypt",), ACCOUNT, NOW, token="t"))
    await call(svc, root(), "CreateGrant", KeyId=key["KeyId"], GranteePrincipal=BOB_ARN, Operations=["Encrypt"])
    weighed: list[str] = []

    def counted(grant: Grant, *args: Any) -> bool:
        weighed.append(grant.grantee_principal)
        return grant_allows(grant, *args)

    monkeypatch.setattr(evaluator, "grant_allows", counted)
    assert (await call(svc, user("bob"), "Encrypt", KeyId=key["KeyId"], Plaintext=b"x"))["KeyId"] == key["Arn"]
    assert weighed == [BOB_ARN]
    await refusal(svc, user("eve"), "Encrypt", KeyId=key["KeyId"], Plaintext=b"x")  # named by none of them
    assert weighed == [BOB_ARN]
