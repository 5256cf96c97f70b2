"""Builders for the audit tests: call records of each identity type, a filled trail, tampering."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import struct
import zlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keytrail.audit.integrity import canonical, fingerprint
from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from keytrail.kms.context import CallContext, IdentityType, Principal
from keytrail.kms.model import CallRecord
from keytrail.transport.segment_log import SegmentLog

ACCOUNT = "111122223333"
KEY_ARN = f"arn:aws:kms:us-east-1:{ACCOUNT}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
T0 = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)

ALICE = Principal(arn=f"arn:aws:iam::{ACCOUNT}:user/alice", account=ACCOUNT, type=IdentityType.IAM_USER,
                  access_key_id="AKIAALICE000000000001", principal_id="AIDAALICE", user_name="alice")
APP = Principal(arn=f"arn:aws:sts::{ACCOUNT}:assumed-role/app/app-session", account=ACCOUNT,
                type=IdentityType.ASSUMED_ROLE, access_key_id="ASIAAPP0000000000001",
                principal_id="AROAAPP:app-session", role_arn=f"arn:aws:iam::{ACCOUNT}:role/app",
                session_name="app-session")
ROOT = Principal.account_root(ACCOUNT, "AKIAROOT000000000001")


def encrypt_call(index: int, principal: Principal = ALICE, **changes: object) -> CallRecord:
    """A successful Encrypt call record numbered `index`."""
    context = CallContext(principal=principal, region="us-east-1", request_id=f"req-{index:06d}",
                          source_ip="192.0.2.7", user_agent="Boto3/1.44")
    values: dict[str, object] = dict(
        event_id=f"00000000-0000-4000-8000-{index:012d}", event_name="Encrypt",
        event_time=T0 + timedelta(seconds=index), region="us-east-1", account=ACCOUNT, context=context,
        request_parameters={"keyId": "alias/app", "encryptionContext": {"Department": "Engineering"},
                            "encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
        additional_event_data={"keyMaterialId": "ab" * 32}, resources=(KEY_ARN,), read_only=True,
    )
    values.update(changes)
    return CallRecord(**values)  # type: ignore[arg-type]


def append_each(log: SegmentLog, payloads: Iterable[bytes]) -> None:
    """One append a record, as a spool under light load: a segment rolls at the record that fills it
    (an append stays whole in one segment)."""
    for payload in payloads:
        log.append([payload])


async def fill_trail_async(data_dir: Path, count: int, *, first: int = 0, **settings: object) -> None:
    """Record `count` Encrypt calls, numbered from `first`, through a real AuditTrail, then close it
    (final digest). All at once; given `segment_bytes`, one after another: a group commit stays
    whole in one segment, and tests of small segments name which records each holds."""
    trail = AuditTrail.open(AuditSettings(data_dir=data_dir, **settings))  # type: ignore[arg-type]
    calls = [encrypt_call(i) for i in range(first, first + count)]
    async with trail:
        if "segment_bytes" in settings:
            for call in calls:
                await trail.record(call)
        else:
            await asyncio.gather(*map(trail.record, calls))


@contextlib.asynccontextmanager
async def failed_trail(settings: AuditSettings) -> AsyncIterator[AuditTrail]:
    """A trail the test makes fail for good: its close says that no final digest was signed (a
    stop that ended so exited 0, as if the spool were flushed)."""
    from keytrail.audit.spool import SpoolError

    with pytest.raises(SpoolError, match="no final digest was signed, as the audit spool failed earlier"):
        async with AuditTrail.open(settings) as trail:
            yield trail


def fill_trail(data_dir: Path, count: int, *, first: int = 0, **settings: object) -> None:
    """`fill_trail_async` for synchronous tests."""
    asyncio.run(fill_trail_async(data_dir, count, first=first, **settings))


def flip_bit(segment: Path, position: int) -> None:
    """Flip the low bit of the byte at `position` of `segment` in place, as damage on disk would
    (the file written where it is, as a writer holds it open); flipping it again restores it."""
    with segment.open("r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([byte ^ 1]))


def overwrite(segment: Path, position: int, data: bytes) -> bytes:
    """Write `data` over the bytes at `position` of `segment` in place (as `flip_bit`); return the
    bytes it replaced, to put back."""
    with segment.open("r+b") as handle:
        handle.seek(position)
        replaced = handle.read(len(data))
        handle.seek(position)
        handle.write(data)
    return replaced


def rewrite_segment(data_dir: Path, edit: object, *, fix_checksums: bool = True) -> None:
    """Rewrite the first segment's records through `edit(list[bytes]) -> list[bytes]`, as an
    attacker with write access would (recomputing each frame's CRC unless told not to)."""
    log_dir, _ = audit_paths(data_dir)
    segment = sorted(log_dir.glob("*.seg"))[0]
    data = segment.read_bytes()
    payloads, position = [], 0
    while position < len(data):
        length, _ = struct.unpack_from("<II", data, position)
        payloads.append(data[position + 8: position + 8 + length])
        position += 8 + length
    originals = list(payloads)
    payloads = edit(payloads)  # type: ignore[operator]
    out = b""
    for index, payload in enumerate(payloads):
        crc = zlib.crc32(payload)
        if not fix_checksums and index < len(originals) and payload != originals[index]:
            crc = zlib.crc32(originals[index])
        out += struct.pack("<II", len(payload), crc) + payload
    segment.write_bytes(out)


def sign_again_with_a_new_key(data_dir: Path) -> None:
    """What an attacker who can write the data dir does after editing records: a key of their own,
    its public half exported, every digest signed anew (chain heads recomputed would be the same)."""
    _, paths = audit_paths(data_dir)
    key = Ed25519PrivateKey.generate()
    paths.public_key.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    previous = None
    for path in sorted(paths.digests.glob("*.json")):
        body = {k: v for k, v in json.loads(path.read_text()).items() if k != "signature"}
        body["publicKeyFingerprint"] = fingerprint(key.public_key())
        body["previousDigestHash"] = None if previous is None else hashlib.sha256(canonical(previous)).hexdigest()
        previous = {**body, "signature": key.sign(canonical(body)).hex()}
        path.write_bytes(canonical(previous))


def cut_back_to(data_dir: Path, records: int, digests: int) -> None:
    """Roll the trail back to an older state that is consistent in itself: the newest records gone
    with their hashes and the digests that signed them."""
    _, paths = audit_paths(data_dir)
    for newer in sorted(paths.digests.glob("*.json"))[digests:]:
        newer.unlink()
    rewrite_segment(data_dir, lambda kept: kept[:records])
    with paths.hashes.open("r+b") as hashes:
        hashes.truncate(32 * records)
