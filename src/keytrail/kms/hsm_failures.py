"""What a failed PKCS#11 call says about the session it failed on."""

from __future__ import annotations

import logging

from pkcs11 import exceptions as p11

__all__ = ["SESSION_LOST", "warn_format_1"]

# Failures that leave the session itself unusable (closed, logged out, token gone): PKCS#11 has
# no way back for such a session, so it is dropped and the next call logs in afresh.
SESSION_LOST: tuple[type[Exception], ...] = (
    p11.SessionHandleInvalid, p11.SessionClosed, p11.UserNotLoggedIn, p11.DeviceRemoved, p11.DeviceError,
    p11.TokenNotPresent, p11.TokenNotRecognised, p11.ObjectHandleInvalid, p11.KeyHandleInvalid,
)


# The name of the module these warnings came from before it was split: logging set up for it holds.
log = logging.getLogger("keytrail.kms.hsm")


def warn_format_1(object_id: bytes, refused: str, exc: p11.PKCS11Error) -> None:
    """Say once per session that a key went back to format 1 and its 2^32 limit, with the PKCS#11
    error: its name, or for a code python-pkcs11 has no name for, its text ("Unmapped error code
    0x1b"), which python-pkcs11 writes from the code alone: nothing the token gave goes in the log."""
    error = str(exc) if type(exc) is p11.PKCS11Error else type(exc).__name__
    log.warning("HSM key object %s: the token refused %s (%s); this session seals its blobs in format 1, "
                "limited to 2^32 (docs/custom-key-stores.md)", object_id.hex(), refused, error)
