"""Custom key stores: Create/Connect/Disconnect/Describe/Update/DeleteCustomKeyStore, and the HSM's
part of a service (`install`); CreateKey with Origin AWS_CLOUDHSM is in operations/hsm_keys.py."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cryptography import x509
from pkcs11 import exceptions as p11

from keytrail.kms import errors
from keytrail.kms.calls import Call, Handler, Operation, Response
from keytrail.kms.hsm import MODULE_ENV, HsmCipher, HsmConnections, HsmError, find_token, missing_keys, module_path
from keytrail.kms.hsm_failures import error_name
from keytrail.kms.hsm_module import ModuleNotLoaded, token_label
from keytrail.kms.keystores import (
    CloudHsmClusterInUseException,
    CloudHsmClusterInvalidConfigurationException,
    CloudHsmClusterNotActiveException,
    CloudHsmClusterNotFoundException,
    CloudHsmClusterNotRelatedException,
    ConnectionState,
    CustomKeyStore,
    IncorrectTrustAnchorException,
    custom_key_store_entry,
    new_custom_key_store_id,
)
from keytrail.kms.model import Origin
from keytrail.kms.operations.hsm_keys import (
    STORES_LOCK,
    connections_of,
    create_hsm_key,
    delete_hsm_key,
    discard_hsm_key,
    find_store,
    keys_in,
    name_the_cluster,
    set_availability,
    stores_locked,
    stores_of,
)
from keytrail.kms.operations.hsm_upkeep import upkeep
from keytrail.kms.paging import page
from keytrail.kms.shared_tokens import holding_the_token

if TYPE_CHECKING:
    from keytrail.kms.keys import Key
    from keytrail.kms.service import KmsService

__all__ = ["OPERATIONS", "install"]

MAX_CUSTOM_KEY_STORES = 10
# CloudHsmClusterNotRelatedException's text in the KMS API reference.
NOT_RELATED = (
    "The request was rejected because the specified CloudHSM cluster has a different cluster certificate than the "
    "original cluster. You cannot use the operation to specify an unrelated cluster for an CloudHSM key store."
)
# The members of Create/UpdateCustomKeyStore for one type of store each (the model's documentation).
_CLOUDHSM_MEMBERS = ("CloudHsmClusterId", "TrustAnchorCertificate", "KeyStorePassword")
_XKS_MEMBERS = (
    "XksProxyUriEndpoint", "XksProxyUriPath", "XksProxyVpcEndpointServiceName", "XksProxyVpcEndpointServiceOwner",
    "XksProxyAuthenticationCredential", "XksProxyConnectivity",
)
log = logging.getLogger(__name__)


def install(svc: KmsService) -> None:
    """Register the HSM cipher, the AWS_CLOUDHSM key creator, discarder and deleter with a service, and the
    HSM's upkeep with its scheduler tick (operations/hsm_upkeep.py)."""
    connections = HsmConnections()
    svc.ciphers["hsm"] = HsmCipher(connections, svc.store)
    svc.tick_work.append(upkeep(svc, connections))
    svc.origin_creators[Origin.AWS_CLOUDHSM] = create_hsm_key
    svc.origin_discarders[Origin.AWS_CLOUDHSM] = discard_hsm_key
    svc.origin_deleters[Origin.AWS_CLOUDHSM] = delete_hsm_key
    svc.origin_locks[Origin.AWS_CLOUDHSM] = stores_locked


def _invalid_state(store: CustomKeyStore, operation: str) -> errors.KmsError:
    return errors.CustomKeyStoreInvalidStateException(
        f"{operation} is not valid for custom key store {store.store_id} in ConnectionState {store.state.value}."
    )


def _check_cluster(cluster_id: str, trust_anchor: str) -> None:
    """The 'cluster' is a PKCS#11 token labelled with the cluster id; the anchor must be a PEM cert."""
    try:
        x509.load_pem_x509_certificate(trust_anchor.encode())
    except ValueError:
        raise IncorrectTrustAnchorException(
            "The trust anchor certificate is not a PEM X.509 certificate."
        ) from None
    path = module_path()
    if path is None:
        raise CloudHsmClusterInvalidConfigurationException(
            f"No PKCS#11 module is configured: set {MODULE_ENV}."
        )
    try:
        found = find_token(path, cluster_id)
    except ModuleNotLoaded:
        raise CloudHsmClusterInvalidConfigurationException(
            f"The PKCS#11 module ({MODULE_ENV}) cannot be loaded: see the server's log."
        ) from None
    except HsmError as exc:
        raise CloudHsmClusterNotActiveException(f"The HSM cannot list its tokens now ({exc.code}).") from None
    if not found:
        raise CloudHsmClusterNotFoundException(f"No HSM token is labelled {cluster_id}.")


async def _checked_cluster(svc: KmsService, cluster_id: str, trust_anchor: str) -> None:
    """`_check_cluster` on the PKCS#11 thread, which a module that stops answering holds, not the loop's."""
    try:
        await connections_of(svc).call(lambda: _check_cluster(cluster_id, trust_anchor))
    except TimeoutError:
        raise CloudHsmClusterNotActiveException(
            "The HSM cannot list its tokens now (it did not answer in time)."
        ) from None


def _backing_key_ids(keys: list[Key]) -> list[bytes]:
    """The token objects behind the keys: one per key material (a key in a CloudHSM key store never
    rotates, but each material it holds names its own object)."""
    return [bytes.fromhex(m.handle) for key in keys for m in key.materials if m.handle is not None]


def _missing_backing_keys(store: CustomKeyStore, cluster_id: str, password: str, object_ids: list[bytes]) -> bool:
    """Whether the cluster's token lacks any of `object_ids`, as the store's user sees it (kms/hsm_session.py's
    `missing_keys`). A login the token refuses (a wrong or locked password) tells nothing of its keys, and
    UpdateCustomKeyStore has no error for it: False, with a warning, and ConnectCustomKeyStore reports
    the login (ConnectionErrorCode). A lookup the token fails is CloudHsmClusterNotActiveException."""
    path = module_path()
    if path is None:  # _check_cluster refused the call already
        return False
    try:
        return bool(missing_keys(path, cluster_id, password, object_ids))
    except HsmError as exc:
        log.warning("custom key store %s: the token of %s refused the login (%s), so whether it holds the store's "
                    "keys was not checked; ConnectCustomKeyStore will say the same", store.store_id, cluster_id, exc)
        return False
    except p11.PKCS11Error as exc:
        raise CloudHsmClusterNotActiveException(
            f"The HSM cannot look up the custom key store's keys now ({error_name(exc)})."
        ) from None


async def _require_related(svc: KmsService, store: CustomKeyStore, cluster_id: str, password: str) -> None:
    """CloudHsmClusterNotRelatedException unless the new token holds the backing key of every material of
    the store's KMS keys. AWS takes only a cluster that shares the original's backup history, so holds
    the same keys; a token has no cluster certificate, but a copy of it (its backup restored) holds the
    same objects, and any other token would leave every key of the store unusable once connected. A
    store without keys may move to any free token; a cluster id of the store's own token
    (KEYTRAIL_PKCS11_TOKENS) is its own cluster. Called once no other store has the token, whose login
    this check takes and ends (on the PKCS#11 thread, as `_checked_cluster`)."""
    object_ids = _backing_key_ids(await keys_in(svc, store))
    if not object_ids or token_label(cluster_id) == token_label(store.cluster_id):
        return
    try:
        missing = await connections_of(svc).call(lambda: _missing_backing_keys(store, cluster_id, password, object_ids))
    except TimeoutError:
        raise CloudHsmClusterNotActiveException(
            "The HSM cannot look up the custom key store's keys now (it did not answer in time)."
        ) from None
    if missing:
        raise CloudHsmClusterNotRelatedException(NOT_RELATED)


async def _require_cluster_free(svc: KmsService, cluster_id: str, besides: str | None = None) -> None:
    """CloudHsmClusterInUseException if a store other than `besides` uses the cluster's token, in
    any account and Region: one token, one store, as one CloudHSM cluster. A PKCS#11 login belongs
    to the whole token in a process, and the node's tokens serve every account: another account's
    store on it would share its login, and its Disconnect log the first store out. Two cluster ids
    mapped to one label (KEYTRAIL_PKCS11_TOKENS) are one token. The message names no other store."""
    label, stores = token_label(cluster_id), await svc.store.all_custom_key_stores()
    if any(token_label(s.cluster_id) == label for s in stores if s.store_id != besides):
        raise CloudHsmClusterInUseException(
            "The request was rejected because the specified CloudHSM cluster is already associated with a "
            "custom key store or it shares a backup history with a cluster that is associated with a custom "
            "key store. Each custom key store must be associated with a different CloudHSM cluster."
        )


def _require_cloudhsm_parameters(params: dict[str, Any]) -> None:
    store_type = params.get("CustomKeyStoreType", "AWS_CLOUDHSM")
    _require_members_of(params, store_type)
    if store_type != "AWS_CLOUDHSM":
        raise errors.UnsupportedOperationException("Only AWS_CLOUDHSM custom key stores are supported.")
    missing = [member for member in _CLOUDHSM_MEMBERS if member not in params]
    if missing:
        raise errors.ValidationException(f"{', '.join(missing)} must be specified for an AWS_CLOUDHSM key store.")


def _require_members_of(params: dict[str, Any], store_type: str) -> None:
    """ValidationException for members of the other type of custom key store than `store_type`: the
    model's Create/UpdateCustomKeyStore say each Xks* member is for EXTERNAL_KEY_STORE, each CloudHSM
    one for AWS_CLOUDHSM ("valid only for", "required for"); they were dropped without a word. AWS's
    error code for them is not documented (CreateKey's XksKeyId without its Origin is answered alike).
    Members are named, never their values: XksProxyAuthenticationCredential holds a secret."""
    foreign = _XKS_MEMBERS if store_type == "AWS_CLOUDHSM" else _CLOUDHSM_MEMBERS
    if named := [member for member in foreign if params.get(member) is not None]:
        verb = "is" if len(named) == 1 else "are"
        raise errors.ValidationException(
            f"{', '.join(named)} {verb} valid only when CustomKeyStoreType is "
            f"{'EXTERNAL_KEY_STORE' if store_type == 'AWS_CLOUDHSM' else 'AWS_CLOUDHSM'}, not {store_type}.")


def _name_store(call: Call, store: CustomKeyStore) -> None:
    # CloudTrail names the store the call acts on, though the request gives only its id
    # (ct-connect-keystore, ct-disconnect-keystore, ct-update-keystore, ct-delete-keystore).
    call.additional_event_data.update({"customKeyStoreName": store.name, "clusterId": store.cluster_id})


def _require_new_name(stores: list[CustomKeyStore], name: str) -> None:
    if any(s.name == name for s in stores):
        raise errors.CustomKeyStoreNameInUseException(f"A custom key store with the name {name} already exists.")


async def create_custom_key_store(svc: KmsService, call: Call) -> Response:
    params = call.params
    await svc.authorize(call, "kms:CreateCustomKeyStore", None)
    _require_cloudhsm_parameters(params)
    stores = await stores_of(svc, call)
    _require_new_name(stores, params["CustomKeyStoreName"])
    if len(stores) >= MAX_CUSTOM_KEY_STORES:
        raise errors.LimitExceededException("The custom key store limit has been reached.")
    await _require_cluster_free(svc, params["CloudHsmClusterId"])
    await _checked_cluster(svc, params["CloudHsmClusterId"], params["TrustAnchorCertificate"])
    store = CustomKeyStore(
        account=call.context.account, region=call.context.region,
        store_id=new_custom_key_store_id(svc.deps.random_bytes(9)), name=params["CustomKeyStoreName"],
        cluster_id=params["CloudHsmClusterId"], trust_anchor=params["TrustAnchorCertificate"],
        password=params["KeyStorePassword"], creation_date=svc.now(),
    )
    call.response_elements = {"customKeyStoreId": store.store_id}  # before the write: its owed record names it
    await svc.store.put_custom_key_store(store)
    return {"CustomKeyStoreId": store.store_id}


async def connect_custom_key_store(svc: KmsService, call: Call) -> Response:
    # Authorized before the store is looked up, as AWS authorizes these IAM-only actions (resource "*")
    # whatever the id: a caller denied them learns nothing of which stores exist.
    await svc.authorize(call, "kms:ConnectCustomKeyStore", None)
    store = await find_store(svc, call, call.params["CustomKeyStoreId"])
    _name_store(call, store)
    if store.state in (ConnectionState.DISCONNECTING, ConnectionState.FAILED):
        raise _invalid_state(store, "ConnectCustomKeyStore")
    if store.state is ConnectionState.CONNECTED:
        # Changes nothing, but the keys a node that died between its last two writes left Unavailable.
        await set_availability(svc, store, available=True)
        return {}
    await _require_token_not_held(svc, store)
    await svc.store.put_custom_key_store(store.with_state(ConnectionState.CONNECTING))
    try:
        await connections_of(svc).connect(store)
    except HsmError as exc:
        await svc.store.put_custom_key_store(store.with_state(ConnectionState.FAILED, exc.code))
        return {}
    await svc.store.put_custom_key_store(store.with_state(ConnectionState.CONNECTED))
    await set_availability(svc, store, available=True)
    return {}


async def _require_token_not_held(svc: KmsService, store: CustomKeyStore) -> None:
    """CloudHsmClusterInUseException if another store on the store's token is connected: stores that
    share a token (made before one token backed one store, kms/shared_tokens.py) would share its login.
    Not in ConnectCustomKeyStore's modelled errors, as no AWS cluster can back two stores; it is
    CreateCustomKeyStore's answer to the same conflict. The message names no other store."""
    stores = await svc.store.all_custom_key_stores()
    connections_of(svc).shared.report(stores)
    if holding_the_token(store, stores):
        raise CloudHsmClusterInUseException(
            f"Custom key store {store.store_id} shares its HSM token with another custom key store, which is "
            "connected (custom key stores made before each had to have a cluster of its own). Disconnect that "
            "store first, or give this one a cluster of its own with UpdateCustomKeyStore."
        )


async def disconnect_custom_key_store(svc: KmsService, call: Call) -> Response:
    await svc.authorize(call, "kms:DisconnectCustomKeyStore", None)  # before the lookup, as Connect
    store = await find_store(svc, call, call.params["CustomKeyStoreId"])
    _name_store(call, store)
    # As AWS: refused on DISCONNECTED and DISCONNECTING, valid in every other state. A store a crash
    # left DISCONNECTING is settled by the HSM's upkeep (operations/hsm_upkeep.py), not by this call.
    if store.state in (ConnectionState.DISCONNECTED, ConnectionState.DISCONNECTING):
        raise _invalid_state(store, "DisconnectCustomKeyStore")
    await svc.store.put_custom_key_store(store.with_state(ConnectionState.DISCONNECTING))
    await connections_of(svc).disconnect(store.store_id)
    await set_availability(svc, store, available=False)
    await svc.store.put_custom_key_store(store.with_state(ConnectionState.DISCONNECTED))
    return {}


async def describe_custom_key_stores(svc: KmsService, call: Call) -> Response:
    params = call.params
    await svc.authorize(call, "kms:DescribeCustomKeyStores", None)
    stores = await stores_of(svc, call)
    if "CustomKeyStoreId" in params or "CustomKeyStoreName" in params:
        stores = [
            s
            for s in stores
            if s.store_id == params.get("CustomKeyStoreId", s.store_id)
            and s.name == params.get("CustomKeyStoreName", s.name)
        ]
        if not stores:
            raise errors.CustomKeyStoreNotFoundException("The specified custom key store does not exist.")
    listing = f"DescribeCustomKeyStores {call.context.account} {call.context.region}"
    chunk, paging = page(stores, params, lambda s: (s.creation_date.timestamp(), s.store_id), listing)
    return {"CustomKeyStores": [custom_key_store_entry(s) for s in chunk], **paging}


def _updatable(store: CustomKeyStore, *, renames_only: bool) -> bool:
    """UpdateCustomKeyStore needs a DISCONNECTED store, or a CONNECTED one for its name alone (the API
    reference: the name "when it is in the CONNECTED or DISCONNECTED state"); never one CONNECTING,
    DISCONNECTING or FAILED (CustomKeyStoreInvalidStateException's text)."""
    return store.state is ConnectionState.DISCONNECTED or (renames_only and store.state is ConnectionState.CONNECTED)


async def update_custom_key_store(svc: KmsService, call: Call) -> Response:
    params = call.params
    await svc.authorize(call, "kms:UpdateCustomKeyStore", None)  # before the lookup, as Connect
    store = await find_store(svc, call, params["CustomKeyStoreId"])
    _name_store(call, store)
    _require_members_of(params, "AWS_CLOUDHSM")  # the one type of store keytrail keeps
    if not _updatable(store, renames_only=not ("KeyStorePassword" in params or "CloudHsmClusterId" in params)):
        raise _invalid_state(store, "UpdateCustomKeyStore")
    name = params.get("NewCustomKeyStoreName", store.name)
    if name != store.name:
        _require_new_name(await stores_of(svc, call), name)
    cluster = params.get("CloudHsmClusterId", store.cluster_id)
    password = params.get("KeyStorePassword", store.password)
    if cluster != store.cluster_id:
        # The new token is checked first (it exists and answers), then whether another store has it
        # (CreateCustomKeyStore's InUse, not in Update's model), then whether it is related to the
        # store's own: last, as it logs in to the token, which no other store's login may then hold.
        await _checked_cluster(svc, cluster, store.trust_anchor)
        await _require_cluster_free(svc, cluster, besides=store.store_id)
        await _require_related(svc, store, cluster, password)
    updated = replace(store, name=name, cluster_id=cluster, password=password)
    _name_store(call, updated)  # as the call leaves it: ct-update-keystore names the new cluster
    await svc.store.put_custom_key_store(updated)
    if cluster != store.cluster_id:
        await name_the_cluster(svc, updated)  # their material is in the new cluster now
    return {}


async def delete_custom_key_store(svc: KmsService, call: Call) -> Response:
    await svc.authorize(call, "kms:DeleteCustomKeyStore", None)  # before the lookup, as Connect
    store = await find_store(svc, call, call.params["CustomKeyStoreId"])
    _name_store(call, store)
    if store.state is not ConnectionState.DISCONNECTED:
        raise _invalid_state(store, "DeleteCustomKeyStore")
    if await keys_in(svc, store):
        raise errors.CustomKeyStoreHasCMKsException(
            f"Custom key store {store.store_id} contains KMS keys: delete them first."
        )
    await svc.store.delete_custom_key_store(store)
    return {}


def _one_at_a_time(handler: Handler) -> Handler:
    """The handler, run while no other call changes the account's custom key stores in that
    Region (on any node): names are unique among them, and each change is computed from the
    stores as read, across awaits on the HSM. The lock is a store's key lock, under a name no key
    id can have."""

    async def one_at_a_time(svc: KmsService, call: Call) -> Response:
        async with svc.store.key_lock(call.context.account, call.context.region, STORES_LOCK):
            return await handler(svc, call)

    return one_at_a_time


def _claiming_a_cluster(handler: Handler) -> Handler:
    """`_one_at_a_time`, and also while no call of any account or Region (on any node) gives a
    store a cluster: each finds its token free and stores it, across awaits on the HSM, before the
    next looks. Taken after the account's lock, and no call holding it waits for an account's."""

    async def claiming(svc: KmsService, call: Call) -> Response:
        async with svc.store.key_lock("", "", "custom-key-store-clusters"):
            return await handler(svc, call)

    return _one_at_a_time(claiming)


OPERATIONS: dict[str, Operation] = {
    "CreateCustomKeyStore": Operation(_claiming_a_cluster(create_custom_key_store)),
    # Claiming too: two stores sharing a token (kms/shared_tokens.py), in two accounts, could each
    # find the other disconnected and connect at once.
    "ConnectCustomKeyStore": Operation(_claiming_a_cluster(connect_custom_key_store)),
    "DisconnectCustomKeyStore": Operation(_one_at_a_time(disconnect_custom_key_store)),
    "DescribeCustomKeyStores": Operation(describe_custom_key_stores, read_only=True),
    "UpdateCustomKeyStore": Operation(_claiming_a_cluster(update_custom_key_store)),
    "DeleteCustomKeyStore": Operation(_one_at_a_time(delete_custom_key_store)),
}
