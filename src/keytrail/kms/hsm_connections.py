"""The live PKCS#11 session of each custom key store in this process, and the AWS error a call on it
answers when the store's HSM cannot be used."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from pkcs11 import exceptions as p11

from keytrail.kms import errors
from keytrail.kms.hsm_failures import error_name, refused
from keytrail.kms.hsm_module import MODULE_ENV, TOKENS_ENV, HsmError, RefusedLogins, module_path, token_label
from keytrail.kms.hsm_session import TokenSession, open_session
from keytrail.kms.hsm_thread import TIMEOUT_ENV, HsmThread
from keytrail.kms.keystores import ConnectionState, CustomKeyStore
from keytrail.kms.shared_tokens import SharedTokens

__all__ = ["HsmConnections"]

_T = TypeVar("_T")
log = logging.getLogger("keytrail.kms.hsm")
_PIN_REFUSED = ("the token refused the store's PIN (changed or never set on the token): disconnect the store, "
                "UpdateCustomKeyStore KeyStorePassword, connect it again")
# What a failed login's ConnectionErrorCode means for the operator; only a refused PIN is mended by
# giving the store another password, so only it says so.
_LOGIN_FAILURES = {
    "INVALID_CREDENTIALS": _PIN_REFUSED,
    "USER_NOT_FOUND": _PIN_REFUSED,
    "USER_LOCKED_OUT": "the token locked its user out after wrong PINs: unlock the user on the HSM",
    "CLUSTER_NOT_FOUND": f"no token has the store's cluster id as its label ({TOKENS_ENV} maps ids to labels)",
    "NETWORK_ERRORS": f"the HSM is slow or unreachable ({TIMEOUT_ENV} gives each call its seconds)",
    "USER_LOGGED_IN": "the token is logged in already, by another session of this process",
}
_MODULE_FAILED = f"a fault of the PKCS#11 module ({MODULE_ENV}) or of the token, not of the PIN"


class HsmConnections:
    """Live sessions per custom key store. A store that is CONNECTED but has no session here
    (after a restart) is logged in to again on first use, with its sealed password."""

    def __init__(self, thread: HsmThread | None = None) -> None:
        self._sessions: dict[str, TokenSession] = {}
        self._tokens: dict[str, str] = {}  # per store: the token label its session logged in to
        self._disconnects: dict[str, int] = {}  # per store: the Disconnects this node made (`disconnects`)
        self._lock = asyncio.Lock()
        self._thread = thread or HsmThread()
        self._refused = RefusedLogins()
        self._failed_logins: dict[str, str] = {}  # per store: the code of the failed login last logged
        self.shared = SharedTokens()  # the stores found sharing a token, said once in the log
        # Per store: the calls its HSM could not serve while the store was CONNECTED (a login the token
        # refused, the token gone, a failed or unanswered PKCS#11 call, a backing key gone), for
        # /metrics. DescribeCustomKeyStores still says CONNECTED, and each cause is logged only once.
        self.failed_calls: Counter[str] = Counter()

    async def connect(self, store: CustomKeyStore) -> None:
        """Log in to the store's token (again, even with a password it refused); HsmError says why
        it failed."""
        async with self._lock:
            self._refused.forget(store.store_id)
            try:
                await self._open(store)
            except HsmError as error:  # else only DescribeCustomKeyStores would say why
                log.warning("custom key store %s: ConnectCustomKeyStore failed, the store is FAILED (%s); %s",
                            store.store_id, error, _meaning(error))
                raise

    async def _open(self, store: CustomKeyStore) -> TokenSession:
        path = module_path()
        if path is None:
            raise HsmError("INTERNAL_ERROR", f"{MODULE_ENV} is not set")
        old = self._sessions.pop(store.store_id, None)
        if old is not None:  # closed first: a second login of this process would be refused
            await self._discard(old)
        self._refused.check(store.store_id, store.password)
        try:
            session = await self._log_in(path, store)
        except HsmError as error:
            self._refused.note(store.store_id, store.password, error)
            raise
        self._refused.forget(store.store_id)
        self._failed_logins.pop(store.store_id, None)
        self._sessions[store.store_id] = session
        self._tokens[store.store_id] = token_label(store.cluster_id)
        return session

    async def _log_in(self, path: str, store: CustomKeyStore) -> TokenSession:
        try:
            # A login that ends after this call gave up is closed at once: kept by nobody, it would
            # hold the token's login, and refuse the next one (CKR_USER_ALREADY_LOGGED_IN).
            return await self._thread.call(
                lambda: open_session(path, store.cluster_id, store.password), late=TokenSession.discard
            )
        except TimeoutError:
            silent = f"the HSM did not answer the login in {self._thread.timeout:g} s"
            raise HsmError("NETWORK_ERRORS", silent) from None

    async def _discard(self, session: TokenSession) -> None:
        """Close the session on the PKCS#11 thread, waiting for it up to the time limit (not at all
        while a call the token does not answer holds that thread). A close not waited for, or whose
        caller is cancelled, still runs in its turn, before any login asked for after it."""
        with contextlib.suppress(TimeoutError):
            await self._thread.finish(session.discard)

    def disconnects(self, store_id: str | None) -> int:
        """How many times this node has disconnected the store. Read before the store and handed to
        `run`, it tells a store read CONNECTED just before a Disconnect ended its session here."""
        return self._disconnects.get(store_id or "", 0)

    async def disconnect(self, store_id: str) -> None:
        async with self._lock:
            self._disconnects[store_id] = self.disconnects(store_id) + 1
            session = self._sessions.pop(store_id, None)
            if session is not None:
                await self._discard(session)

    @property
    def holding(self) -> bool:
        """Whether this node has a session of any store."""
        return bool(self._sessions)

    async def close_unconnected(self, stores: list[CustomKeyStore]) -> None:
        """Close this node's sessions of stores that are no longer CONNECTED in `stores` (every store
        of the key store, read now), or no longer exist: another node sharing the key store
        disconnected (or deleted) them, and a session kept here would hold the token's login. A
        CONNECTING store is left alone: it is being connected, and its session is valid again once it
        is CONNECTED. Counted as a disconnect of this node's (`disconnects`), so that a call that read
        the store before does not log in again."""
        states = {store.store_id: store.state for store in stores}
        async with self._lock:
            for store_id in list(self._sessions):
                state = states.get(store_id)
                if state in (ConnectionState.CONNECTED, ConnectionState.CONNECTING):
                    continue
                self._disconnects[store_id] = self.disconnects(store_id) + 1
                await self._discard(self._sessions.pop(store_id))
                log.warning("custom key store %s is %s in the key store: this node's session of it is closed",
                            store_id, state.value if state is not None else "deleted")

    async def drop(self, failed: TokenSession) -> None:
        """Forget a session a PKCS#11 call failed on, so the next call logs in again instead of
        failing on it until the store is reconnected. A session opened meanwhile is kept."""
        async with self._lock:
            for store_id in [s for s, session in self._sessions.items() if session is failed]:
                del self._sessions[store_id]
                await self._discard(failed)

    async def session(self, store: CustomKeyStore, seen: int | None = None) -> TokenSession:
        """The store's live session, logging in first if this process has none yet (or only one of a
        token the store no longer names); HsmError if it has none because this node disconnected the
        store since `seen` (`disconnects`)."""
        async with self._lock:
            session = self._sessions.get(store.store_id)
            # A session of another token than the store's: another node disconnected the store, gave
            # it another CloudHsmClusterId and connected it again, all between two of this node's ticks.
            if session is not None and self._tokens.get(store.store_id) == token_label(store.cluster_id):
                return session
            if seen is not None and seen != self.disconnects(store.store_id):
                # A login now would leave a session, and the token's login, on a store disconnected.
                raise HsmError("INTERNAL_ERROR", "the store was disconnected")
            try:
                return await self._open(store)
            except HsmError as error:
                self._say_failed_login(store.store_id, error)
                raise

    def _say_failed_login(self, store_id: str, error: HsmError) -> None:
        """Log why a CONNECTED store's calls fail when its token refuses the login they need (its PIN
        changed under it, the token gone): the caller only gets the store's AWS error, and
        DescribeCustomKeyStores still says CONNECTED. Once per store and cause until a login succeeds,
        since every call of the store meets it."""
        if self._failed_logins.get(store_id) == error.code:
            return
        self._failed_logins[store_id] = error.code
        log.warning("custom key store %s: the login to its token failed (%s); its calls fail until a login "
                    "succeeds (%s)", store_id, error, _meaning(error))

    async def session_or(
        self, store: CustomKeyStore | None, unusable: errors.KmsError, seen: int | None = None
    ) -> TokenSession:
        """The session of a CONNECTED store whose token accepts its login, else `unusable`: the AWS
        error of the calling operation for an HSM it cannot use (the token's PIN changed or the
        token is gone, or the store was disconnected since `seen`), never a bare HsmError that
        would reach the client as a 500."""
        if store is None or store.state is not ConnectionState.CONNECTED:
            raise unusable
        try:
            return await self.session(store, seen)
        except HsmError:
            self.failed_calls[store.store_id] += 1
            raise unusable from None

    async def call(self, work: Callable[[], _T]) -> _T:
        """`work` (a lookup in the PKCS#11 module) on the thread of its calls; TimeoutError if the
        module does not answer in time."""
        return await self._thread.call(work)

    async def run(
        self, store: CustomKeyStore | None, unusable: errors.KmsError, work: Callable[[TokenSession], _T],
        seen: int | None = None,
    ) -> _T:
        """`work` on the store's session, on the PKCS#11 thread; `unusable` as in `session_or` (give
        `seen`: `disconnects` of the store read before the store), and also when the token fails the
        call (kms/hsm_failures.py says when the session is dropped), does not answer it in time, or
        still holds the thread with a call it did not answer."""
        session = await self.session_or(store, unusable, seen)
        try:
            return await self._on_thread(store, session, work)
        except _HsmFailed:
            self.failed_calls[_store_id(store)] += 1
            raise unusable from None

    async def _on_thread(self, store: CustomKeyStore | None, session: TokenSession,
                         work: Callable[[TokenSession], _T]) -> _T:
        """`run`'s work on the PKCS#11 thread; _HsmFailed when the HSM could not serve it (what `work`
        itself raises goes through)."""
        if self._thread.stuck:  # said once, by the call that was given up on
            raise _HsmFailed
        try:
            return await self._thread.call(lambda: work(session))
        except TimeoutError:
            # The call may still end, or never: either way the session's state is unknown.
            await self.drop(session)
            log.warning("custom key store %s: the HSM did not answer in %g s; its session is dropped",
                        _store_id(store), self._thread.timeout)
            raise _HsmFailed from None
        except p11.NoSuchKey:  # the token no longer holds the key: the session is as good as before
            raise _HsmFailed from None
        except p11.PKCS11Error as exc:
            kept = refused(exc)
            if not kept:
                await self.drop(session)
            log.warning("custom key store %s: the HSM failed a call (%s)%s", _store_id(store), error_name(exc),
                        "" if kept else "; its session is dropped, the next call logs in again")
            raise _HsmFailed from None


class _HsmFailed(Exception):
    """The HSM could not serve a call: `run` answers the store's own AWS error for it."""


def _meaning(error: HsmError) -> str:
    """What the failed login `error` means for the operator, by its ConnectionErrorCode."""
    return _LOGIN_FAILURES.get(error.code, _MODULE_FAILED)


def _store_id(store: CustomKeyStore | None) -> str:
    return store.store_id if store is not None else "(none)"
