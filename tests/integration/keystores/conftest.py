"""Fixtures of the key store tests: one SoftHSM2 token directory for the whole session, and a
PostgreSQL database of each test's own (`dsn`).

A PKCS#11 module reads its configuration once per process, so the test process and every
server it starts share one SOFTHSM2_CONF with enough tokens for every test (a token backs one
custom key store only, as a CloudHSM cluster does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from keytrail.kms.hsm_thread import TIMEOUT_ENV
from tests.support.certificates import self_signed_pem
from tests.support.postgres import fresh_database
from tests.support.softhsm import SoftHsm, softhsm_module, softhsm_token

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService
    from tests.integration.keystores.flaky_token import Faults

PIN = "kmsuser-pin-1"
# Enough for every test of this folder run in one process (`pytest tests/integration/keystores`
# without xdist used 91 of them); a token takes ≈ 16 ms to make.
_SUFFIXES = [*"abcdefghijklmnopqrstuvwxyz", *(first + letter for first in "zyxwvu" for letter in "abcdefghijklmnop")]
CLUSTERS = [f"cluster-keytrailtest{suffix}" for suffix in _SUFFIXES]


@pytest.fixture(scope="session")
def hsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    module = softhsm_module()
    if module is None:
        pytest.skip("SoftHSM2 is not installed (Debian package softhsm2: libsofthsm2.so and softhsm2-util)")
    directory = tmp_path_factory.mktemp("softhsm")
    tokens = [softhsm_token(directory, label, PIN, module) for label in CLUSTERS]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in tokens[0].env.items():
            patch.setenv(name, value)
        yield tokens[0]


@pytest.fixture(scope="session")
def clusters(hsm: SoftHsm) -> Iterator[str]:
    """Hands out token labels (cluster ids) no store has used yet."""
    return iter(CLUSTERS)


@pytest.fixture(scope="session")
def trust_anchor() -> str:
    return self_signed_pem("keytrail test HSM issuer")


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    """A database of the test's own, dropped afterwards."""
    async with fresh_database() as database:
        yield database


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Faults:
    """Failures to inject into the PKCS#11 sessions of this process (flaky_token.py)."""
    from tests.integration.keystores.flaky_token import flaky_logins  # it imports this module

    return flaky_logins(monkeypatch)


IMPATIENT_TIMEOUT = 0.3  # seconds each PKCS#11 call is given by the `impatient` service


@pytest.fixture
async def impatient(tmp_path: Path, hsm: SoftHsm, faults: Faults, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[
        KmsService]:
    """The key service in this process, giving each PKCS#11 call IMPATIENT_TIMEOUT seconds."""
    from tests.integration.keystores.in_process import service  # it imports this module

    monkeypatch.setenv(TIMEOUT_ENV, str(IMPATIENT_TIMEOUT))
    async with service(tmp_path) as running:
        yield running
