"""One logged-in PKCS#11 session of a custom key store, and the blob formats sealed and opened in it:
format 3 under keys the token derives from its key (kms/hsm_derivation.py), or format 1 under the
token's key itself, where the token cannot derive them."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pkcs11 import Mechanism
from pkcs11 import exceptions as p11
from pkcs11.mechanisms import GCMParams

from keytrail.kms import errors
from keytrail.kms.ciphertext import FORMAT_V1, FORMAT_V3, TOKEN_SALT, BlobHeader
from keytrail.kms.hsm_derivation import DerivedKeys
from keytrail.kms.hsm_failures import BLOB_REFUSED, refused, warn_format_1
from keytrail.kms.hsm_key_objects import KeyObjects
from keytrail.kms.hsm_module import MODULE_CALLS, log_in, log_out, logged_in

__all__ = ["TokenSession", "missing_keys", "open_session"]

_NONCE = 12
log = logging.getLogger("keytrail.kms.hsm")


def open_session(path: str, cluster_id: str, pin: str) -> TokenSession:
    """Log in to the cluster's token as its user (CKU_USER) in a read-write session."""
    session, derives = log_in(path, cluster_id, pin)
    return TokenSession(session, derives=derives, module=path)


def missing_keys(path: str, cluster_id: str, pin: str, object_ids: Iterable[bytes]) -> list[bytes]:
    """The backing keys among `object_ids` that the cluster's token does not hold, as its user sees
    them in a session of this call's own, logged out before it returns. HsmError if the token refuses
    the login; the PKCS11Error of a lookup it fails."""
    session = open_session(path, cluster_id, pin)
    try:
        return [object_id for object_id in object_ids if not session.holds(object_id)]
    finally:
        session.discard()  # the lookups' answer is the one that counts


class TokenSession:
    """One logged-in session; its calls hold the lock of all PKCS#11 calls (`MODULE_CALLS`), which
    also guards its caches. `derives`: the token offers format 3's derivation (kms/hsm_derivation.py).
    `module`: the PKCS#11 module whose `log_in` gave the session, which logs it out; without it, the
    session is one python-pkcs11 logged in itself, and its close() logs it out."""

    def __init__(self, session: Any, derives: bool = False, module: str | None = None) -> None:
        self._session = session
        self._module = module
        self._closed = False
        self._lock = MODULE_CALLS
        self._keys = KeyObjects(session)
        self.derives = derives
        self._derived = DerivedKeys()  # session objects: they live and die with this session
        # Keys whose derivation the token refused while sealing: their blobs here are format 1 from
        # then on, but their format 3 blobs still open (the refusal may have been the token's memory).
        self._sealing_refused: set[bytes] = set()
        self._missing: set[bytes] = set()  # backing keys this session found missing, said in the log

    def generate_key(self, object_id: bytes, label: str) -> None:
        """A new backing key in the token (KeyObjects.generate)."""
        with self._lock:
            self._keys.generate(object_id, label)

    def holds(self, object_id: bytes) -> bool:
        """Whether the token holds the backing key `object_id` (KeyObjects.get); UserNotLoggedIn, not
        False, if the session lost its login meanwhile and so sees no private key at all."""
        with self._lock:
            try:
                with self._key_of_the_login(object_id):
                    self._keys.get(object_id)
            except p11.NoSuchKey:
                return False
        return True

    def destroy_key(self, object_id: bytes) -> None:
        """Remove a backing key from the token (KeyObjects.destroy): one made for a KMS key that was
        never saved, or that of a deleted KMS key. Derived keys of it this session keeps stay until
        evicted or the session ends, and open nothing: every seal and open asks for the backing key."""
        with self._lock, self._key_of_the_login(object_id):
            self._keys.destroy(object_id)

    @contextlib.contextmanager
    def _key_of_the_login(self, object_id: bytes) -> Iterator[None]:
        """KeyObjects.deleted_as_no_such_key, and UserNotLoggedIn for a key not found by a session
        that lost its login while the token kept it open (another application's C_Logout, a token
        that reset its login state): the key is private, so invisible to it, not gone. Kept as a
        sound session missing one key, the session would fail every call until a reconnect;
        UserNotLoggedIn drops it, and the next call logs in again."""
        try:
            with self._keys.deleted_as_no_such_key(object_id):
                yield
        except p11.NoSuchKey:
            if self._module is not None and not logged_in(self._module, self._session):
                raise p11.UserNotLoggedIn() from None
            raise

    @contextlib.contextmanager
    def _said_if_missing(self, object_id: bytes) -> Iterator[None]:
        """Log, once per session and key, a backing key the token no longer holds: the caller gets
        only KMSInvalidStateException and the store stays CONNECTED, so without this line nothing
        tells the operator which key object went (deleted with the HSM's tools, the token removed)."""
        try:
            yield
        except p11.NoSuchKey:
            if object_id not in self._missing:
                self._missing.add(object_id)
                log.warning("HSM key object %s: the token holds no such key; calls on its KMS key answer "
                            "KMSInvalidStateException until it is back (docs/custom-key-stores.md)", object_id.hex())
            raise

    def seal(self, object_id: bytes, header: Callable[[int], bytes], plaintext: bytes, context: bytes) -> bytes:
        """The whole blob of `plaintext`: format 3 if this key derives, else format 1. `header` gives
        the blob header of a format; `context` is the encoded encryption context."""
        nonce = os.urandom(_NONCE)
        with self._lock, self._said_if_missing(object_id), self._key_of_the_login(object_id):
            self._keys.narrow(object_id)
            sealing = self._sealing_key(object_id)
            if sealing is None:
                form, salt, key = FORMAT_V1, b"", self._keys.get(object_id)
            else:
                self._keys.require(object_id)
                form, (salt, key) = FORMAT_V3, sealing
            head = header(form)
            params = GCMParams(nonce, head + context, 128)
            body = bytes(key.encrypt(plaintext, mechanism=Mechanism.AES_GCM, mechanism_param=params))
        return head + salt + nonce + body

    def open(self, object_id: bytes, blob: BlobHeader, context: bytes) -> bytes:
        """The plaintext of a parsed format 1 or 3 blob; InvalidCiphertextException if it fails
        authentication, NoSuchKey if the token no longer holds the key, else the PKCS11Error."""
        with self._lock, self._said_if_missing(object_id), self._key_of_the_login(object_id):
            self._keys.narrow(object_id)
            if blob.format == FORMAT_V3:
                salt, nonce = blob.seed[:TOKEN_SALT], blob.seed[TOKEN_SALT:]
                key = self._opening_key(object_id, salt)
            else:
                key, nonce = self._keys.get(object_id), blob.seed
            params = GCMParams(nonce, blob.header + context, 128)
            try:
                return bytes(key.decrypt(blob.body, mechanism=Mechanism.AES_GCM, mechanism_param=params))
            except BLOB_REFUSED:
                # Also what a failing session or token may answer: asked again for the key, a
                # session that still answers is fine, and the blob is what failed.
                self._keys.require(object_id)
                raise errors.InvalidCiphertextException("") from None

    def _sealing_key(self, object_id: bytes) -> tuple[bytes, Any] | None:
        """The salt and derived key of this key's next format 3 blob; None for format 1."""
        if object_id in self._sealing_refused or not self._can_derive(object_id):
            return None
        try:
            return self._derived.sealing(self._keys.get(object_id), object_id)
        except p11.PKCS11Error as exc:
            if not refused(exc):  # the key deleted from the token, or the session failed: not a refusal
                raise
            self._sealing_refused.add(object_id)  # the token refuses this key's derivation: format 1, as before
            warn_format_1(object_id, "deriving its keys", exc)
            return None

    def _opening_key(self, object_id: bytes, salt: bytes) -> Any:
        if not self._can_derive(object_id):  # then this key never wrote format 3
            raise errors.InvalidCiphertextException("")
        # A derived key kept from before its backing key was deleted would still open the blob:
        # deleting the key from the HSM must end what it protects, as it does at the next session.
        self._keys.require(object_id)
        return self._derived.key(self._keys.get(object_id), object_id, salt)

    def _can_derive(self, object_id: bytes) -> bool:
        return self.derives and self._keys.derives(object_id)

    def random_bytes(self, count: int) -> bytes:
        """`count` bytes from the token's random number generator (C_GenerateRandom)."""
        with self._lock:
            return bytes(self._session.generate_random(count * 8))

    def close(self) -> None:
        """Log out and close the session: closed even if the token refuses the logout, which would
        otherwise leave it open on the token for good. Once only: a module may give its handle to a
        session opened since, which a second close would end."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._module is None:
                self._session.close()
            else:
                log_out(self._module, self._session)

    def discard(self) -> None:
        """Close the session if the token still knows it; one it already closed or logged out
        cannot be closed again, and is gone anyway (its login ended with it)."""
        with contextlib.suppress(p11.PKCS11Error):
            self.close()
