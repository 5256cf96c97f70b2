"""AWS partitions: Region → partition, ARNs in the partition of their Region, policies per partition."""

from __future__ import annotations

import json
import re
from pathlib import Path

import botocore
import pytest

from keytrail.detect.analyzer import TrustZone
from keytrail.kms.authz import Verdict
from keytrail.kms.identifiers import KeyRefError, RefKind, alias_arn, key_arn, parse_key_ref
from keytrail.kms.partitions import arn_partition, partition_of, with_partition
from keytrail.kms.policy import default_policy

from ..authz.support import ACCOUNT, allow_all_identity, authorizer, doc, key, request, role, root, user

KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


def _botocore_partitions() -> list[dict[str, object]]:
    path = Path(botocore.__file__).parent / "data" / "partitions.json"
    return list(json.loads(path.read_text())["partitions"])


def test_every_region_botocore_knows_is_in_its_botocore_partition() -> None:
    for partition in _botocore_partitions():
        for region in partition["regions"]:  # type: ignore[attr-defined]
            if not region.endswith("-global"):  # pseudo-Regions, never in a credential scope
                assert partition_of(region) == partition["id"], region


def test_region_patterns_follow_botocore_for_regions_it_does_not_list_yet() -> None:
    for partition in _botocore_partitions():
        pattern = re.compile(str(partition["regionRegex"]))
        for region in ("cn-south-7", "us-gov-central-2", "us-isob-north-3", "eu-west-9", "eusc-de-west-4"):
            if pattern.match(region):
                assert partition_of(region) == partition["id"], region


@pytest.mark.parametrize(("region", "partition"), [
    ("us-east-1", "aws"), ("eu-west-1", "aws"), ("cn-north-1", "aws-cn"), ("cn-northwest-1", "aws-cn"),
    ("us-gov-west-1", "aws-us-gov"), ("us-gov-east-1", "aws-us-gov"), ("us-iso-east-1", "aws-iso"),
    ("us-isob-east-1", "aws-iso-b"), ("local", "aws"), ("xx-yy-1", "aws"),
])
def test_partition_of(region: str, partition: str) -> None:
    assert partition_of(region) == partition


def test_key_and_alias_arns_name_the_partition_of_their_region() -> None:
    assert key_arn("cn-north-1", ACCOUNT, KEY) == f"arn:aws-cn:kms:cn-north-1:{ACCOUNT}:key/{KEY}"
    assert key_arn("us-gov-west-1", ACCOUNT, KEY) == f"arn:aws-us-gov:kms:us-gov-west-1:{ACCOUNT}:key/{KEY}"
    assert key_arn("us-east-1", ACCOUNT, KEY) == f"arn:aws:kms:us-east-1:{ACCOUNT}:key/{KEY}"
    assert alias_arn("cn-northwest-1", ACCOUNT, "alias/app") == f"arn:aws-cn:kms:cn-northwest-1:{ACCOUNT}:alias/app"


def test_with_partition_rewrites_only_the_partition_field() -> None:
    assert with_partition("arn:aws:iam::111122223333:user/a:b", "aws-cn") == "arn:aws-cn:iam::111122223333:user/a:b"
    assert with_partition("arn:aws-us-gov:sts::1:assumed-role/r/s", "aws") == "arn:aws:sts::1:assumed-role/r/s"
    assert with_partition("111122223333", "aws-cn") == "111122223333"
    assert arn_partition("arn:aws-iso-b:kms:us-isob-east-1:1:key/k") == "aws-iso-b"
    assert arn_partition("arn:gcp:x") is None


@pytest.mark.parametrize(("raw", "kind", "name"), [
    (f"arn:aws-cn:kms:cn-north-1:444455556666:key/{KEY}", RefKind.KEY_ARN, KEY),
    ("arn:aws-cn:kms:cn-north-1:444455556666:alias/app", RefKind.ALIAS_ARN, "alias/app"),
])
def test_arns_of_the_regions_partition_are_accepted(raw: str, kind: RefKind, name: str) -> None:
    ref = parse_key_ref(raw, account=ACCOUNT, region="cn-north-1")
    assert (ref.kind, ref.account, ref.name, ref.arn) == (kind, "444455556666", name, raw)


@pytest.mark.parametrize(("raw", "region", "message"), [
    (f"arn:aws:kms:cn-north-1:{ACCOUNT}:key/{KEY}", "cn-north-1", "Invalid arn aws"),
    (f"arn:aws-cn:kms:us-east-1:{ACCOUNT}:key/{KEY}", "us-east-1", "Invalid arn aws-cn"),
    (f"arn:aws:kms:us-gov-west-1:{ACCOUNT}:alias/app", "us-gov-west-1", "Invalid arn aws"),
    (f"arn:aws-us-gov:kms:cn-north-1:{ACCOUNT}:key/{KEY}", "cn-north-1", "Invalid arn aws-us-gov"),
    (f"arn:aws-cn:kms:cn-northwest-1:{ACCOUNT}:key/{KEY}", "cn-north-1", "Invalid arn cn-northwest-1"),
])
def test_an_arn_of_another_partition_names_no_key(raw: str, region: str, message: str) -> None:
    with pytest.raises(KeyRefError, match=f"^{message}$"):
        parse_key_ref(raw, account=ACCOUNT, region=region)


def test_principals_act_in_the_partition_of_the_region() -> None:
    app = role("app").in_partition("aws-cn")
    assert (app.arn, app.role_arn) == (f"arn:aws-cn:sts::{ACCOUNT}:assumed-role/app/session",
                                       f"arn:aws-cn:iam::{ACCOUNT}:role/app")
    assert (app.partition, app.root_arn) == ("aws-cn", f"arn:aws-cn:iam::{ACCOUNT}:root")
    alice = user("alice")
    assert alice.in_partition("aws") is alice


def _decide(principal_arn_or_account: str, caller: object) -> Verdict:
    the_key = key(doc({"Effect": "Allow", "Principal": {"AWS": principal_arn_or_account},
                       "Action": "kms:*", "Resource": "*"}))
    return authorizer().authorize(request(caller, "kms:Encrypt", the_key)).verdict  # type: ignore[arg-type]


def test_default_policy_names_the_root_of_the_partition_and_lets_it_in() -> None:
    policy = json.loads(default_policy(ACCOUNT, "aws-cn"))
    assert policy["Statement"][0]["Principal"] == {"AWS": f"arn:aws-cn:iam::{ACCOUNT}:root"}
    assert json.loads(default_policy(ACCOUNT))["Statement"][0]["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
    cn_alice = user("alice", ACCOUNT, allow_all_identity()).in_partition("aws-cn")
    allowed = authorizer().authorize(request(cn_alice, "kms:Encrypt", key(default_policy(ACCOUNT, "aws-cn"))))
    assert allowed.verdict is Verdict.ALLOW


def test_a_bare_account_id_means_the_root_of_the_callers_partition() -> None:
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        assert _decide(ACCOUNT, root().in_partition(partition)) is Verdict.ALLOW


def test_root_arn_of_another_partition_does_not_name_the_caller() -> None:
    cn_root = root().in_partition("aws-cn")
    assert _decide(f"arn:aws:iam::{ACCOUNT}:root", cn_root) is not Verdict.ALLOW
    assert _decide(f"arn:aws-cn:iam::{ACCOUNT}:root", cn_root) is Verdict.ALLOW
    cn_app = role("app").in_partition("aws-cn")
    assert _decide(f"arn:aws:iam::{ACCOUNT}:role/app", cn_app) is not Verdict.ALLOW
    assert _decide(f"arn:aws-cn:iam::{ACCOUNT}:role/app", cn_app) is Verdict.ALLOW


def test_detector_takes_the_account_root_of_any_partition_as_administrator() -> None:
    zone = TrustZone(key_account=ACCOUNT)
    assert zone.is_admin(f"arn:aws-cn:iam::{ACCOUNT}:root")
    assert zone.is_admin(f"arn:aws-us-gov:iam::{ACCOUNT}:root")
    assert not zone.is_admin("arn:aws-cn:iam::444455556666:root")



def test_a_not_principal_deny_naming_the_bare_account_spares_its_root_in_every_partition() -> None:
    policy = doc({"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "kms:*", "Resource": "*"},
                 {"Effect": "Deny", "NotPrincipal": {"AWS": ACCOUNT}, "Action": "kms:*", "Resource": "*"})
    for partition in ("aws", "aws-cn", "aws-us-gov"):
        spared = authorizer().authorize(request(root().in_partition(partition), "kms:Encrypt", key(policy)))
        assert spared.verdict is Verdict.ALLOW, partition
        alice = user("alice", ACCOUNT, allow_all_identity()).in_partition(partition)
        denied = authorizer().authorize(request(alice, "kms:Encrypt", key(policy)))
        assert denied.verdict is Verdict.EXPLICIT_DENY, partition
