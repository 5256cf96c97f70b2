"""Keys in custom key stores: CreateKey with Origin AWS_CLOUDHSM (a non-extractable AES-256 key generated
inside the store's HSM, and removed again if the key is not saved), and GenerateRandom from a store's
HSM; and what the store operations (operations/keystores.py) and the HSM's upkeep (operations/hsm_upkeep.py)
share: the lookups of a call's stores, their lock, and the availability of a store's keys."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar, cast

from pkcs11 import exceptions as p11

from keytrail.kms import errors
from keytrail.kms.calls import Call
from keytrail.kms.hsm import HsmCipher, HsmConnections, TokenSession
from keytrail.kms.hsm_failures import error_name
from keytrail.kms.keys import Key, KeyMaterial
from keytrail.kms.keystores import CLUSTER_ID, ConnectionState, CustomKeyStore, backing_keys
from keytrail.kms.model import KeySpec, KeyState

if TYPE_CHECKING:
    from keytrail.kms.service import KmsService

__all__ = ["STORES_LOCK", "as_its_store_leaves_it", "connections_of", "create_hsm_key", "delete_hsm_key",
           "discard_hsm_key", "find_store", "keys_in", "name_the_cluster", "note_backing_key", "random_from_store",
           "set_availability", "store_named", "stores_locked", "stores_of"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# The key lock, under a name no key id can have, that every change of an account's custom key
# stores in a Region holds (operations/keystores.py), from its first write to its last.
STORES_LOCK = "custom-key-stores"


def connections_of(svc: KmsService) -> HsmConnections:
    """The service's live HSM sessions (operations/keystores.py's `install` registered them)."""
    return cast(HsmCipher, svc.ciphers["hsm"]).connections


async def stores_of(svc: KmsService, call: Call) -> list[CustomKeyStore]:
    """The custom key stores of the call's account and Region."""
    return await svc.store.list_custom_key_stores(call.context.account, call.context.region)


async def store_named(svc: KmsService, account: str, region: str, store_id: str | None) -> CustomKeyStore | None:
    """The account's store `store_id` in the Region as the key store holds it now; None if there is none."""
    stores = await svc.store.list_custom_key_stores(account, region)
    return next((s for s in stores if s.store_id == store_id), None)


async def find_store(svc: KmsService, call: Call, store_id: str) -> CustomKeyStore:
    """The call's account's store `store_id` in its Region; CustomKeyStoreNotFoundException if none."""
    found = await store_named(svc, call.context.account, call.context.region, store_id)
    if found is None:
        raise errors.CustomKeyStoreNotFoundException(f"Custom key store {store_id} does not exist.")
    return found


def stores_locked(svc: KmsService, key: Key) -> AbstractAsyncContextManager[None]:
    """CreateKey's OriginLock for a key in a custom key store: the lock every change of the account's
    stores in the Region holds. A Disconnect or a Delete (of any node) then comes wholly before the key
    is made, which finds the store no longer CONNECTED, or wholly after it is saved, and finds the key
    (Unavailable; no store deleted under it). Read before, the store was seen CONNECTED while another
    node's Disconnect passed over the keys and its Delete found none, and the key was saved Enabled, in
    a store that no longer existed."""
    return svc.store.key_lock(key.account, key.region, STORES_LOCK)


async def create_hsm_key(svc: KmsService, call: Call, key: Key) -> Key:
    """CreateKey's AWS_CLOUDHSM origin: the backing key is generated inside the store's token."""
    store_id = call.params.get("CustomKeyStoreId")
    if store_id is None:
        raise errors.ValidationException("CustomKeyStoreId is required when Origin is AWS_CLOUDHSM.")
    seen = connections_of(svc).disconnects(store_id)  # before the store is read
    store = await find_store(svc, call, store_id)
    if key.key_spec is not KeySpec.SYMMETRIC_DEFAULT or key.multi_region:
        raise errors.UnsupportedOperationException(
            "Keys in an AWS CloudHSM key store are single-Region symmetric encryption keys."
        )
    backing_id = svc.deps.random_bytes(16).hex()
    generation = _Generation(backing_id, key.key_id)
    try:
        await _in_store(svc, store, generation, seen)
    except BaseException:
        if generation.give_up():  # made and handed over, but this call failed after (a cancel)
            await _remove_backing_key(svc, store, backing_id, key.key_id)
        raise
    material = KeyMaterial(
        material_id=svc.deps.random_bytes(32).hex(), secret=b"", created=svc.now(), handle=backing_id
    )
    note_backing_key(call, store, backing_id)
    return replace(
        key,
        custom_key_store_id=store.store_id,
        materials=(material,),
        extra={**key.extra, CLUSTER_ID: store.cluster_id},
    )


class _Generation:
    """C_GenerateKey of a backing key, on the PKCS#11 thread, that removes the key again if its caller
    gave up meanwhile: a call the HSM answers after its time limit (or after its caller was cancelled)
    goes on in the thread, and what it makes would stay in the HSM with nothing pointing to it."""

    def __init__(self, backing_id: str, label: str) -> None:
        self._object_id, self._label = bytes.fromhex(backing_id), label
        self._lock = threading.Lock()  # between the PKCS#11 thread and the event loop's
        self._given_up = self._handed_over = False

    def __call__(self, session: TokenSession) -> None:
        session.generate_key(self._object_id, self._label)
        with self._lock:
            self._handed_over = not self._given_up
        if not self._handed_over:  # in the same call: the session is closed only after it
            _remove_in_thread(session, self._object_id, self._label)

    def give_up(self) -> bool:
        """The caller no longer takes the key; True if the key was handed over all the same (then it
        is the caller's to remove), else the generation removes it if it ends."""
        with self._lock:
            self._given_up = True
            return self._handed_over


def _remove_in_thread(session: TokenSession, object_id: bytes, label: str) -> None:
    try:
        session.destroy_key(object_id)
    except p11.PKCS11Error as exc:
        log.error("HSM key object %s (label %s), made after CreateKey gave up on the HSM, could not be removed (%s): "
                  "remove it from the token", object_id.hex(), label, error_name(exc))
        return
    log.warning("HSM key object %s, made after CreateKey gave up on the HSM, was removed", object_id.hex())


async def discard_hsm_key(svc: KmsService, key: Key) -> None:
    """Remove from the token the backing key `create_hsm_key` made for a key that was never saved;
    logged either way (a token that cannot remove it now leaves it for an operator to remove)."""
    material, store_id = key.current_material, key.custom_key_store_id
    if material is None or material.handle is None or store_id is None:
        return
    await _remove_backing_key(svc, await _store_of(svc, key), material.handle, key.key_id)


async def _store_of(svc: KmsService, key: Key) -> CustomKeyStore | None:
    """The custom key store `key` is in, None if it is gone (or the key is in none)."""
    return await store_named(svc, key.account, key.region, key.custom_key_store_id)


async def delete_hsm_key(svc: KmsService, key: Key) -> None:
    """Remove from the token the backing key of a key deleted at the end of its waiting period: AWS
    makes a best effort to delete the key material from the cluster ("Scheduling deletion of KMS keys
    from an AWS CloudHSM key store"). A store not connected, or an HSM that fails, leaves it there,
    with an error line naming it, for an operator to remove, as AWS leaves its orphaned key material."""
    if key.custom_key_store_id is None:
        return
    store = await _store_of(svc, key)
    for material in key.materials:
        if material.handle is not None:
            await _remove_backing_key(svc, store, material.handle, key.key_id, "the backing key of a deleted KMS key",
                                      logging.INFO)


async def _remove_backing_key(
    svc: KmsService, store: CustomKeyStore | None, backing_id: str, label: str,
    whose: str = "made for a key that was not saved", level: int = logging.WARNING,
) -> None:
    store_id = store.store_id if store is not None else "(deleted)"
    unusable = errors.CustomKeyStoreInvalidStateException(f"Custom key store {store_id} cannot use its HSM.")
    try:
        await connections_of(svc).run(store, unusable, lambda s: _destroy(s, bytes.fromhex(backing_id)))
    except errors.KmsError:
        log.error("custom key store %s: HSM key object %s (label %s) was %s, and the HSM did not remove it: "
                  "remove it from the token", store_id, backing_id, label, whose)
        return
    log.log(level, "custom key store %s: HSM key object %s, %s, was removed", store_id, backing_id, whose)


def _destroy(session: TokenSession, object_id: bytes) -> None:
    """C_DestroyObject of a backing key; one the token no longer holds (removed with the HSM's own
    tools) is as good as removed."""
    with contextlib.suppress(p11.NoSuchKey):
        session.destroy_key(object_id)


async def _in_store(svc: KmsService, store: CustomKeyStore, work: Callable[[TokenSession], _T], seen: int) -> _T:
    """The HSM calls of CreateKey and GenerateRandom: for a store that is not connected, or whose
    HSM cannot be used, AWS documents CustomKeyStoreInvalidStateException for both. `seen`: the
    store's HsmConnections.disconnects, read before the store."""
    return await connections_of(svc).run(
        store,
        errors.CustomKeyStoreInvalidStateException(
            f"Custom key store {store.store_id} cannot use its HSM (ConnectionState {store.state.value})."
        ),
        work,
        seen,
    )


async def random_from_store(svc: KmsService, call: Call, store_id: str, count: int) -> bytes:
    """GenerateRandom with CustomKeyStoreId: the bytes come from the store's HSM."""
    seen = connections_of(svc).disconnects(store_id)  # before the store is read
    return await _in_store(svc, await find_store(svc, call, store_id), lambda s: s.random_bytes(count), seen)


def note_backing_key(call: Call, store: CustomKeyStore, backing_id: str) -> None:
    """CloudTrail's additionalEventData for calls on keys in a CloudHSM key store."""
    call.additional_event_data.update(
        {
            "customKeyStoreId": store.store_id,
            "clusterId": store.cluster_id,
            "backingKeyId": backing_id,
            "backingKeys": backing_keys(backing_id),
        }
    )


async def set_availability(svc: KmsService, store: CustomKeyStore, *, available: bool) -> None:
    """Keys of a disconnected store are Unavailable; reconnecting gives back their own state, and
    names the store's cluster in each (`name_the_cluster`), for keys an UpdateCustomKeyStore cut
    short (its node stopped between the store's write and theirs) left naming the one before."""
    if available:
        await _change_keys(svc, store, lambda key: _as_connected(key, store))
    else:
        await _change_keys(svc, store, lambda key: _with_availability(key, available=False))


async def name_the_cluster(svc: KmsService, store: CustomKeyStore) -> None:
    """Have each KMS key of the store name the store's cluster: KeyMetadata.CloudHsmClusterId is "the
    cluster that contains the key material", and UpdateCustomKeyStore moves it to a related cluster
    (a restored backup), after which the first may be gone."""
    await _change_keys(svc, store, lambda key: _unless_same(key, _in_cluster(key, store.cluster_id)))


async def _change_keys(svc: KmsService, store: CustomKeyStore, change: Callable[[Key], Key | None]) -> None:
    """Store `change` of each KMS key of the store (None: nothing to change). Each key is changed under
    its lock, as it is then: a call changing it meanwhile keeps its change."""
    for listed in await keys_in(svc, store):
        async with svc.key_lock(listed.account, listed.region, listed.key_id):
            key = await svc.store.get_key(listed.account, listed.region, listed.key_id)
            changed = change(key) if key is not None else None
            if changed is not None:
                await svc.store.put_key(changed)


def _as_connected(key: Key, store: CustomKeyStore) -> Key | None:
    """The key as connecting its store leaves it (its own state, the store's cluster), or None if
    that changes nothing."""
    named = _in_cluster(key, store.cluster_id)
    return _unless_same(key, _with_availability(named, available=True) or named)


def _in_cluster(key: Key, cluster_id: str) -> Key:
    return key if key.extra.get(CLUSTER_ID) == cluster_id else replace(key, extra={**key.extra, CLUSTER_ID: cluster_id})


def _unless_same(key: Key, changed: Key) -> Key | None:
    return None if changed is key else changed


async def as_its_store_leaves_it(svc: KmsService, key: Key) -> Key:
    """`key`, given a state of its own while in a custom key store that is not CONNECTED (CancelKeyDeletion
    makes it Disabled): Unavailable, that state kept for the reconnect, as the store's other keys. AWS:
    keys of a disconnected key store are Unavailable unless pending deletion. Called under the key's
    lock, which `set_availability` takes too: a Connect or Disconnect that already passed the key
    wrote the store's new state first."""
    if key.custom_key_store_id is None:
        return key
    store = await _store_of(svc, key)
    if store is not None and store.state is ConnectionState.CONNECTED:
        return key
    return _with_availability(key, available=False) or key


def _with_availability(key: Key, available: bool) -> Key | None:
    """The key as its store's connection leaves it, or None if that changes nothing."""
    if not available and key.state in (KeyState.ENABLED, KeyState.DISABLED):
        return replace(key, state=KeyState.UNAVAILABLE, extra={**key.extra, "state_when_connected": key.state.value})
    if available and key.state is KeyState.UNAVAILABLE:
        extra = dict(key.extra)
        state = KeyState(extra.pop("state_when_connected", KeyState.ENABLED.value))
        return replace(key, state=state, extra=extra)
    return None


async def keys_in(svc: KmsService, store: CustomKeyStore) -> list[Key]:
    """The KMS keys of the custom key store."""
    keys = await svc.store.list_keys(store.account, store.region)
    return [k for k in keys if k.custom_key_store_id == store.store_id]
