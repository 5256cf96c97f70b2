"""A call finds its key as the clock leaves it: what is due is carried out first (kms/scheduled_work.py),
and a key with nothing due is taken as it is, without entering the due work at all (most calls)."""

from __future__ import annotations

from pathlib import Path

import pytest

from keytrail.clock import ManualClock
from keytrail.kms import scheduled_work
from keytrail.kms.errors import AccessDeniedException, NotFoundException
from keytrail.kms.keys import Key
from keytrail.kms.service import KmsService
from tests.support.allow_all import alice, allow_all_service

DAY = 86400


async def test_due_work_is_entered_only_for_a_key_with_something_due(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, service = allow_all_service(tmp_path)
    arn = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"]
    entered: list[str] = []
    apply_due = scheduled_work.apply_due

    async def noted(svc: KmsService, key: Key) -> Key | None:
        entered.append(key.arn)
        return await apply_due(svc, key)

    monkeypatch.setattr(scheduled_work, "apply_due", noted)
    blob = (await service.execute("Encrypt", alice(), {"KeyId": arn, "Plaintext": b"x"}))["CiphertextBlob"]
    await service.execute("Decrypt", alice(), {"CiphertextBlob": blob})  # its key found by the blob's id
    await service.execute("ScheduleKeyDeletion", alice(), {"KeyId": arn, "PendingWindowInDays": 7})
    assert entered == []

    assert isinstance(service.clock, ManualClock)
    service.clock.advance(8 * DAY)  # the deletion is due: carried out as the next call finds the key
    with pytest.raises(AccessDeniedException):
        await service.execute("Decrypt", alice(), {"CiphertextBlob": blob})
    with pytest.raises(NotFoundException):
        await service.execute("DescribeKey", alice(), {"KeyId": arn})
    assert entered == [arn]
