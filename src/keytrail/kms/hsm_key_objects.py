"""The token's key objects as one session sees them: found by object id (CKA_ID) and kept, made,
and allowed to derive format 3's keys (kms/hsm_derivation.py)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from pkcs11 import Attribute, KeyType, MechanismFlag, ObjectClass
from pkcs11 import exceptions as p11

from keytrail.kms.hsm_failures import error_name, refused, warn_format_1

__all__ = ["UNUSED_CAPABILITIES", "KeyObjects"]

# What backing keys made before format 3 were allowed (python-pkcs11's default for AES keys) and no
# keytrail ever did with them: sign and verify (AES-CMAC), wrap and unwrap other keys.
UNUSED_CAPABILITIES = (Attribute.SIGN, Attribute.VERIFY, Attribute.WRAP, Attribute.UNWRAP)
log = logging.getLogger("keytrail.kms.hsm")


class KeyObjects:
    """The key objects of one session. Not thread-safe: the session's lock guards it."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._handles: dict[bytes, Any] = {}  # C_FindObjects per call costs more than the cipher
        self._derivable: dict[bytes, bool] = {}  # by object id: whether the key has CKA_DERIVE
        self._narrowed: set[bytes] = set()  # object ids whose unused capabilities were seen to

    def get(self, object_id: bytes) -> Any:
        """The key object; NoSuchKey if the token holds none with this id."""
        key = self._handles.get(object_id)
        if key is None:
            key = self._session.get_key(object_class=ObjectClass.SECRET_KEY, id=object_id)
            self._handles[object_id] = key
        return key

    def generate(self, object_id: bytes, label: str) -> None:
        """A persistent AES-256 key that can never be read out of the token, allowed only what
        keytrail does with it: AES-GCM, and deriving format 3's keys."""
        template = {
            Attribute.TOKEN: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SENSITIVE: True,
            Attribute.PRIVATE: True,
        }
        capabilities = MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT | MechanismFlag.DERIVE
        self._session.generate_key(
            KeyType.AES, 256, id=object_id, label=label, store=True, capabilities=capabilities, template=template,
        )

    def destroy(self, object_id: bytes) -> None:
        """Remove the key from the token (C_DestroyObject) and forget what this session knew of it;
        NoSuchKey if the token holds none with this id."""
        self.get(object_id).destroy()
        self._handles.pop(object_id, None)
        self._derivable.pop(object_id, None)
        self._narrowed.discard(object_id)

    def require(self, object_id: bytes) -> None:
        """A PKCS11Error if the token no longer holds the key: a derived key outlives its backing key
        deleted from the token, but what it seals would open only while this session lasts, and
        what it opens should not open at all."""
        self.get(object_id)[Attribute.CLASS]

    @contextlib.contextmanager
    def deleted_as_no_such_key(self, object_id: bytes) -> Iterator[None]:
        """NoSuchKey when a call failed on the key's cached handle because another session deleted
        the key: the handle is invalid, but this session is fine and is not to be dropped. Looked up
        again, a key still there means the session itself failed, and the error stands."""
        try:
            yield
        except (p11.ObjectHandleInvalid, p11.KeyHandleInvalid):
            self._handles.pop(object_id, None)
            self.get(object_id)  # NoSuchKey if it was deleted
            raise

    def narrow(self, object_id: bytes) -> None:
        """Once per session and key, clear the capabilities an older keytrail gave the key and none
        uses (UNUSED_CAPABILITIES): PKCS#11 lets their owner clear them, and a key that can wrap or
        sign serves whoever holds the token's PIN for more than keytrail's blobs. What the token will
        not change stays as it is. This never fails the call: a session it found failing fails the
        call's own PKCS#11 calls next, and the next session tries again."""
        if object_id in self._narrowed:
            return
        self._narrowed.add(object_id)
        key = self.get(object_id)
        try:
            values = key.get_attributes(list(UNUSED_CAPABILITIES))  # keyed by the attributes' numbers
        except p11.PKCS11Error:
            return
        allowed = [attribute for attribute in UNUSED_CAPABILITIES if values.get(attribute)]
        if allowed:
            cleared, kept = _clear(key, allowed)
            _say_narrowed(object_id, cleared, kept)

    def derives(self, object_id: bytes) -> bool:
        """Whether the key has (or was just given) CKA_DERIVE."""
        known = self._derivable.get(object_id)
        if known is None:
            known = self._derivable[object_id] = self._allow_derivation(object_id)
        return known

    def _allow_derivation(self, object_id: bytes) -> bool:
        """Keys made before format 3 lack CKA_DERIVE, which PKCS#11 lets their owner set later: set
        once, it frees them of the 2^32 limit too. A token that refuses keeps them on format 1."""
        key = self.get(object_id)
        if key[Attribute.DERIVE]:
            return True
        try:
            key[Attribute.DERIVE] = True
        except p11.PKCS11Error as exc:
            # Only a refusal says the key cannot derive; kept for the session, it would refuse the
            # key's format 3 blobs on a failure that was the session's (which is dropped instead).
            if not refused(exc):
                raise
            warn_format_1(object_id, "setting CKA_DERIVE", exc)
            return False
        del self._handles[object_id]  # python-pkcs11 gives an object derive_key() only if CKA_DERIVE was true
        return True


def _clear(key: Any, attributes: list[Attribute]) -> tuple[list[Attribute], dict[Attribute, str]]:
    """Set each attribute false on its own, so that one the token keeps does not keep the others:
    the attributes cleared, and those that stay with the PKCS#11 error's name. A failure that is not
    the token's refusal ends it: the session may be failing, and the next session tries again."""
    cleared: list[Attribute] = []
    kept: dict[Attribute, str] = {}
    for attribute in attributes:
        try:
            key[attribute] = False
        except p11.PKCS11Error as exc:
            kept[attribute] = error_name(exc)
            if not refused(exc):
                break
        else:
            cleared.append(attribute)
    return cleared, kept


def _say_narrowed(object_id: bytes, cleared: list[Attribute], kept: dict[Attribute, str]) -> None:
    names = ", ".join(f"CKA_{attribute.name}" for attribute in cleared) or "nothing"
    refusals = "".join(f"; CKA_{attribute.name} stays ({error})" for attribute, error in kept.items())
    log.info("HSM key object %s, made before keytrail allowed its keys only what it does with them: cleared %s%s",
             object_id.hex(), names, refusals)
