"""Ports for keeping keys, aliases and grants. The service depends on these Protocols only."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from keytrail.kms.importing import ImportParameters
from keytrail.kms.keys import Key
from keytrail.kms.keystores import CustomKeyStore
from keytrail.kms.model import CallRecord
from keytrail.kms.tampering import Tampering

__all__ = [
    "Alias", "AliasStore", "CustomKeyStoreStore", "Grant", "GrantPosition", "GrantStore", "ImportStore", "KeyPosition",
    "KeyStore", "OwedRecordStore", "OwedWrites", "Store", "grant_position", "key_position",
]

# Where a key stands in ListKeys: its creation date as a POSIX timestamp (as ListKeys' markers have
# held it), then its id.
KeyPosition = tuple[float, str]
# Where a grant stands in ListGrants: its creation date as a POSIX timestamp, then its id.
GrantPosition = tuple[float, str]


@dataclass(frozen=True, slots=True)
class Alias:
    account: str
    region: str
    name: str  # alias/...
    key_id: str
    creation_date: datetime
    last_updated_date: datetime


@dataclass(frozen=True, slots=True)
class Grant:
    """A grant on a key, as CreateGrant made it (constraints as AWS's JSON shape)."""

    account: str
    region: str
    key_id: str
    grant_id: str
    grantee_principal: str
    operations: tuple[str, ...]
    issuing_account: str
    creation_date: datetime
    token: str = field(repr=False)
    name: str | None = None
    retiring_principal: str | None = None
    constraints: dict[str, Any] | None = None



def key_position(key: Key) -> KeyPosition:
    """Where `key` stands in ListKeys (as its markers say)."""
    return key.creation_date.timestamp(), key.key_id


def grant_position(grant: Grant) -> GrantPosition:
    """Where `grant` stands in ListGrants and ListRetirableGrants (as their markers say)."""
    return grant.creation_date.timestamp(), grant.grant_id

class KeyStore(Protocol):
    async def get_key(self, account: str, region: str, key_id: str) -> Key | None: ...
    async def put_key(self, key: Key) -> None: ...
    async def put_keys(self, keys: Sequence[Key]) -> None:
        """Store several keys (the copies of a multi-Region key) in one transaction."""
        ...
    async def delete_key(self, key: Key, changed: Sequence[Key] = ()) -> None:
        """Remove the key, its aliases and its grants, and store `changed` (its other copies),
        atomically."""
        ...
    async def list_keys(self, account: str, region: str) -> list[Key]: ...
    async def list_keys_page(self, account: str, region: str, after: KeyPosition | None, limit: int) -> list[Key]:
        """At most `limit` keys of the account and Region in ListKeys' order (by creation date, then
        key id), after `after` only (where a key stands or stood: it may be gone): a page of ListKeys,
        read without the other keys, which the account may hold 100,000 of."""
        ...
    async def count_keys(self, account: str, region: str) -> int:
        """How many keys the account has in the Region, every key state (the keys quota)."""
        ...
    async def all_keys(self) -> list[Key]: ...
    def key_lock(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[None]:
        """Hold off every other writer of this key (in every node sharing the store) until exit,
        so a read-modify-write of the key loses no one else's change. Re-entrant in one task."""
        ...
    def key_lock_if_free(self, account: str, region: str, key_id: str) -> AbstractAsyncContextManager[bool]:
        """`key_lock` if no one (in any node) holds it now: True, held until exit; else False at
        once, holding nothing. A lock a node held goes with the node (its process, or its database
        session), so holding it tells that no live node is inside the work it guards."""
        ...


class AliasStore(Protocol):
    async def get_alias(self, account: str, region: str, name: str) -> Alias | None: ...
    async def put_alias(self, alias: Alias) -> None: ...
    async def add_alias(self, alias: Alias) -> bool:
        """Store a new alias; False, changing nothing, when its name is taken (on any node)."""
        ...
    async def update_alias(self, alias: Alias, *, was: Alias | None = None) -> bool:
        """Store an alias over the one of its name; False, changing nothing, when there is none, or
        (`was` given) when the one there is no longer `was`: another call changed it since it was read."""
        ...
    async def delete_alias(self, alias: Alias, *, if_unchanged: bool = False) -> bool:
        """Delete the alias of its name; with `if_unchanged`, only while it is `alias` as read
        (False, changing nothing, once another call changed or deleted it)."""
        ...
    async def list_aliases(self, account: str, region: str) -> list[Alias]: ...
    async def list_aliases_page(self, account: str, region: str, after: str | None, limit: int,
                                key_id: str | None = None) -> list[Alias]:
        """Up to `limit` aliases of the account and Region in name order (by code point), after the
        name `after` only (an alias's that may be gone), of the key `key_id` only when one is given:
        a page of ListAliases, read without the account's other aliases."""
        ...


class GrantStore(Protocol):
    async def put_grant(self, grant: Grant) -> None: ...
    async def delete_grant(self, grant: Grant) -> bool:
        """Delete the grant; False, changing nothing, when it is gone already (on any node)."""
        ...
    async def list_grants(self, account: str, region: str, key_id: str) -> list[Grant]: ...
    async def list_grants_page(self, account: str, region: str, key_id: str, after: GrantPosition | None,
                               limit: int, grantee: str | None = None) -> list[Grant]:
        """At most `limit` of the key's grants in `list_grants`' order (by creation date, then grant
        id), after `after` only (where a grant stands or stood: it may be gone), and to `grantee`
        only when one is given: a page of ListGrants, read without the key's other grants, which
        may be 50,000."""
        ...
    async def grants_to(self, account: str, region: str, key_id: str, grantees: Collection[str]) -> list[Grant]:
        """The key's grants whose grantee is one of `grantees`, in `list_grants`' order."""
        ...
    async def grants_allowing(self, account: str, region: str, key_id: str, grantees: Collection[str],
                              operation: str, context: Mapping[str, str]) -> list[Grant]:
        """The key's grants that may allow `operation` with the encryption context `context` to one of
        `grantees`: those filed under the request's terms (kms/grants.py: `request_terms`), in any
        order, read without the others (a caller may hold 50,000 grants on a key, each for another
        context). Every grant that allows the request is among them."""
        ...
    async def get_grant(self, account: str, region: str, key_id: str, grant_id: str) -> Grant | None: ...
    async def count_grants(self, account: str, region: str, key_id: str) -> int: ...
    async def all_grants(self, region: str) -> list[Grant]:
        """Every grant on a key in `region`, whichever account owns the key."""
        ...
    async def grants_retirable_by(self, region: str, retiring_principal: str) -> list[Grant]:
        """Every grant on a key in `region`, whichever account owns the key, whose retiring principal
        is `retiring_principal` (ListRetirableGrants), read without the Region's other grants."""
        ...


class ImportStore(Protocol):
    """GetParametersForImport's wrapping keys, kept (sealed) until their import token expires."""

    async def put_import_parameters(self, parameters: ImportParameters) -> None: ...
    async def get_import_parameters(self, token_id: str) -> ImportParameters | None: ...
    async def delete_expired_import_parameters(self, now: datetime) -> None:
        """Delete the parameters whose import token expired before `now` (the scheduler's tick)."""
        ...


class CustomKeyStoreStore(Protocol):
    """Custom key stores of an account and Region; the key store password is sealed at rest."""

    async def put_custom_key_store(self, store: CustomKeyStore) -> None: ...
    async def delete_custom_key_store(self, store: CustomKeyStore) -> None: ...
    async def list_custom_key_stores(self, account: str, region: str) -> list[CustomKeyStore]: ...
    async def all_custom_key_stores(self) -> list[CustomKeyStore]:
        """Every custom key store that verifies, whichever account and Region: an HSM token is the
        node's, so one store in all of them may use it."""
        ...


@dataclass(slots=True)
class OwedWrites:
    """Whether a write carrying the record a call owes was committed (`OwedRecordStore.owing`), or
    sent to commit (`sent`): a commit whose answer was lost (the connection dropped) may stand."""

    written: bool = False
    sent: bool = False


class OwedRecordStore(Protocol):
    """The audit records changes owe (the transactional outbox; kms/owed_calls.py): a call's record
    is written in the same transaction as each of its changes, and deleted once the spool took it."""

    def owing(self, record: Callable[[], CallRecord]) -> AbstractAsyncContextManager[OwedWrites]:
        """Within it, every write of this task also writes `record()` (called at each write: the
        call as it stands) in the same transaction, over the row of its event id. Nested, each
        level's record is written (a call's, and those of the SynchronizeMultiRegionKey calls its
        write makes)."""
        ...
    async def owe_record(self, record: CallRecord) -> None:
        """Write `record` over the owed row of its event id (or as a new one)."""
        ...
    async def owed_records(self) -> list[CallRecord]:
        """Every owed record that verifies, oldest first: a refused row is logged, never recorded."""
        ...
    async def owed_record(self, event_id: str) -> CallRecord | None:
        """The owed record of `event_id` as it is now; None if it is settled (or its row is refused)."""
        ...
    async def owed_within_grace(self) -> set[str]:
        """The event ids of the owed rows a tick leaves to the call that wrote them, which may be
        another node's, still making its record durable: none where this process is the store's
        only writer (its own calls in flight are known), else those written too recently, by a clock
        every node sharing the store reads (never a node's own, which may be moved)."""
        ...
    async def settle_record(self, event_id: str) -> None:
        """Delete the owed row of `event_id`: its record is durable."""
        ...


class Store(KeyStore, AliasStore, GrantStore, ImportStore, CustomKeyStoreStore, OwedRecordStore, Protocol):
    """Everything a node keeps about keys; one implementation per backend (SQLite, PostgreSQL)."""

    # The rows it refused and the ledger mismatch it found since it opened (kms/tampering.py), for /metrics.
    tampering: Tampering

    async def ping(self) -> None:
        """Raise unless the backend answers a trivial query now (the health check asks)."""
        ...

    async def close(self) -> None: ...
