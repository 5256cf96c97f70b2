"""Keys holding the same policy share one copy of its text in memory (`Key.__post_init__`): read from
a store, created, given a policy, replicated."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

from keytrail.kms.codec import key_from_doc, key_to_doc
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.sealing import RootKey
from tests.support.allow_all import ACCOUNT, alice, allow_all_service

POLICY = json.dumps({"Version": "2012-10-17", "Statement": [
    {"Sid": "Enable IAM User Permissions", "Effect": "Allow",
     "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "kms:*", "Resource": "*"}]})


def _key(key_id: str, policy: str) -> Key:
    material = KeyMaterial("00" * 32, os.urandom(32), datetime(2026, 1, 1, tzinfo=UTC))
    return Key(ACCOUNT, "us-east-1", key_id, datetime(2026, 1, 1, tzinfo=UTC), materials=(material,),
               policy=policy)


def test_keys_read_with_the_same_policy_share_one_copy_of_it() -> None:
    root = RootKey(os.urandom(32))
    other = POLICY.replace("Enable", "Allow")
    a, b, c = (key_from_doc(key_to_doc(_key(key_id, text), root), root)
               for key_id, text in (("1234abcd-12ab-34cd-56ef-1234567890ab", POLICY),
                                    ("0987dcba-09fe-87dc-65ba-ab0987654321", POLICY),
                                    ("5678abcd-12ab-34cd-56ef-1234567890ab", other)))
    assert a.policy == b.policy == POLICY and a.policy is b.policy  # one copy for the many keys of a default policy
    assert c.policy == other


async def test_keys_created_or_given_the_same_policy_share_one_copy_of_it(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    ids = [(await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"] for _ in range(2)]
    ids.append((await service.execute("CreateKey", alice(), {"Policy": POLICY, "BypassPolicyLockoutSafetyCheck": True}
                                      ))["KeyMetadata"]["KeyId"])
    first, second, third = [await service.store.get_key(ACCOUNT, "us-east-1", key_id) for key_id in ids]
    assert first is not None and second is not None and third is not None
    assert first.policy == second.policy and first.policy is second.policy  # the default, built anew each time
    equal_text = POLICY.encode().decode()  # another object, as each request brings its own
    await service.execute("PutKeyPolicy", alice(), {"KeyId": ids[0], "PolicyName": "default", "Policy": equal_text,
                                                    "BypassPolicyLockoutSafetyCheck": True})
    changed = await service.store.get_key(ACCOUNT, "us-east-1", ids[0])
    assert changed is not None and changed.policy == POLICY and changed.policy is third.policy


async def test_replicas_given_the_same_policy_share_one_copy_of_it(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    primary = (await service.execute("CreateKey", alice(), {"MultiRegion": True}))["KeyMetadata"]["KeyId"]
    for region in ("us-west-2", "eu-west-1"):
        await service.execute("ReplicateKey", alice(), {"KeyId": primary, "ReplicaRegion": region,
                                                        "Policy": POLICY.encode().decode(),
                                                        "BypassPolicyLockoutSafetyCheck": True})
    west, europe = [await service.store.get_key(ACCOUNT, region, primary) for region in ("us-west-2", "eu-west-1")]
    assert west is not None and europe is not None
    assert west.policy == POLICY and west.policy is europe.policy
