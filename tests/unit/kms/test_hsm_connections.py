"""HsmConnections' upkeep at the scheduler's tick: which of this node's sessions it closes, given the
stores as the shared key store holds them (another node may have disconnected or deleted them)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import cast

from keytrail.kms.hsm_connections import HsmConnections
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
