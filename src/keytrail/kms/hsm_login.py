"""C_Login and C_Logout called on their own, apart from opening and closing the session, and
C_GetSessionInfo, which says whether a session's login still holds.

python-pkcs11 logs in only inside `Token.open`, right after C_OpenSession, and out only inside
`Session.close`, right before C_CloseSession; when the token refuses the login or the logout, the
exception leaves the session open on the token and its handle with nobody. Every refused
ConnectCustomKeyStore (a wrong or locked PIN) and every refused logout thus left a session on the
token, which counts them against a limit (AWS CloudHSM, YubiHSM 2). So a store's session is opened
public by python-pkcs11, logged in and out here through the module's own function list, and closed
whatever the login or the logout answered. The calls hold `hsm_module.MODULE_CALLS`, as every
PKCS#11 call of the process does.
"""

from __future__ import annotations

import ctypes
import sys

from pkcs11 import exceptions as p11

__all__ = ["Logins"]

_CKU_USER = 1
# CK_FUNCTION_LIST up to C_Logout, in the order PKCS#11 fixes it (v2.40 §4.6, unchanged in 3.x).
_FUNCTIONS = (
    "C_Initialize", "C_Finalize", "C_GetInfo", "C_GetFunctionList", "C_GetSlotList", "C_GetSlotInfo",
    "C_GetTokenInfo", "C_GetMechanismList", "C_GetMechanismInfo", "C_InitToken", "C_InitPIN", "C_SetPIN",
    "C_OpenSession", "C_CloseSession", "C_CloseAllSessions", "C_GetSessionInfo", "C_GetOperationState",
    "C_SetOperationState", "C_Login", "C_Logout",
)
_LOGIN = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_ulong)
_LOGOUT = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong)
_CKS_USER_FUNCTIONS = frozenset({1, 3})  # CKS_RO_USER_FUNCTIONS, CKS_RW_USER_FUNCTIONS (v2.40 §5.6.1)
# The codes PKCS#11 lists for C_Login and C_Logout, as python-pkcs11 names them, so that the rest of
# keytrail reads these failures as it reads python-pkcs11's (hsm_module's `_ERROR_CODES`, which map
# them to AWS's ConnectionErrorCode values).
_ERRORS: dict[int, type[p11.PKCS11Error]] = {
    0x02: p11.HostMemory, 0x05: p11.GeneralError, 0x06: p11.FunctionFailed, 0x07: p11.ArgumentsBad,
    0x30: p11.DeviceError, 0x31: p11.DeviceMemory, 0x32: p11.DeviceRemoved, 0x50: p11.FunctionCancelled,
    0x91: p11.OperationNotInitialized, 0xA0: p11.PinIncorrect, 0xA1: p11.PinInvalid, 0xA2: p11.PinLenRange,
    0xA3: p11.PinExpired, 0xA4: p11.PinLocked, 0xB0: p11.SessionClosed, 0xB3: p11.SessionHandleInvalid,
    0xB7: p11.SessionReadOnlyExists, 0xE0: p11.TokenNotPresent, 0x100: p11.UserAlreadyLoggedIn,
    0x101: p11.UserNotLoggedIn, 0x102: p11.UserPinNotInitialized, 0x104: p11.AnotherUserAlreadyLoggedIn,
    0x105: p11.UserTooManyTypes,
}


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]


class _SessionInfo(ctypes.Structure):
    _fields_ = [("slot", ctypes.c_ulong), ("state", ctypes.c_ulong), ("flags", ctypes.c_ulong),
                ("device_error", ctypes.c_ulong)]


_GET_SESSION_INFO = ctypes.CFUNCTYPE(ctypes.c_ulong, ctypes.c_ulong, ctypes.POINTER(_SessionInfo))


class _FunctionList(ctypes.Structure):
    if sys.platform == "win32":  # PKCS#11's headers pack its structures to one byte there
        _pack_ = 1
    _fields_ = [("version", _Version), *((name, ctypes.c_void_p) for name in _FUNCTIONS)]


class Logins:
    """C_Login and C_Logout of one PKCS#11 module: the module python-pkcs11 loaded from the same
    path (one library in the process, so the same sessions and logins)."""

    def __init__(self, path: str) -> None:
        library = ctypes.CDLL(path)
        functions = ctypes.POINTER(_FunctionList)()
        get_function_list = library.C_GetFunctionList
        get_function_list.restype = ctypes.c_ulong  # a CK_RV: ctypes' default int reads 0x80000000 on as negative
        _check(get_function_list(ctypes.byref(functions)))
        self._library = library  # kept loaded for as long as its functions are
        self._login = _LOGIN(functions.contents.C_Login)
        self._logout = _LOGOUT(functions.contents.C_Logout)
        self._session_info = _GET_SESSION_INFO(functions.contents.C_GetSessionInfo)

    def log_in(self, handle: int, pin: str) -> None:
        """Log the session's application in to its token as the user (CKU_USER); the PKCS11Error of
        the token's refusal."""
        secret = pin.encode()
        _check(self._login(handle, _CKU_USER, secret, len(secret)))

    def log_out(self, handle: int) -> None:
        """End the login of the session's application on its token (C_Logout)."""
        _check(self._logout(handle))


    def logged_in(self, handle: int) -> bool:
        """Whether the session is logged in as the user (C_GetSessionInfo's state): a token may end
        the login of a session it keeps open (another application's C_Logout, a reset of its login
        state), whose private objects are then invisible. The PKCS11Error of a session it closed."""
        info = _SessionInfo()
        _check(self._session_info(handle, ctypes.byref(info)))
        return info.state in _CKS_USER_FUNCTIONS


def _check(code: int) -> None:
    if code == 0:
        return
    named = _ERRORS.get(code)
    # Else python-pkcs11's text for a code it has no class for, which hsm_failures reads.
    raise named() if named is not None else p11.PKCS11Error(f"Unmapped error code {code:#x}")
