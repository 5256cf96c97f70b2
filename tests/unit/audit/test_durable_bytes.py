"""The spool counts the bytes it made durable as the log holds them: the Kafka cap of unshipped
bytes is read from that count (audit/trail.py `unshipped_bytes`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from keytrail.audit.trail import AuditSettings, AuditTrail, audit_paths
from tests.support.audit_records import encrypt_call


async def test_the_bytes_made_durable_are_the_bytes_of_the_log_segments(tmp_path: Path) -> None:
    async with AuditTrail.open(AuditSettings(data_dir=tmp_path)) as trail:
        await asyncio.gather(*(trail.record(encrypt_call(i)) for i in range(40)))
        await trail.record(encrypt_call(40, request_parameters={"keyId": "k" * 3000}))
        log_dir, _ = audit_paths(tmp_path)
        assert trail.spool.durable_bytes == sum(path.stat().st_size for path in log_dir.glob("*.seg"))
