"""UpdateAlias and DeleteAlias act on the alias as it is when they write it. Each reads the alias,
checks the caller and the keys against that, and may wait in between (UpdateAlias for its new
target's lock, which another call holds; a node sharing the PostgreSQL store waits on the database
too): another call may change the alias meanwhile, and a write over whatever was there then undid
that change unchecked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from keytrail.kms.store import Alias
from tests.support.allow_all import ACCOUNT, alice, allow_all_service

REGION = "us-east-1"


async def _key(service: KmsService, **params: str) -> str:
    return str((await service.execute("CreateKey", alice(), params))["KeyMetadata"]["KeyId"])


@asynccontextmanager
async def _changing(service: KmsService, key_id: str) -> AsyncIterator[None]:
    """Another call holds `key_id`'s lock (in a task of its own) until exit."""
    holding, done = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with service.key_lock(ACCOUNT, REGION, key_id):
            holding.set()
            await done.wait()

    task = asyncio.create_task(holder())
    await holding.wait()
    try:
        yield
    finally:
        done.set()
        await task


async def _waiting(task: asyncio.Task[object]) -> None:
    """Let `task` run until it waits (for a lock): nothing else it awaits takes a loop pass."""
    for _ in range(20):
        await asyncio.sleep(0)
    assert not task.done()


async def _update(service: KmsService, target: str) -> asyncio.Task[object]:
    task: asyncio.Task[object] = asyncio.create_task(
        service.execute("UpdateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": target}))
    await _waiting(task)
    return task


async def test_an_update_that_waited_for_its_target_is_checked_against_the_alias_made_again_meanwhile(
        tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    first, target = await _key(service), await _key(service)
    hmac = await _key(service, KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": first})
    async with _changing(service, target):
        update = await _update(service, target)  # read the alias on `first`, a symmetric key like `target`
        await service.execute("DeleteAlias", alice(), {"AliasName": "alias/app"})
        await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": hmac})
    # The alias is on an HMAC key now: a symmetric key may not follow it (the rule UpdateAlias keeps).
    with pytest.raises(errors.ValidationException, match="must be the same type"):
        await update
    alias = await store.get_alias(ACCOUNT, REGION, "alias/app")
    assert alias is not None and alias.key_id == hmac


async def test_an_update_that_waited_for_its_target_keeps_the_creation_date_of_the_alias_it_moves(
        tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    first, again, target = await _key(service), await _key(service), await _key(service)
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": first})
    async with _changing(service, target):
        update = await _update(service, target)
        await service.execute("DeleteAlias", alice(), {"AliasName": "alias/app"})
        service.clock.advance(3600)  # type: ignore[attr-defined]
        await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": again})
        made = await store.get_alias(ACCOUNT, REGION, "alias/app")
    await update
    moved = await store.get_alias(ACCOUNT, REGION, "alias/app")
    assert made is not None and moved is not None
    assert (moved.key_id, moved.creation_date) == (target, made.creation_date)  # not the deleted alias's date


async def test_an_update_that_waited_for_its_target_does_not_bring_back_an_alias_deleted_meanwhile(
        tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    first, target = await _key(service), await _key(service)
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": first})
    async with _changing(service, target):
        update = await _update(service, target)
        await service.execute("DeleteAlias", alice(), {"AliasName": "alias/app"})
    with pytest.raises(errors.NotFoundException):
        await update
    assert await store.get_alias(ACCOUNT, REGION, "alias/app") is None


async def test_the_store_changes_and_deletes_an_alias_only_as_it_was_read(tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    first, second = await _key(service), await _key(service)
    await service.execute("CreateAlias", alice(), {"AliasName": "alias/app", "TargetKeyId": first})
    read = await store.get_alias(ACCOUNT, REGION, "alias/app")
    assert read is not None
    moved = Alias(ACCOUNT, REGION, "alias/app", second, read.creation_date, read.last_updated_date)
    assert await store.update_alias(moved, was=read)
    # `read` is stale now: neither a write nor a delete made on it goes through.
    assert not await store.update_alias(read, was=read)
    assert not await store.delete_alias(read, if_unchanged=True)
    assert await store.get_alias(ACCOUNT, REGION, "alias/app") == moved
    assert await store.delete_alias(moved, if_unchanged=True)
    assert not await store.delete_alias(moved, if_unchanged=True)  # gone already
