"""What a failed PKCS#11 call says about the session it failed on, and so what becomes of the session.

Three answers keep the session: the token holds no such key (`p11.NoSuchKey`, from C_FindObjects, of
a session still logged in: one whose login ended finds no private object, and `hsm_session` answers
UserNotLoggedIn instead),
the token refuses what was asked of a key (`refused`), and a blob fails authentication in C_Decrypt
(`BLOB_REFUSED`, there only). Any other failure may have left the session broken (closed, logged
out, an operation left active, the token's state unknown): it is discarded, and the next call logs
in afresh. Keeping a broken session fails every call after it; discarding a sound one fails only
the calls in flight on it, and costs one login.
"""

from __future__ import annotations

import logging

from pkcs11 import exceptions as p11

__all__ = ["BLOB_REFUSED", "error_name", "refused", "warn_format_1"]

# The token refuses this request of this key: its attributes, its policy or the mechanism forbid it,
# it keeps its objects as they are (write-protected), or it has no memory for it now. Nothing of the
# session changed.
_REFUSALS: tuple[type[Exception], ...] = (
    p11.KeyTypeInconsistent, p11.KeySizeRange, p11.MechanismInvalid,
    p11.MechanismParamInvalid, p11.AttributeReadOnly, p11.AttributeTypeInvalid, p11.AttributeValueInvalid,
    p11.TemplateIncomplete, p11.TemplateInconsistent, p11.FunctionNotSupported, p11.FunctionRejected,
    p11.DeviceMemory, p11.HostMemory, p11.TokenWriteProtected, p11.SessionReadOnly,
)
# Refusals python-pkcs11 has no class for: it raises a bare PKCS11Error with this text, which it
# writes from the code alone. CKR_ACTION_PROHIBITED (an object whose CKA_MODIFIABLE is false, say)
# and CKR_KEY_FUNCTION_NOT_PERMITTED (a key without the attribute the call needs, as CKA_DERIVE).
_UNNAMED_REFUSALS = frozenset({"Unmapped error code 0x1b", "Unmapped error code 0x68"})
# C_Decrypt's answers to a blob that fails authentication: CKR_ENCRYPTED_DATA_INVALID and _LEN_RANGE
# as PKCS#11 says, and CKR_GENERAL_ERROR, which is what SoftHSM2 2.6 answers to a wrong GCM tag.
BLOB_REFUSED: tuple[type[Exception], ...] = (p11.EncryptedDataInvalid, p11.EncryptedDataLenRange, p11.GeneralError)

# The name of the module these warnings came from before it was split: logging set up for it holds.
log = logging.getLogger("keytrail.kms.hsm")


def refused(exc: Exception) -> bool:
    """True if the token refused what was asked of a key and the session is as good as before."""
    if type(exc) is p11.PKCS11Error:
        return str(exc) in _UNNAMED_REFUSALS
    return isinstance(exc, _REFUSALS)


def error_name(exc: p11.PKCS11Error) -> str:
    """The PKCS#11 error's name, or for a code python-pkcs11 has no name for, its text ("Unmapped
    error code 0x1b"), which python-pkcs11 writes from the code alone: nothing the token gave."""
    return str(exc) if type(exc) is p11.PKCS11Error else type(exc).__name__


def warn_format_1(object_id: bytes, refusal: str, exc: p11.PKCS11Error) -> None:
    """Say once per session that a key went back to format 1 and its 2^32 limit, with the PKCS#11
    error's name (`error_name`): nothing the token gave goes in the log."""
    log.warning("HSM key object %s: the token refused %s (%s); this session seals its blobs in format 1, "
                "limited to 2^32 (docs/custom-key-stores.md)", object_id.hex(), refusal, error_name(exc))
