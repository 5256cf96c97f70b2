"""Custom key stores that share one HSM token, which keytrail no longer lets happen (one token, one
store, as one CloudHSM cluster): stores made by an older version, or two cluster ids that
`$KEYTRAIL_PKCS11_TOKENS` now maps to one label. A PKCS#11 login belongs to the whole token in a
process, so two such stores connected at once would share one login, and either one's Disconnect
would log the other out. Such stores are reported once in the log, and connected one at a time; two
found connected at once (a data dir from before that rule) keep the first connected only
(operations/hsm_upkeep.py)."""

from __future__ import annotations

import logging
from collections import defaultdict

from keytrail.kms.hsm_module import token_label
from keytrail.kms.keystores import ConnectionState, CustomKeyStore

__all__ = ["SharedTokens", "connected_after_another", "holding_the_token"]

log = logging.getLogger("keytrail.kms.hsm")

# The states in which a store may hold (or be taking) the token's login on some node.
_HOLDING = frozenset({ConnectionState.CONNECTED, ConnectionState.CONNECTING, ConnectionState.DISCONNECTING})


def holding_the_token(store: CustomKeyStore, stores: list[CustomKeyStore]) -> list[CustomKeyStore]:
    """The other stores of `stores` on `store`'s token that are connected (or connecting, or not yet
    disconnected): `store` cannot connect while there are any."""
    label = token_label(store.cluster_id)
    return [s for s in stores if s.store_id != store.store_id and token_label(s.cluster_id) == label
            and s.state in _HOLDING]


def connected_after_another(stores: list[CustomKeyStore]) -> list[tuple[CustomKeyStore, CustomKeyStore]]:
    """(first, other) for each store of `stores` CONNECTED on the token of another CONNECTED store
    created before it (the first of them by CreationDate, then id, is the same on every node)."""
    by_label: defaultdict[str, list[CustomKeyStore]] = defaultdict(list)
    for store in stores:
        if store.state is ConnectionState.CONNECTED:
            by_label[token_label(store.cluster_id)].append(store)
    pairs = []
    for connected in by_label.values():
        first, *others = sorted(connected, key=lambda s: (s.creation_date, s.store_id))
        pairs += [(first, other) for other in others]
    return pairs


class SharedTokens:
    """Says in the log, once per process and group of stores, which stores share a token."""

    def __init__(self) -> None:
        self._said: set[frozenset[str]] = set()

    def report(self, stores: list[CustomKeyStore]) -> None:
        """Log each group of stores of `stores` that share a token and was not logged before."""
        by_label: defaultdict[str, list[CustomKeyStore]] = defaultdict(list)
        for store in stores:
            by_label[token_label(store.cluster_id)].append(store)
        for label, sharing in sorted(by_label.items()):
            ids = frozenset(s.store_id for s in sharing)
            if len(sharing) > 1 and ids not in self._said:
                self._said.add(ids)
                _say(label, sharing)


def _say(label: str, sharing: list[CustomKeyStore]) -> None:
    names = ", ".join(f"{s.store_id} ({s.account} {s.region}, {s.state.value})"
                      for s in sorted(sharing, key=lambda s: s.store_id))
    log.error("custom key stores %s share the HSM token %r (made before one token backed one store): only one "
              "of them can be connected at a time, and ConnectCustomKeyStore of another answers "
              "CloudHsmClusterInUseException; give each its own token with UpdateCustomKeyStore "
              "(docs/custom-key-stores.md)", names, label)
