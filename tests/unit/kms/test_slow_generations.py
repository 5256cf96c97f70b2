"""RSA key generation runs on threads of its own, and refuses calls past a bound of waiting ones."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from keytrail.kms import errors, material
from keytrail.kms.material import THROTTLED, SlowGenerations
from tests.support.allow_all import alice, allow_all_service


async def test_many_slow_generations_leave_the_shared_thread_pool_free_and_past_the_bound_are_throttled() -> None:
    generations = SlowGenerations(threads=1, waiting=4)
    release, ran_on = threading.Event(), []

    def generate() -> bool:
        ran_on.append(threading.current_thread().name)
        return release.wait(5)

    calls = [asyncio.ensure_future(generations.run(generate)) for _ in range(6)]
    await asyncio.sleep(0.05)
    assert await asyncio.to_thread(lambda: "free") == "free"
    # answered while the generations still wait for `release`: not queued behind them
    assert [call.done() for call in calls] == [False] * 4 + [True] * 2
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert ran_on == ["keytrail-keygen_0"] * 4  # one after the other, on the generations' own thread
    refused = [r for r in results if isinstance(r, errors.ThrottlingException)]
    assert len(refused) == 2 and refused[0].message == THROTTLED
    assert results[:4] == [True] * 4
    assert await generations.run(lambda: "again") == "again"  # the bound counts calls still waiting only


async def test_create_key_past_the_bound_is_throttling_exception(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(material, "SLOW_GENERATIONS", SlowGenerations(threads=1, waiting=0))
    _, service = allow_all_service(tmp_path)
    with pytest.raises(errors.ThrottlingException):
        await service.execute("CreateKey", alice(), {"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"})
    await service.execute("CreateKey", alice(), {"KeySpec": "ECC_NIST_P256", "KeyUsage": "SIGN_VERIFY"})  # not RSA
