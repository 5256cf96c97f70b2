"""A CreateKey with Origin AWS_CLOUDHSM whose key the key store does not save leaves no backing key in
the HSM with nothing pointing to it; one the store saved after all keeps its backing key (SoftHSM2,
with the key service in this process, which alone can make its store fail)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.keys import Key
from keytrail.kms.service import KmsService
from tests.integration.keystores.in_process import call, hsm_key, service
from tests.support.softhsm import SoftHsm, token_keys

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


def _failing_once(svc: KmsService, monkeypatch: pytest.MonkeyPatch, *, saves: bool) -> None:
    """The store's next put_key raises OSError; `saves`: it saved the key first (a commit whose
    answer was lost)."""
    put_key = svc.store.put_key

    async def failing(key: Key) -> None:
        monkeypatch.setattr(svc.store, "put_key", put_key)
        if saves:
            await put_key(key)
        raise OSError("the disk is full")

    monkeypatch.setattr(svc.store, "put_key", failing)


async def test_a_key_the_store_failed_to_save_leaves_no_backing_key_in_the_hsm(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    _failing_once(svc, monkeypatch, saves=False)
    with pytest.raises(errors.KMSInternalException):
        await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    assert token_keys(hsm.module, cluster) == {key_id}
    assert "was removed" in caplog.text
    made = (await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id))["KeyMetadata"]
    assert token_keys(hsm.module, cluster) == {key_id, made["KeyId"]}  # the store's session was kept
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_key_the_store_saved_although_it_failed_keeps_its_backing_key(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    _failing_once(svc, monkeypatch, saves=True)
    with pytest.raises(errors.KMSInternalException):
        await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    [saved] = [k["KeyId"] for k in (await call(svc, "ListKeys"))["Keys"] if k["KeyId"] != key_id]
    assert token_keys(hsm.module, cluster) == {key_id, saved}
    blob = (await call(svc, "Encrypt", KeyId=saved, Plaintext=b"kept"))["CiphertextBlob"]
    assert (await call(svc, "Decrypt", CiphertextBlob=blob))["Plaintext"] == b"kept"
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)


async def test_a_backing_key_the_hsm_cannot_remove_is_named_in_the_log(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = next(clusters)
    store_id, key_id = await hsm_key(svc, cluster, trust_anchor)
    put_key = svc.store.put_key

    async def disconnected_meanwhile(key: Key) -> None:
        monkeypatch.setattr(svc.store, "put_key", put_key)
        await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
        raise OSError("the disk is full")

    monkeypatch.setattr(svc.store, "put_key", disconnected_meanwhile)
    caplog.set_level(logging.ERROR)
    with pytest.raises(errors.KMSInternalException):
        await call(svc, "CreateKey", Origin="AWS_CLOUDHSM", CustomKeyStoreId=store_id)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)  # its private objects show again
    [left] = token_keys(hsm.module, cluster) - {key_id}
    assert f"(label {left}) was made for a key that was not saved" in caplog.text
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=store_id)
