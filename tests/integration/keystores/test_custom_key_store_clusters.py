"""Which custom key store a token (the "cluster") belongs to, with the key service in this process
over SoftHSM2: a token backs one store on the whole node, whatever id names it.

The file name sorts before test_custom_key_stores.py on purpose (see test_custom_key_store_sessions.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keytrail.kms.hsm import TOKENS_ENV
from keytrail.kms.keystores import CloudHsmClusterInUseException
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import call, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def _create(svc: KmsService, name: str, cluster: str, trust_anchor: str) -> str:
    return str((await call(
        svc, "CreateCustomKeyStore", CustomKeyStoreName=name, CloudHsmClusterId=cluster,
        TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN,
    ))["CustomKeyStoreId"])


async def test_two_cluster_ids_naming_one_token_are_one_cluster(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # KEYTRAIL_PKCS11_TOKENS maps a cluster id to the token's label, and an unmapped id is the label
    # itself: both ids reach the same token, whose login the two stores would share.
    token, other = next(clusters), next(clusters)
    monkeypatch.setenv(TOKENS_ENV, f"cluster-mappedtokenaaaa={token}")
    await _create(svc, "by-label", token, trust_anchor)
    with pytest.raises(CloudHsmClusterInUseException):
        await _create(svc, "by-map", "cluster-mappedtokenaaaa", trust_anchor)
    moved = await _create(svc, "elsewhere", other, trust_anchor)
    with pytest.raises(CloudHsmClusterInUseException):
        await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=moved, CloudHsmClusterId="cluster-mappedtokenaaaa")
    monkeypatch.setenv(TOKENS_ENV, f"cluster-mappedtokenaaaa={other}")  # now the id of the store's own token
    await call(svc, "UpdateCustomKeyStore", CustomKeyStoreId=moved, CloudHsmClusterId="cluster-mappedtokenaaaa")
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=moved))["CustomKeyStores"]
    assert entry["CloudHsmClusterId"] == "cluster-mappedtokenaaaa"
