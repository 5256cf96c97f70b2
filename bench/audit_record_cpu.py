"""Microbenchmark: CPU per audited record in the serving process (AuditTrail.record alone).

`concurrency` coroutines each record realistic Encrypt CallRecords through a real AuditTrail
(group-committed spool, fsync, hash chain), like the KMS core does after each call; with 16
callers the groups are as large as under wrk's 16 connections. Reports CPU per record: of the
process (all threads: loop, spool writer) plus the spool's fsync helper process and the shipper
process, of the event-loop thread alone, and of those two helpers; and records per fsync.
Run it against two source trees in alternation to compare them (A/B on a noisy machine).
Usage: python -m bench.audit_record_cpu [records] [concurrency] [--kafka BOOTSTRAP]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.procs import tree_cpu_seconds
from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord

ACCOUNT = "111122223333"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PRINCIPAL = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                      access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE", user_name="alice")


def encrypt_record() -> CallRecord:
    """An Encrypt call's record with fresh ids, as the KMS core builds it."""
    context = CallContext(principal=PRINCIPAL, region="us-east-1", request_id=str(uuid.uuid4()),
                          user_agent="Boto3/1.44 md/Botocore#1.44")
    return CallRecord(
        event_id=str(uuid.uuid4()), event_name="Encrypt", event_time=datetime.now(UTC), region="us-east-1",
        account=ACCOUNT, context=context,
        request_parameters={"keyId": "alias/app", "encryptionContext": {"Department": "Engineering"},
                            "encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
        additional_event_data={"keyMaterialId": "ab" * 32}, resources=(KEY_ARN,), read_only=True,
    )


async def measure(records: int, concurrency: int, kafka: str | None) -> dict[str, float]:
    """CPU µs per record (process, loop thread) and records per fsync over one run."""
    per_worker = records // concurrency
    calls = [[encrypt_record() for _ in range(per_worker)] for _ in range(concurrency)]
    with tempfile.TemporaryDirectory() as folder:
        async with AuditTrail.open(AuditSettings(data_dir=Path(folder), kafka_bootstrap=kafka)) as trail:
            await asyncio.gather(*(trail.record(encrypt_record()) for _ in range(concurrency)))  # warm

            async def worker(mine: list[CallRecord]) -> None:
                for call in mine:
                    await trail.record(call)

            fsyncs = trail.spool.fsyncs
            # The fsync helper and, with Kafka, the shipper: the processes the trail runs beside it.
            helper = [pid for pid in (trail.spool.fsync_helper_pid, trail.shipper_pid) if pid is not None]
            start, start_cpu, start_loop = time.perf_counter(), time.process_time(), time.thread_time()
            start_helper = tree_cpu_seconds(helper)
            await asyncio.gather(*(worker(mine) for mine in calls))
            if kafka:
                await trail.flush_shipping(60.0)
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            loop_cpu, helper_cpu = time.thread_time() - start_loop, tree_cpu_seconds(helper) - start_helper
            done = per_worker * concurrency
            return {"cpu_us": 1e6 * (cpu + helper_cpu) / done, "loop_us": 1e6 * loop_cpu / done,
                    "helper_us": 1e6 * helper_cpu / done, "per_s": done / wall,
                    "per_fsync": done / max(1, trail.spool.fsyncs - fsyncs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("records", type=int, nargs="?", default=20000)
    parser.add_argument("concurrency", type=int, nargs="?", default=16)
    parser.add_argument("--kafka", default=None)
    arguments = parser.parse_args()
    print(json.dumps(asyncio.run(measure(arguments.records, arguments.concurrency, arguments.kafka))))


if __name__ == "__main__":
    main()
