"""HsmConnections' upkeep at the scheduler's tick: which of this node's sessions it closes, given the
stores as the shared key store holds them (another node may have disconnected or deleted them)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

import pytest

from keytrail.kms import hsm_connections
from keytrail.kms.hsm_connections import HsmConnections
from keytrail.kms.hsm_module import MODULE_ENV, HsmError
from keytrail.kms.hsm_session import TokenSession
from keytrail.kms.keystores import ConnectionState, CustomKeyStore

NOW = datetime(2026, 1, 1, tzinfo=UTC)
STORE = CustomKeyStore("111122223333", "us-east-1", "cks-0", "s", "cluster-abcdefghijk", "pem", "pin", NOW)


class _Session:
    """A session that counts its closes (TokenSession.discard)."""

    def __init__(self) -> None:
        self.closed = 0

    def discard(self) -> None:
        self.closed += 1


async def _closed_by_a_tick(state: ConnectionState | None) -> bool:
    """Whether a tick that reads the store in `state` (None: deleted) closes this node's session."""
    connections, session = HsmConnections(), _Session()
    connections._sessions[STORE.store_id] = cast(TokenSession, session)
    seen = connections.disconnects(STORE.store_id)
    await connections.close_unconnected([] if state is None else [replace(STORE, state=state)])
    assert connections.holding is (session.closed == 0)
    # A call that read the store before the tick does not log in again (HsmConnections.session).
    assert (connections.disconnects(STORE.store_id) != seen) is (session.closed == 1)
    return session.closed == 1


async def test_a_tick_closes_the_sessions_of_stores_no_longer_connected() -> None:
    closed = {state: await _closed_by_a_tick(state) for state in [*ConnectionState, None]}
    assert closed == {
        ConnectionState.CONNECTED: False,
        ConnectionState.CONNECTING: False,  # being connected: its session serves once it is CONNECTED
        ConnectionState.DISCONNECTING: True,
        ConnectionState.DISCONNECTED: True,
        ConnectionState.FAILED: True,
        None: True,
    }


PIN_HINT = "UpdateCustomKeyStore KeyStorePassword"


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "keytrail.kms.hsm"]


def _failing_logins(monkeypatch: pytest.MonkeyPatch, error: HsmError) -> None:
    """Every login of the token fails with `error`, as log_in raises it."""
    def refuse(path: str, cluster: str, pin: str) -> TokenSession:
        raise error
    monkeypatch.setenv(MODULE_ENV, "/the/module.so")
    monkeypatch.setattr(hsm_connections, "open_session", refuse)


@pytest.mark.parametrize(("code", "detail", "hinted"), [
    ("INVALID_CREDENTIALS", "PinIncorrect", True),
    ("USER_NOT_FOUND", "UserPinNotInitialized", True),
    ("USER_LOCKED_OUT", "PinLocked", False),
    ("NETWORK_ERRORS", "the HSM did not answer the login in 3 s", False),
    ("INTERNAL_ERROR", "GeneralError", False),
    ("CLUSTER_NOT_FOUND", "NoSuchToken", False),
])
async def test_a_failed_login_of_a_connected_store_says_to_update_the_pin_only_when_the_token_refused_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, code: str, detail: str, hinted: bool
) -> None:
    _failing_logins(monkeypatch, HsmError(code, detail))
    with caplog.at_level(logging.WARNING, logger="keytrail"), pytest.raises(HsmError):
        await HsmConnections().session(STORE)
    [said] = _warnings(caplog)
    assert STORE.store_id in said and f"{code}: {detail}" in said
    assert (PIN_HINT in said) is hinted


async def test_a_connected_store_without_a_module_says_so_and_gives_no_pin_hint(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(MODULE_ENV, raising=False)
    with caplog.at_level(logging.WARNING, logger="keytrail"), pytest.raises(HsmError):
        await HsmConnections().session(STORE)
    [said] = _warnings(caplog)
    assert f"INTERNAL_ERROR: {MODULE_ENV} is not set" in said and PIN_HINT not in said


@pytest.mark.parametrize(("refusal", "code", "hinted"), [
    (None, "INTERNAL_ERROR", False),  # KEYTRAIL_PKCS11_MODULE names no library: the real loader's refusal
    (HsmError("INVALID_CREDENTIALS", "PinIncorrect"), "INVALID_CREDENTIALS", True),
])
async def test_a_connect_that_fails_logs_one_warning_naming_the_store_and_its_connection_error_code(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, refusal: HsmError | None, code: str,
    hinted: bool,
) -> None:
    # Only DescribeCustomKeyStores said why a ConnectCustomKeyStore ended FAILED: the log said nothing.
    if refusal is None:
        monkeypatch.setenv(MODULE_ENV, "/no/such/pkcs11-module.so")
    else:
        _failing_logins(monkeypatch, refusal)
    with caplog.at_level(logging.WARNING, logger="keytrail"), pytest.raises(HsmError):
        await HsmConnections().connect(replace(STORE, password="the-secret-pin"))
    [said] = _warnings(caplog)
    assert STORE.store_id in said and "FAILED" in said and f"({code}: " in said
    assert (PIN_HINT in said) is hinted
    assert "the-secret-pin" not in caplog.text
