"""Encrypt throughput with key-policy authorization against the same build with an allow-all policy.

Runs `KmsService.execute("Encrypt", ...)` in-process (SQLite store, no HTTP, a no-op audit sink)
so the figure isolates the authorization cost. Usage:

    PYTHONPATH=src python bench/authz_overhead.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from keytrail.clock import ManualClock
from keytrail.kms.authz import Authorizer
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.evaluator import PolicyAuthorizer
from keytrail.kms.model import CallRecord
from keytrail.kms.sealing import RootKey
from keytrail.kms.service import KmsService, ServiceDeps
from keytrail.kms.sqlite_store import SqliteStore

ACCOUNT = "111122223333"
ALICE = f"arn:aws:iam::{ACCOUNT}:user/alice"
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "kms:*", "Resource": "*"}],
}
# The developer guide's shape: IAM delegation, administrators, users with conditions, a deny.
REALISTIC = {
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
            "Sid": "Allow access for Key Administrators",
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:role/admin"},
            "Action": [
                "kms:Create*",
                "kms:Describe*",
                "kms:Enable*",
                "kms:List*",
                "kms:Put*",
                "kms:Update*",
                "kms:Revoke*",
                "kms:Disable*",
                "kms:Get*",
                "kms:Delete*",
                "kms:ScheduleKeyDeletion",
            ],
            "Resource": "*",
        },
        {
            "Sid": "Allow use of the key",
            "Effect": "Allow",
            "Principal": {"AWS": [ALICE]},
            "Action": [
                "kms:Encrypt",
                "kms:Decrypt",
                "kms:ReEncrypt*",
                "kms:GenerateDataKey*",
                "kms:DescribeKey",
            ],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"kms:EncryptionContext:Department": "IT"},
                "IpAddress": {"aws:SourceIp": "127.0.0.0/8"},
            },
        },
        {
            "Sid": "Deny outside TLS for others",
            "Effect": "Deny",
            "NotPrincipal": {"AWS": [ALICE, f"arn:aws:iam::{ACCOUNT}:root"]},  # a user is spared with its account
            "Action": "kms:Decrypt",
            "Resource": "*",
        },
    ],
}
IDENTITY = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": ["kms:Encrypt", "kms:Decrypt"],
            "Resource": f"arn:aws:kms:*:{ACCOUNT}:key/*",
        }
    ],
}


class NullSink:
    async def record(self, call: CallRecord) -> None:
        return None


async def _service(tmp: Path, authorizer: Authorizer, clock: ManualClock) -> KmsService:
    store = SqliteStore(tmp / "keys.db", RootKey(os.urandom(32)))
    return KmsService(ServiceDeps(store=store, clock=clock, audit=NullSink(), authorizer=authorizer))


async def _encrypts_per_second(policy: dict[str, Any], calls: int, cached: bool) -> float:
    clock = ManualClock()
    with tempfile.TemporaryDirectory() as tmp:
        authorizer = PolicyAuthorizer(clock)
        svc = await _service(Path(tmp), authorizer, clock)
        alice = Principal(
            arn=ALICE,
            account=ACCOUNT,
            type=IdentityType.IAM_USER,
            access_key_id="AKIAALICE",
            principal_id="AIDAALICE",
            user_name="alice",
            policies=(IDENTITY,),
        )
        context = CallContext(principal=alice, region="us-east-1", request_id="r")
        admin = CallContext(
            principal=Principal.account_root(ACCOUNT, "AKIAROOT"), region="us-east-1", request_id="r"
        )
        created = await svc.execute(
            "CreateKey", admin, {"Policy": json.dumps(policy), "BypassPolicyLockoutSafetyCheck": True}
        )
        params = {
            "KeyId": created["KeyMetadata"]["KeyId"],
            "Plaintext": b"x" * 256,
            "EncryptionContext": {"Department": "IT"},
        }
        start = time.perf_counter()
        for _ in range(calls):
            if not cached:
                authorizer._decisions.clear()
            await svc.execute("Encrypt", context, dict(params))
        return calls / (time.perf_counter() - start)


async def main(calls: int, rounds: int) -> None:
    results: dict[str, list[float]] = {"allow-all": [], "realistic": [], "realistic, cache off": []}
    for _ in range(rounds):  # interleaved, so drift on a shared machine hits every variant alike
        results["allow-all"].append(await _encrypts_per_second(ALLOW_ALL, calls, cached=True))
        results["realistic"].append(await _encrypts_per_second(REALISTIC, calls, cached=True))
        results["realistic, cache off"].append(
            await _encrypts_per_second(REALISTIC, calls // 4, cached=False)
        )
    best = {name: max(values) for name, values in results.items()}
    for name, value in best.items():
        print(f"{name:24s} {value:10.0f} Encrypt/s (best of {rounds})")
    ratio = best["realistic"] / best["allow-all"]
    print(f"realistic / allow-all: {ratio:.3f} ({(1 - ratio) * 100:+.1f}% slower)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
