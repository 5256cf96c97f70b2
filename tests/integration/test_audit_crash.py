"""kill -9 of a process writing the audit trail under concurrent load: nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from keytrail.audit.cloudtrail_files import iter_events
from keytrail.audit.integrity import verify
from keytrail.audit.trail import AuditSettings, AuditTrail
from tests.support.audit_records import encrypt_call

pytestmark = pytest.mark.integration

WRITER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from keytrail.audit.trail import AuditSettings, AuditTrail
    from tests.support.audit_records import encrypt_call

    async def caller(trail, start):
        for i in range(start, start + 1_000_000, 64):
            await trail.record(encrypt_call(i))
            sys.stdout.write(encrypt_call(i).event_id + "\\n")  # acknowledged: the caller got its answer
            sys.stdout.flush()

    async def main():
        trail = AuditTrail.open(AuditSettings(data_dir=Path(sys.argv[1]), segment_bytes=50_000))
        await trail.start()
        await asyncio.gather(*(caller(trail, n) for n in range(64)))

    asyncio.run(main())
""")


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE,
                             text=True, env=env)
    assert child.stdout is not None
    acknowledged = [child.stdout.readline().strip() for _ in range(3000)]
    child.send_signal(signal.SIGKILL)
    acknowledged += [line.strip() for line in child.stdout if line.strip()]  # answered before the kill
    child.wait()

    async def reopen_and_add_one() -> None:  # recovery: torn tail cut, hash sidecar rebuilt
        async with AuditTrail.open(AuditSettings(data_dir=tmp_path, segment_bytes=50_000)) as trail:
            await trail.record(encrypt_call(-1))

    asyncio.run(reopen_and_add_one())
    stored = [event["eventID"] for _, event in iter_events(tmp_path)]
    assert set(acknowledged) <= set(stored)
    assert len(stored) == len(set(stored))  # no record written twice
    assert stored[-1] == encrypt_call(-1).event_id
    assert verify(tmp_path) == []
