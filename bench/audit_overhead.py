"""Benchmark: Encrypt-like calls per second with the audit trail on vs a no-op sink (audit off).

Each call does the Encrypt path's own work (SigV4-style HMAC chain, JSON parse, AES-256-GCM
with a fresh nonce, JSON response, a CallRecord with uuid4 ids), padded with CPU spin to
`call_us` microseconds per call: 130 µs is the measured server CPU per HTTP Encrypt request
without audit (perf-anchors.md: 145 µs/req including a ~15 µs Avro encode). Then it reports to
the sink, like KmsService.execute. Rounds alternate between the sinks in the same run; medians
and the ratio are printed, plus the audit CPU cost per record and raw AuditTrail.record
throughput. Usage: python bench/audit_overhead.py [calls] [concurrency] [rounds] [call_us]
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keytrail.audit.trail import AuditSettings, AuditTrail
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord

KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PRINCIPAL = Principal(arn="arn:aws:iam::111122223333:user/alice", account="111122223333",
                      type=IdentityType.IAM_USER, access_key_id="AKIAALICE000000000001",
                      principal_id="AIDAALICE", user_name="alice")
BODY = orjson.dumps({"KeyId": "alias/app", "Plaintext": "aGVsbG8gd29ybGQ=",
                     "EncryptionContext": {"Department": "Engineering"}})
AES = AESGCM(bytes(32))


class NoopSink:
    """Audit off: the build switch the issue asks to compare against."""

    async def record(self, call: CallRecord) -> None:
        return None


CALL_US = 130


def _encrypt_work(index: int) -> CallRecord:
    deadline = time.thread_time() + CALL_US / 1e6  # CPU time: robust to a busy shared machine
    signing_key = b"AWS4secret"
    for part in (b"20261128", b"us-east-1", b"kms", b"aws4_request"):  # SigV4 key derivation + signature
        signing_key = hmac.digest(signing_key, part, "sha256")
    hmac.digest(signing_key, hashlib.sha256(BODY).digest(), "sha256")
    request = orjson.loads(BODY)
    ciphertext = AES.encrypt(os.urandom(12), b"hello world", orjson.dumps(request["EncryptionContext"]))
    orjson.dumps({"CiphertextBlob": ciphertext.hex(), "KeyId": KEY_ARN})
    while time.thread_time() < deadline:  # the rest of the request: HTTP parsing, routing, ...
        pass
    context = CallContext(principal=PRINCIPAL, region="us-east-1", request_id=str(uuid.uuid4()),
                          user_agent="Boto3/1.44 md/Botocore#1.44")
    return CallRecord(
        event_id=str(uuid.uuid4()), event_name="Encrypt", event_time=datetime.now(UTC), region="us-east-1",
        account="111122223333", context=context,
        request_parameters={"keyId": "alias/app", "encryptionContext": request["EncryptionContext"],
                            "encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
        additional_event_data={"keyMaterialId": "ab" * 32}, resources=(KEY_ARN,), read_only=True,
    )


async def _drive(sink: object, calls: int, concurrency: int, work: bool = True) -> tuple[float, float]:
    """(calls per wall second, calls per process CPU second, all threads)."""
    record = _encrypt_work(0)
    per_worker = calls // concurrency

    async def worker() -> None:
        for index in range(per_worker):
            await sink.record(_encrypt_work(index) if work else record)  # type: ignore[attr-defined]

    start, start_cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    done = per_worker * concurrency
    return done / (time.perf_counter() - start), done / (time.process_time() - start_cpu)


async def _round(audit: bool, calls: int, concurrency: int,
                 work: bool = True) -> tuple[tuple[float, float], int]:
    if not audit:
        return await _drive(NoopSink(), calls, concurrency, work), 0
    with tempfile.TemporaryDirectory() as folder:
        trail = AuditTrail.open(AuditSettings(data_dir=Path(folder)))
        async with trail:
            rate = await _drive(trail, calls, concurrency, work)
            return rate, trail.spool.fsyncs


async def main(calls: int, concurrency: int, rounds: int, call_us: int) -> None:
    global CALL_US
    CALL_US = call_us
    off, on, raw, fsyncs = [], [], [], []
    await _round(True, calls // 4, concurrency)  # warm-up
    for _ in range(rounds):
        off.append((await _round(False, calls, concurrency))[0])
        rate, syncs = await _round(True, calls, concurrency)
        on.append(rate)
        fsyncs.append(syncs)
        raw.append((await _round(True, calls, concurrency, work=False))[0])
    print(f"calls/round={calls} concurrency={concurrency} rounds={rounds} call CPU={call_us} µs")
    for unit, i in (("wall", 0), ("CPU", 1)):
        offs, ons = [r[i] for r in off], [r[i] for r in on]
        ratio = statistics.median(a / b for a, b in zip(ons, offs, strict=True))
        print(f"[per {unit} second] audit off {statistics.median(offs):,.0f} calls/s "
              f"{[round(x) for x in offs]}; "
              f"audit on {statistics.median(ons):,.0f} calls/s {[round(x) for x in ons]}; "
              f"ratio on/off {ratio:.2f}; audit cost "
              f"{1e6 / statistics.median(ons) - 1e6 / statistics.median(offs):.1f} µs/call")
    print(f"records per fsync (audit on): {calls / statistics.median(fsyncs):.1f}")
    wall, cpu = statistics.median(r[0] for r in raw), statistics.median(r[1] for r in raw)
    print(f"raw AuditTrail.record (no call work): {wall:,.0f} records/wall s, {cpu:,.0f} records/CPU s")

if __name__ == "__main__":
    defaults = [20000, 128, 5, 130]
    arguments = [int(a) for a in sys.argv[1:5]] + defaults[len(sys.argv[1:5]):]
    asyncio.run(main(*arguments))
