"""The PKCS#11 module (shared library) of every custom key store: loading it, the one lock of all its
calls, and finding and logging in to the token a store's CloudHsmClusterId names."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import logging
import os
import threading
from typing import Any

import pkcs11
from pkcs11 import Mechanism
from pkcs11 import exceptions as p11

from keytrail.kms.hsm_derivation import DERIVATION
from keytrail.kms.hsm_login import Logins

__all__ = [
    "MODULE_CALLS", "MODULE_ENV", "TOKENS_ENV", "HsmError", "ModuleNotLoaded", "RefusedLogins", "find_token", "log_in",
    "log_out", "logged_in", "module_path", "token_label",
]

MODULE_ENV = "KEYTRAIL_PKCS11_MODULE"
TOKENS_ENV = "KEYTRAIL_PKCS11_TOKENS"
_ERROR_CODES: dict[type[Exception], str] = {
    p11.PinIncorrect: "INVALID_CREDENTIALS",
    p11.PinInvalid: "INVALID_CREDENTIALS",
    p11.PinLenRange: "INVALID_CREDENTIALS",
    p11.PinLocked: "USER_LOCKED_OUT",
    p11.NoSuchToken: "CLUSTER_NOT_FOUND",
    p11.UserAlreadyLoggedIn: "USER_LOGGED_IN",
    p11.UserPinNotInitialized: "USER_NOT_FOUND",
}
_libraries: dict[str, Any] = {}  # a PKCS#11 module may be initialised only once per process
_logins: dict[str, Logins] = {}
_unloadable: set[str] = set()  # module paths whose load failed, said once in the log
_unreadable_slots: set[tuple[str, int]] = set()  # (module path, slot id) whose token did not read, said once
log = logging.getLogger("keytrail.kms.hsm")
# python-pkcs11 initialises a module with C_Initialize(NULL): a promise that no two threads call it
# at once (PKCS#11 v2.40 §5.4), on which SoftHSM2 turns its own locks off; and it lets go of the GIL
# in each call. Calls of two sessions (two stores) from two worker threads crashed the process, so
# every PKCS#11 call of this process holds this lock (reentrant: a session opens inside a lookup).
MODULE_CALLS = threading.RLock()


class HsmError(Exception):
    """The token could not be reached or logged in to; `code` is AWS's ConnectionErrorCode."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class ModuleNotLoaded(HsmError):
    """KEYTRAIL_PKCS11_MODULE names no shared library that loads: the node's configuration is wrong,
    not the HSM, so no retry can help (CloudHsmClusterInvalidConfigurationException, as for no module)."""

    def __init__(self) -> None:
        super().__init__("INTERNAL_ERROR", f"the PKCS#11 module ({MODULE_ENV}) cannot be loaded")


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
    with MODULE_CALLS:
        if path not in _libraries:
            _require_loadable(path)
            _libraries[path] = pkcs11.lib(path)
        return _libraries[path]


def _require_loadable(path: str) -> None:
    """ModuleNotLoaded if the dynamic loader cannot load `path`, or loads a library without PKCS#11's
    entry point (C_GetFunctionList), with the loader's reason in the log once per path: python-pkcs11
    answers either with a bare PKCS11Error, which read as the HSM failing now
    (CloudHsmClusterNotActiveException) and told the operator nothing of a wrong path or library."""
    try:
        _entry_point(path)
    except (OSError, AttributeError) as exc:
        if path not in _unloadable:
            _unloadable.add(path)
            log.error("%s=%s cannot be loaded: %s", MODULE_ENV, path, exc)
        raise ModuleNotLoaded() from None


def _entry_point(path: str) -> Any:
    """The module's C_GetFunctionList: OSError if the loader cannot load `path`, AttributeError (the
    loader's "undefined symbol") if it is a shared library but no PKCS#11 module."""
    return ctypes.CDLL(path).C_GetFunctionList


def _logins_of(path: str) -> Logins:
    with MODULE_CALLS:
        if path not in _logins:
            _library(path)  # initialised first: C_Login needs C_Initialize done
            _logins[path] = Logins(path)
        return _logins[path]


def find_token(path: str, cluster_id: str) -> bool:
    """True if the module has one initialised token for this cluster id; HsmError if the module
    cannot list its tokens, or if none is found but a slot's token cannot be read (it may be that one)."""
    try:
        with MODULE_CALLS:
            _token(path, cluster_id)
    except (p11.NoSuchToken, p11.MultipleTokensReturned):
        return False
    except p11.PKCS11Error as exc:
        raise HsmError("INTERNAL_ERROR", type(exc).__name__) from None
    return True


def log_in(path: str, cluster_id: str, pin: str) -> tuple[Any, bool]:
    """A read-write session of the cluster's token logged in as its user (CKU_USER), and whether the
    token offers format 3's derivation (kms/hsm_derivation.py); HsmError says why not."""
    try:
        with MODULE_CALLS:
            token = _token(path, cluster_id)
            mechanisms = token.slot.get_mechanisms()
            if Mechanism.AES_GCM not in mechanisms:
                raise HsmError("INTERNAL_ERROR", "the token does not offer CKM_AES_GCM")
            return _logged_in(path, token, pin), DERIVATION in mechanisms
    except p11.PKCS11Error as exc:
        raise HsmError(_ERROR_CODES.get(type(exc), "INTERNAL_ERROR"), type(exc).__name__) from None
    except OSError as exc:
        raise HsmError("INTERNAL_ERROR", str(exc)) from None


def _token(path: str, cluster_id: str) -> Any:
    """The one token labelled as the cluster id says. NoSuchToken or MultipleTokensReturned as
    python-pkcs11's `lib.get_token`, but HsmError for none found where a slot's token cannot be read."""
    label = token_label(cluster_id)
    readable, unreadable = _slot_tokens(path)
    found = [token for token in readable if token.label == label]
    if len(found) > 1:
        raise p11.MultipleTokensReturned(f"More than 1 token is labelled {label}")
    if found:
        return found[0]
    if unreadable:
        raise HsmError("INTERNAL_ERROR", f"no token that reads is labelled {label}; {unreadable} slot(s) do not read")
    raise p11.NoSuchToken(f"No token is labelled {label}")


def _slot_tokens(path: str) -> tuple[list[Any], int]:
    """The tokens of the module's slots, and how many slots' token cannot be read. python-pkcs11's
    `get_token` gives up at the first such slot, which failed every store of the node: SoftHSM2 answers
    CKR_GENERAL_ERROR there for a token deleted or moved away under the process, for as long as it runs."""
    tokens: list[Any] = []
    unreadable = 0
    for slot in _library(path).get_slots(token_present=True):
        try:
            tokens.append(slot.get_token())
        except (p11.TokenNotPresent, p11.TokenNotRecognised):
            continue  # taken out since the slot list was read, or not a token: no token, as python-pkcs11 has it
        except p11.PKCS11Error as exc:
            unreadable += 1
            _say_unreadable(path, slot.slot_id, exc)
        else:
            _unreadable_slots.discard((path, slot.slot_id))
    return tokens, unreadable


def _say_unreadable(path: str, slot_id: int, exc: p11.PKCS11Error) -> None:
    """One warning per slot until its token reads again: every lookup of every store meets the slot."""
    if (path, slot_id) in _unreadable_slots:
        return
    _unreadable_slots.add((path, slot_id))
    log.warning("PKCS#11 slot %d of %s: its token cannot be read (%s); token lookups skip it. A SoftHSM2 token "
                "deleted or moved away under a running keytrail stays unreadable to it, even once its folder is "
                "back: restart keytrail", slot_id, path, type(exc).__name__)


def _logged_in(path: str, token: Any, pin: str) -> Any:
    """A read-write session of the token, logged in as its user, or none left open: the session is
    opened public and logged in apart (hsm_login.py says why), and closed if the login fails."""
    session = token.open(rw=True)
    try:
        _logins_of(path).log_in(session.handle, pin)
    except BaseException:
        with contextlib.suppress(p11.PKCS11Error):  # the login's answer is the one that counts
            session.close()
        raise
    return session


def log_out(path: str, session: Any) -> None:
    """End the login of a session `log_in` gave (C_Logout), then the session itself (C_CloseSession)
    even if the token refused the logout; the PKCS11Error after (the close's, if both failed)."""
    with MODULE_CALLS:
        try:
            _logins_of(path).log_out(session.handle)
        finally:
            session.close()


def logged_in(path: str, session: Any) -> bool:
    """Whether a session `log_in` gave is still logged in as the user (Logins.logged_in)."""
    with MODULE_CALLS:
        return _logins_of(path).logged_in(session.handle)


class RefusedLogins:
    """The passwords a store's token refused, so that they are not tried again on every call: another
    try cannot succeed, and each one counts towards locking the user out of the HSM (AWS CloudHSM
    locks a crypto user out after a few wrong passwords: USER_LOCKED_OUT). Only a digest is kept."""

    _FINAL = frozenset({"INVALID_CREDENTIALS", "USER_LOCKED_OUT", "USER_NOT_FOUND"})

    def __init__(self) -> None:
        self._refused: dict[str, tuple[bytes, str]] = {}  # store id -> (digest of the password, code)

    def check(self, store_id: str, password: str) -> None:
        """HsmError with the token's answer if it refused this password of this store before."""
        refused = self._refused.get(store_id)
        if refused is not None and hmac.compare_digest(refused[0], _digest(password)):
            raise HsmError(refused[1], "the token refused this password; connect the store again to retry")

    def note(self, store_id: str, password: str, error: HsmError) -> None:
        """Remember a login the token refused for good with this password."""
        if error.code in self._FINAL:
            self._refused[store_id] = (_digest(password), error.code)

    def forget(self, store_id: str) -> None:
        """Try the store's password again (ConnectCustomKeyStore, or a login that succeeded)."""
        self._refused.pop(store_id, None)


def _digest(password: str) -> bytes:
    return hashlib.sha256(password.encode()).digest()
