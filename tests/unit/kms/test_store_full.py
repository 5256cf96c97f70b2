"""A key store SQLite cannot write to (a full disk): the call's error says so, and the log says it
once an outage, not a traceback a call."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keytrail.kms import errors
from tests.support.allow_all import alice, allow_all_service


async def test_a_full_key_store_refuses_changes_in_one_clear_error_and_logs_the_outage_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, service = allow_all_service(tmp_path)
    await service.execute("CreateKey", alice(), {})
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "database or disk is full"
    for _ in range(3):
        with pytest.raises(errors.KMSInternalException) as refused:
            await service.execute("CreateKey", alice(), {"Description": "x" * 4096})
        assert refused.value.message == "The key store could not write the change: database or disk is full."
    errors_logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors_logged) == 1 and errors_logged[0].exc_info is None, errors_logged
    assert "cannot write (database or disk is full)" in errors_logged[0].getMessage()
    assert len((await service.execute("ListKeys", alice(), {}))["Keys"]) == 1  # nothing half made
    store._db.execute("PRAGMA max_page_count = 1073741823")  # space is back
    await service.execute("CreateKey", alice(), {"Description": "x" * 4096})
    assert "writes again" in caplog.records[-1].getMessage()
    await store.close()
