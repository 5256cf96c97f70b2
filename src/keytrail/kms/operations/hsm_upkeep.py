"""The HSM's work at each scheduler tick (and at the node's start, its first tick): custom key stores a
crash left CONNECTING or DISCONNECTING are settled, stores of an old data dir connected on one token
are brought down to one, and this node's sessions of stores no longer CONNECTED are closed.

Every change of an account's custom key stores holds its STORES_LOCK from its first write to its
last (operations/keystores.py), and a lock a node holds goes with it: with SQLite the node is the
store's only process, and PostgreSQL ends a dead node's session, and its advisory locks with it. So a
store found CONNECTING or DISCONNECTING while that lock is free was left so by a node that stopped
in the middle: no live node will ever finish it. The lock is only tried, never waited for: a node
whose database session outlives it (a machine gone, until PostgreSQL's keepalive ends the session)
would otherwise hold up this node's tick, and the rotations and deletions in it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from keytrail.kms.hsm import HsmConnections
from keytrail.kms.hsm_module import token_label
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.operations.hsm_keys import STORES_LOCK, set_availability, store_named
from keytrail.kms.shared_tokens import connected_after_another

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["LEFT_OVER_ERROR", "SHARED_TOKEN_ERROR", "upkeep"]

# The name of the module these lines came from before it was split: logging set up for it holds.
log = logging.getLogger("keytrail.kms.hsm")

# ConnectionErrorCode of a connect that never ended. AWS: "KMS could not complete the request due to
# an internal error. Retry the request. For ConnectCustomKeyStore requests, disconnect the custom key
# store before trying to connect again." (CustomKeyStoresListEntry, botocore's KMS model)
LEFT_OVER_ERROR = "INTERNAL_ERROR"
# ConnectionErrorCode of a store whose token another connected store is logged in to. AWS: "The
# kmsuser CU account is logged into the associated CloudHSM cluster. [...] Before you can connect your
# custom key store to its CloudHSM cluster, you must log the kmsuser CU out of the cluster."
SHARED_TOKEN_ERROR = "USER_LOGGED_IN"

_TRANSITIONAL = frozenset({ConnectionState.CONNECTING, ConnectionState.DISCONNECTING})


def upkeep(svc: KmsService, connections: HsmConnections) -> Callable[[], Awaitable[None]]:
    """The HSM's work at each scheduler tick; at the first, also report the stores that share a
    token (kms/shared_tokens.py). The stores are read at every tick, as `run_due` reads every key."""
    started = False

    async def tick() -> None:
        nonlocal started
        stores = await svc.store.all_custom_key_stores()
        if not started:
            connections.shared.report(stores)
            started = True
        changed = [await _settle_left_over(svc, s) for s in stores if s.state in _TRANSITIONAL]
        changed += [await _fail_second(svc, extra) for _, extra in connected_after_another(stores)]
        if any(changed):
            stores = await svc.store.all_custom_key_stores()
        await connections.close_unconnected(stores)

    return tick


async def _settle_left_over(svc: KmsService, store: CustomKeyStore) -> bool:
    """Settle the store if a crash left it CONNECTING (FAILED, LEFT_OVER_ERROR) or DISCONNECTING
    (the disconnect finished: its keys Unavailable, DISCONNECTED); whether it changed. The dead
    node's sessions went with its process, the others' close at this tick (`close_unconnected`)."""
    async with svc.store.key_lock_if_free(store.account, store.region, STORES_LOCK) as free:
        current = await store_named(svc, store.account, store.region, store.store_id) if free else None
        if current is None or current.state not in _TRANSITIONAL:
            return False  # a live node is at work on it (the lock is taken), or it is settled already
        # Keys of a store that is not connected are Unavailable: a disconnect that stopped half way
        # left some keys Enabled, and a connect left over keeps them as they were.
        await set_availability(svc, current, available=False)
        if current.state is ConnectionState.CONNECTING:
            await svc.store.put_custom_key_store(current.with_state(ConnectionState.FAILED, LEFT_OVER_ERROR))
            log.warning("custom key store %s (%s %s) was left CONNECTING by a node that stopped while connecting "
                        "it: it is now FAILED with %s; disconnect it, then connect it again", current.store_id,
                        current.account, current.region, LEFT_OVER_ERROR)
        else:
            await svc.store.put_custom_key_store(current.with_state(ConnectionState.DISCONNECTED))
            log.warning("custom key store %s (%s %s) was left DISCONNECTING by a node that stopped while "
                        "disconnecting it: its disconnect is finished, it is now DISCONNECTED", current.store_id,
                        current.account, current.region)
        return True


async def _fail_second(svc: KmsService, extra: CustomKeyStore) -> bool:
    """Move `extra`, CONNECTED on the token of another store (connected, and created before it), to
    FAILED with SHARED_TOKEN_ERROR, its keys Unavailable: one login of the token cannot serve both,
    and whichever store's call came first on a node took it, failing the other's calls there.
    Checked again, and the other store found again, under `extra`'s lock; whether it changed."""
    async with svc.store.key_lock_if_free(extra.account, extra.region, STORES_LOCK) as free:
        pairs = connected_after_another(await svc.store.all_custom_key_stores()) if free else []
        found = next(((first, second) for first, second in pairs if second.store_id == extra.store_id), None)
        if found is None:
            return False
        kept, current = found
        await set_availability(svc, current, available=False)
        await svc.store.put_custom_key_store(current.with_state(ConnectionState.FAILED, SHARED_TOKEN_ERROR))
        log.error("custom key stores %s (%s %s) and %s (%s %s) were both CONNECTED on the HSM token %r (made "
                  "before one token backed one store), whose one login cannot serve both: %s, created first, stays "
                  "connected, and %s is now FAILED with %s. Disconnect it and give it a token of its own with "
                  "UpdateCustomKeyStore (docs/custom-key-stores.md)", kept.store_id, kept.account, kept.region,
                  current.store_id, current.account, current.region, token_label(current.cluster_id),
                  kept.store_id, current.store_id, SHARED_TOKEN_ERROR)
        return True
