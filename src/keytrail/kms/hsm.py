"""Keys that never leave a PKCS#11 HSM: token sessions, and the cipher of custom key store keys.

Any PKCS#11 v2.20+ module works (SoftHSM2, the AWS CloudHSM client SDK 5 library, YubiHSM 2's
yubihsm_pkcs11): see docs/custom-key-stores.md. Each key is an AES-256 secret key object made
inside the token with CKA_EXTRACTABLE false and CKA_SENSITIVE true; Encrypt and Decrypt run
CKM_AES_GCM inside the token over the same blob layout as `ciphertext.py`, so such a blob names
its key and material like any other and fails as one InvalidCiphertextException. Blobs are format 3,
under keys the token derives from its key (kms/hsm_derivation.py), or format 1, under the token's
key itself, where the token cannot derive them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from keytrail.kms import errors
from keytrail.kms.ciphertext import (
    FORMAT_V1,
    FORMAT_V3,
    TOKEN_SALT,
    BlobHeader,
    blob_header,
    encode_context,
    read_header,
)
from keytrail.kms.hsm_derivation import DERIVATION, DerivedKeys
from keytrail.kms.keys import Key
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.store import CustomKeyStoreStore

__all__ = [
    "MODULE_ENV", "TOKENS_ENV", "HsmCipher", "HsmConnections", "HsmError", "TokenSession", "find_token",
    "module_path", "open_session", "token_label",
]

MODULE_ENV = "KEYTRAIL_PKCS11_MODULE"
TOKENS_ENV = "KEYTRAIL_PKCS11_TOKENS"
_NONCE = 12
_ERROR_CODES: dict[type[Exception], str] = {
    p11.PinIncorrect: "INVALID_CREDENTIALS",
    p11.PinInvalid: "INVALID_CREDENTIALS",
    p11.PinLenRange: "INVALID_CREDENTIALS",
    p11.PinLocked: "USER_LOCKED_OUT",
    p11.NoSuchToken: "CLUSTER_NOT_FOUND",
    p11.UserAlreadyLoggedIn: "USER_LOGGED_IN",
    p11.UserPinNotInitialized: "USER_NOT_FOUND",
}
# Failures that leave the session itself unusable (closed, logged out, token gone): PKCS#11 has
# no way back for such a session, so it is dropped and the next call logs in afresh.
_SESSION_LOST: tuple[type[Exception], ...] = (
    p11.SessionHandleInvalid, p11.SessionClosed, p11.UserNotLoggedIn, p11.DeviceRemoved, p11.DeviceError,
    p11.TokenNotPresent, p11.TokenNotRecognised, p11.ObjectHandleInvalid, p11.KeyHandleInvalid,
)
_libraries: dict[str, Any] = {}  # a PKCS#11 module may be initialised only once per process
# python-pkcs11 initialises a module with C_Initialize(NULL): a promise that no two threads call it
# at once (PKCS#11 v2.40 §5.4), on which SoftHSM2 turns its own locks off; and it lets go of the GIL
# in each call. Calls of two sessions (two stores) from two worker threads crashed the process, so
# every PKCS#11 call of this process holds this lock (reentrant: a session opens inside a lookup).
_module_calls = threading.RLock()
_T = TypeVar("_T")
log = logging.getLogger(__name__)


class HsmError(Exception):
    """The token could not be reached or logged in to; `code` is AWS's ConnectionErrorCode."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


def module_path() -> str | None:
    """The PKCS#11 module (shared library) every custom key store uses."""
    return os.environ.get(MODULE_ENV) or None


def token_label(cluster_id: str) -> str:
    """The token a store's CloudHsmClusterId names: `$KEYTRAIL_PKCS11_TOKENS` maps cluster ids to
    token labels (`cluster-aaa=hsm1;cluster-bbb=YubiHSM`); an unmapped id is the label itself."""
    for pair in os.environ.get(TOKENS_ENV, "").split(";"):
        cluster, _, label = pair.partition("=")
        if cluster.strip() == cluster_id and label.strip():
            return label.strip()
    return cluster_id


def _library(path: str) -> Any:
    with _module_calls:
        if path not in _libraries:
            _libraries[path] = pkcs11.lib(path)
        return _libraries[path]


def find_token(path: str, cluster_id: str) -> bool:
    """True if the module has one initialised token for this cluster id; HsmError if the module
    cannot list its tokens (a token removed under it can fail every lookup, CKR_GENERAL_ERROR)."""
    try:
        with _module_calls:
            _library(path).get_token(token_label=token_label(cluster_id))
    except (p11.NoSuchToken, p11.MultipleTokensReturned):
        return False
    except p11.PKCS11Error as exc:
        raise HsmError("INTERNAL_ERROR", type(exc).__name__) from None
    return True


def open_session(path: str, cluster_id: str, pin: str) -> TokenSession:
    """Log in to the cluster's token as its user (CKU_USER) in a read-write session."""
    try:
        with _module_calls:
            token = _library(path).get_token(token_label=token_label(cluster_id))
            mechanisms = token.slot.get_mechanisms()
            if Mechanism.AES_GCM not in mechanisms:
                raise HsmError("INTERNAL_ERROR", "the token does not offer CKM_AES_GCM")
            return TokenSession(token.open(rw=True, user_pin=pin), derives=DERIVATION in mechanisms)
    except p11.PKCS11Error as exc:
        raise HsmError(_ERROR_CODES.get(type(exc), "INTERNAL_ERROR"), type(exc).__name__) from None
    except OSError as exc:
        raise HsmError("INTERNAL_ERROR", str(exc)) from None


class TokenSession:
    """One logged-in session; its calls hold the lock of all PKCS#11 calls (`_module_calls`), which
    also guards its caches. `derives`: the token offers format 3's derivation (kms/hsm_derivation.py)."""

    def __init__(self, session: Any, derives: bool = False) -> None:
        self._session = session
        self._lock = _module_calls
        self._handles: dict[bytes, Any] = {}  # C_FindObjects per call costs more than the cipher
        self.derives = derives
        self._derived = DerivedKeys()  # session objects: they live and die with this session
        self._derivable: dict[bytes, bool] = {}  # by object id: whether the key has CKA_DERIVE
        # Keys whose derivation the token refused while sealing: their blobs here are format 1 from
        # then on, but their format 3 blobs still open (the refusal may have been the token's memory).
        self._sealing_refused: set[bytes] = set()

    def _key(self, object_id: bytes) -> Any:
        key = self._handles.get(object_id)
        if key is None:
            key = self._session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
            self._handles[object_id] = key
        return key

    def generate_key(self, object_id: bytes, label: str) -> None:
        """A persistent AES-256 key that can never be read out of the token, allowed only what
        keytrail does with it: AES-GCM, and deriving format 3's keys."""
        template = {
            Attribute.TOKEN: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SENSITIVE: True,
            Attribute.PRIVATE: True,
        }
        capabilities = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.DERIVE
        with self._lock:
            self._session.generate_key(
                KeyType.AES, 256, id=object_id, label=label, store=True, capabilities=capabilities,
                template=template,
            )

    def seal(self, object_id: bytes, header: Callable[[int], bytes], plaintext: bytes, context: bytes) -> bytes:
        """The whole blob of `plaintext`: format 3 if this key derives, else format 1. `header` gives
        the blob header of a format; `context` is the encoded encryption context."""
        nonce = os.urandom(_NONCE)
        with self._lock, self._deleted_as_no_such_key(object_id):
            sealing = self._sealing_key(object_id)
            if sealing is None:
                form, salt, key = FORMAT_V1, b"", self._key(object_id)
            else:
                self._require_backing_key(object_id)
                form, (salt, key) = FORMAT_V3, sealing
            head = header(form)
            params = GCMParams(nonce, head + context, 128)
            body = bytes(key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params))
        return head + salt + nonce + body

    def _require_backing_key(self, object_id: bytes) -> None:
        """A PKCS11Error if the token no longer holds the key: a derived key outlives its backing key
        deleted from the token, but what it seals would open only while this session lasts, and
        what it opens should not open at all."""
        self._key(object_id)[Attribute.CLASS]

    @contextlib.contextmanager
    def _deleted_as_no_such_key(self, object_id: bytes) -> Iterator[None]:
        """NoSuchKey when a call failed on the key's cached handle because another session deleted
        the key: the handle is invalid, but this session is fine and is not to be dropped. Looked up
        again, a key still there means the session itself failed, and the error stands."""
        try:
            yield
        except (p11.ObjectHandleInvalid, p11.KeyHandleInvalid):
            self._handles.pop(object_id, None)
            self._key(object_id)  # NoSuchKey if it was deleted
            raise

    def open(self, object_id: bytes, blob: BlobHeader, context: bytes) -> bytes:
        """The plaintext of a parsed format 1 or 3 blob; a PKCS11Error if it fails authentication."""
        with self._lock, self._deleted_as_no_such_key(object_id):
            if blob.format == FORMAT_V3:
                salt, nonce = blob.seed[:TOKEN_SALT], blob.seed[TOKEN_SALT:]
                key = self._opening_key(object_id, salt)
            else:
                key, nonce = self._key(object_id), blob.seed
            params = GCMParams(nonce, blob.header + context, 128)
            return bytes(key.decrypt(blob.body, mechanism=Mechanism.AES_GCM, mechanism_param=params))

    def _sealing_key(self, object_id: bytes) -> tuple[bytes, Any] | None:
        """The salt and derived key of this key's next format 3 blob; None for format 1."""
        if object_id in self._sealing_refused or not self._can_derive(object_id):
            return None
        try:
            return self._derived.sealing(self._key(object_id), object_id)
        except _SESSION_LOST:
            raise
        except p11.NoSuchKey:  # the key deleted from the token: not the token refusing to derive
            raise
        except p11.PKCS11Error as exc:  # the token refuses this key's derivation: format 1, as before
            self._sealing_refused.add(object_id)
            _warn_format_1(object_id, "deriving its keys", exc)
            return None

    def _opening_key(self, object_id: bytes, salt: bytes) -> Any:
        if not self._can_derive(object_id):  # then this key never wrote format 3
            raise errors.InvalidCiphertextException("")
        # A derived key kept from before its backing key was deleted would still open the blob:
        # deleting the key from the HSM must end what it protects, as it does at the next session.
        self._require_backing_key(object_id)
        return self._derived.key(self._key(object_id), object_id, salt)

    def _can_derive(self, object_id: bytes) -> bool:
        known = self._derivable.get(object_id)
        if known is None:
            known = self._derivable[object_id] = self.derives and self._allow_derivation(object_id)
        return known

    def _allow_derivation(self, object_id: bytes) -> bool:
        """Keys made before format 3 lack CKA_DERIVE, which PKCS#11 lets their owner set later: set
        once, it frees them of the 2^32 limit too. A token that refuses keeps them on format 1."""
        key = self._key(object_id)
        if key[Attribute.DERIVE]:
            return True
        try:
            key[Attribute.DERIVE] = True
        except _SESSION_LOST:
            raise
        except p11.PKCS11Error as exc:
            _warn_format_1(object_id, "setting CKA_DERIVE", exc)
            return False
        del self._handles[object_id]  # python-pkcs11 gives an object derive_key() only if CKA_DERIVE was true
        return True

    def random_bytes(self, count: int) -> bytes:
        """`count` bytes from the token's random number generator (C_GenerateRandom)."""
        with self._lock:
            return bytes(self._session.generate_random(count * 8))

    def close(self) -> None:
        with self._lock:
            self._session.close()

    def discard(self) -> None:
        """Close the session if the token still knows it; one it already closed or logged out
        cannot be closed again, and is gone anyway (its login ended with it)."""
        with contextlib.suppress(p11.PKCS11Error):
            self.close()


def _warn_format_1(object_id: bytes, refused: str, exc: p11.PKCS11Error) -> None:
    """Say once per session that a key went back to format 1 and its 2^32 limit, with the PKCS#11
    error: its name, or for a code python-pkcs11 has no name for, its text ("Unmapped error code
    0x1b"), which python-pkcs11 writes from the code alone: nothing the token gave goes in the log."""
    error = str(exc) if type(exc) is p11.PKCS11Error else type(exc).__name__
    log.warning("HSM key object %s: the token refused %s (%s); this session seals its blobs in format 1, "
                "limited to 2^32 (docs/custom-key-stores.md)", object_id.hex(), refused, error)


class HsmConnections:
    """Live sessions per custom key store. A store that is CONNECTED but has no session here
    (after a restart) is logged in to again on first use, with its sealed password."""

    def __init__(self) -> None:
        self._sessions: dict[str, TokenSession] = {}
        self._lock = asyncio.Lock()

    async def connect(self, store: CustomKeyStore) -> None:
        """Log in to the store's token (again); HsmError says why it failed."""
        async with self._lock:
            await self._open(store)

    async def _open(self, store: CustomKeyStore) -> TokenSession:
        path = module_path()
        if path is None:
            raise HsmError("INTERNAL_ERROR", f"{MODULE_ENV} is not set")
        old = self._sessions.pop(store.store_id, None)
        if old is not None:  # closed first: a second login of this process would be refused
            await asyncio.to_thread(old.discard)
        session = await asyncio.to_thread(open_session, path, store.cluster_id, store.password)
        self._sessions[store.store_id] = session
        return session

    async def disconnect(self, store_id: str) -> None:
        async with self._lock:
            session = self._sessions.pop(store_id, None)
            if session is not None:
                await asyncio.to_thread(session.discard)

    async def drop(self, failed: TokenSession) -> None:
        """Forget a session a PKCS#11 call failed on, so the next call logs in again instead of
        failing on it until the store is reconnected. A session opened meanwhile is kept."""
        async with self._lock:
            for store_id in [s for s, session in self._sessions.items() if session is failed]:
                del self._sessions[store_id]
                await asyncio.to_thread(failed.discard)

    async def session(self, store: CustomKeyStore) -> TokenSession:
        """The store's live session, logging in first if this process has none yet."""
        async with self._lock:
            session = self._sessions.get(store.store_id)
            return session if session is not None else await self._open(store)

    async def session_or(self, store: CustomKeyStore | None, unusable: errors.KmsError) -> TokenSession:
        """The session of a CONNECTED store whose token accepts its login, else `unusable`: the AWS
        error of the calling operation for an HSM it cannot use (the token's PIN changed or the
        token is gone), never a bare HsmError that would reach the client as a 500."""
        if store is None or store.state is not ConnectionState.CONNECTED:
            raise unusable
        try:
            return await self.session(store)
        except HsmError:
            raise unusable from None

    async def run(
        self, store: CustomKeyStore | None, unusable: errors.KmsError, work: Callable[[TokenSession], _T]
    ) -> _T:
        """`work` on the store's session, in a worker thread; `unusable` as in `session_or`, and
        also when the token fails the call itself (removed under a live session)."""
        session = await self.session_or(store, unusable)
        try:
            return await asyncio.to_thread(work, session)
        except p11.NoSuchKey:  # the token no longer holds the key: the session is as good as before
            raise unusable from None
        except p11.PKCS11Error:
            # `work` gets no caller input the token could refuse: the session itself failed.
            await self.drop(session)
            raise unusable from None


class HsmCipher:
    """The KeyCipher of keys in custom key stores: AES-GCM inside the token."""

    def __init__(self, connections: HsmConnections, stores: CustomKeyStoreStore) -> None:
        self.connections = connections
        self._stores = stores

    async def _store_of(self, key: Key) -> CustomKeyStore | None:
        stores = await self._stores.list_custom_key_stores(key.account, key.region)
        return next((s for s in stores if s.store_id == key.custom_key_store_id), None)

    async def encrypt(
        self, key: Key, plaintext: bytes, context: Mapping[str, str] | None, algorithm: str
    ) -> tuple[bytes, str | None]:
        material = key.current_material
        if material is None or material.handle is None:
            raise errors.KMSInvalidStateException(f"{key.arn} is unavailable.")
        material_id, handle, encoded = material.material_id, bytes.fromhex(material.handle), encode_context(context)

        def header(form: int) -> bytes:
            return blob_header(key.account, key.key_id, material_id, form)

        blob = await self.connections.run(
            await self._store_of(key), _unavailable(key), lambda s: s.seal(handle, header, plaintext, encoded)
        )
        return blob, material_id

    async def decrypt(
        self, key: Key, blob: bytes, context: Mapping[str, str] | None, algorithm: str
    ) -> tuple[bytes, str | None]:
        header = read_header(blob)
        material = key.material(header.material_id)
        if material is None or material.handle is None or header.key_id != key.key_id:
            raise errors.InvalidCiphertextException("")
        if header.format not in (FORMAT_V1, FORMAT_V3):  # format 2 needs the secret, which the token keeps
            raise errors.InvalidCiphertextException("")
        store = await self._store_of(key)
        session = await self.connections.session_or(store, _unavailable(key))
        try:
            plaintext = await asyncio.to_thread(
                session.open, bytes.fromhex(material.handle), header, encode_context(context)
            )
        except _SESSION_LOST:
            await self.connections.drop(session)
            raise _unavailable(key) from None
        except p11.NoSuchKey:  # its backing key left the HSM: AWS answers KMSInvalidStateException
            raise _unavailable(key) from None
        except p11.PKCS11Error:  # a tampered blob fails GCM as a general error (SoftHSM2)
            raise errors.InvalidCiphertextException("") from None
        return plaintext, material.material_id


def _unavailable(key: Key) -> errors.KmsError:
    return errors.KMSInvalidStateException(f"{key.arn} is unavailable.")
