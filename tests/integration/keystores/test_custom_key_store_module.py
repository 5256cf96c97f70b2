"""A KEYTRAIL_PKCS11_MODULE that names no loadable library (a wrong path, a file that is not a shared
library, a shared library that is no PKCS#11 module): the node's configuration, said as such to the
caller and, with the loader's reason, in the log. In-process service; the real SoftHSM2 module stays
loaded under its own path meanwhile."""

from __future__ import annotations

import _ctypes
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.hsm_module import MODULE_ENV
from keytrail.kms.service import KmsService
from tests.integration.keystores.conftest import PIN
from tests.integration.keystores.in_process import call, service
from tests.support.softhsm import SoftHsm

pytestmark = pytest.mark.integration


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


@pytest.fixture(params=["a text file", "a shared library without C_GetFunctionList"])
def not_a_module(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A path of the test's own: a path that failed to load is said once per process."""
    path = tmp_path / "libtypo_pkcs11.so"
    if request.param == "a text file":
        path.write_text("not a shared library\n")
    else:
        # One that loads wherever this runs: Python's own ctypes extension. pkcs11.lib() refused it with
        # a bare PKCS11Error ("undefined symbol: C_GetFunctionList"), read as the HSM down for a while.
        shutil.copyfile(str(_ctypes.__file__), path)
    return path


def _not_a_module(not_a_module: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(MODULE_ENV, str(not_a_module))
    return not_a_module


async def test_a_module_that_does_not_load_is_an_invalid_configuration_said_once_in_the_log(
    svc: KmsService, not_a_module: Path, monkeypatch: pytest.MonkeyPatch, clusters: Iterator[str],
    trust_anchor: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # It answered CloudHsmClusterNotActiveException ("cannot list its tokens now"), as if the HSM
    # were down for a while, and nothing in the log named the path or why it did not load.
    path = _not_a_module(not_a_module, monkeypatch)
    caplog.set_level(logging.ERROR, logger="keytrail")
    for name in ("first", "second"):
        with pytest.raises(errors.KmsError) as refused:
            await call(svc, "CreateCustomKeyStore", CustomKeyStoreName=name, CloudHsmClusterId=next(clusters),
                       TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN)
        assert refused.value.code == "CloudHsmClusterInvalidConfigurationException"
        assert str(path) not in str(refused.value)  # the server's file system is not the caller's business
    said = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(said) == 1 and MODULE_ENV in said[0]


async def test_connecting_with_a_module_that_does_not_load_fails_the_store(
    svc: KmsService, not_a_module: Path, monkeypatch: pytest.MonkeyPatch, clusters: Iterator[str], trust_anchor: str,
) -> None:
    store_id = (await call(svc, "CreateCustomKeyStore", CustomKeyStoreName="s", CloudHsmClusterId=next(clusters),
                           TrustAnchorCertificate=trust_anchor, KeyStorePassword=PIN))["CustomKeyStoreId"]
    _not_a_module(not_a_module, monkeypatch)
    await call(svc, "ConnectCustomKeyStore", CustomKeyStoreId=store_id)
    [entry] = (await call(svc, "DescribeCustomKeyStores", CustomKeyStoreId=store_id))["CustomKeyStores"]
    assert (entry["ConnectionState"], entry.get("ConnectionErrorCode")) == ("FAILED", "INTERNAL_ERROR")
