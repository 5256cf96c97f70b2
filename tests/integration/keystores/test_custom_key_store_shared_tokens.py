"""Custom key stores that share one token, as a data directory made before one token backed one store
holds them: reported once in the log (at the node's start, or at a Connect), and connected one at a
time, since a PKCS#11 login belongs to the whole token (SoftHSM2, the key service in this process)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from keytrail.kms.keystores import CloudHsmClusterInUseException, CustomKeyStore
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import ACCOUNT, REGION, call, service
from tests.support.softhsm import SoftHsm, open_sessions

pytestmark = pytest.mark.integration

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FIRST, SECOND = "cks-00000000000000001", "cks-00000000000000002"


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _stores_sharing(svc: KmsService, cluster: str, trust_anchor: str) -> None:
    """Two stores on one token, written as an older keytrail wrote them (no rule kept them apart)."""
    for store_id in (FIRST, SECOND):
        await svc.store.put_custom_key_store(
            CustomKeyStore(ACCOUNT, REGION, store_id, f"old-{store_id}", cluster, trust_anchor, PIN, NOW))


def _reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "share the HSM token" in r.getMessage()]


async def _state(svc: KmsService, store_id: str) -> str:
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    return str(entry["ConnectionState"])


async def test_stores_sharing_a_token_are_reported_once_at_start(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = next(clusters)
    await _stores_sharing(svc, cluster, trust_anchor)
    caplog.set_level(logging.ERROR)
    await svc.run_due()  # the start's first pass of the scheduler
    await svc.run_due()
    [report] = _reports(caplog)
    assert FIRST in report and SECOND in report and repr(cluster) in report
    assert PIN not in caplog.text


async def test_a_store_whose_token_another_connected_store_shares_is_refused_at_connect(
    svc: KmsService, hsm: SoftHsm, clusters: Iterator[str], trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # Both used to connect, sharing the token's login: the second one's login was refused as
    # USER_LOGGED_IN on every call, or the first one's Disconnect logged the second out.
    cluster = next(clusters)
    await _stores_sharing(svc, cluster, trust_anchor)
    caplog.set_level(logging.ERROR)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=FIRST)
    for _ in range(2):
        with pytest.raises(CloudHsmClusterInUseException, match="shares its HSM token with another custom key store"):
            await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=SECOND)
    assert [await _state(svc, FIRST), await _state(svc, SECOND)] == ["CONNECTED", "DISCONNECTED"]
    assert len(_reports(caplog)) == 1
    assert open_sessions(hsm.module, cluster) == 1
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=FIRST)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=SECOND)  # one at a time
    assert [await _state(svc, FIRST), await _state(svc, SECOND)] == ["DISCONNECTED", "CONNECTED"]
    assert len((await call(svc, "GenerateRandom", NumberOfBytes=8, CustomKeyStoreId=SECOND))["Plaintext"]) == 8
    await call(svc, "DisconnectCustomKeyStore", CustomKeyStoreId=SECOND)
    assert open_sessions(hsm.module, cluster) == 0
