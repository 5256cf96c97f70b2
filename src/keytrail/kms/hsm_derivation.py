"""Format 3 blobs: AES-256-GCM under a key the HSM derives from its own key, inside the HSM.

A key in a custom key store never leaves its token, so the token itself must derive the per-salt
keys that lift format 1's limit (2^32 random 96-bit nonces under one AES-GCM key, NIST SP 800-38D).
The mechanism is `CKM_AES_ECB_ENCRYPT_DATA` in `C_DeriveKey`: the derived key's value is the token's
key encrypting data we give it, AES-256-ECB over two blocks:

    derived key = AES_K(0x01 ‖ salt ‖ 00 00 00 00) ‖ AES_K(0x02 ‖ salt ‖ 00 00 00 00)    salt: 11 bytes

That is a counter-mode KDF in the style of NIST SP 800-108 with one AES block as the PRF (AES is a
permutation, so a PRF up to the birthday bound of 2^64 blocks; SP 800-108 itself names HMAC, CMAC and
KMAC). The last 32 bits are zero on purpose: the same key still opens format 1 blobs, AES-GCM with
96-bit nonces, whose counter blocks are `nonce ‖ ctr` with ctr >= 1 and whose hash key is
AES_K(0^128), so a derivation block is never a block the key's own GCM ever encrypts.

Why this mechanism: SoftHSM2 2.6.1 derives from an AES key only with `CKM_AES_ECB_ENCRYPT_DATA` and
`CKM_AES_CBC_ENCRYPT_DATA` (no `CKM_SP800_108_*`, no `CKM_HKDF_DERIVE`), and these two are PKCS#11's
standard AES derivations (Entrust nShield's PKCS#11 mechanism table, for one, lists both). The CBC
form chains the second block through the first one's output, which would lose the separation from
GCM above. AWS CloudHSM (Client SDK 5) derives only with its SP 800-108 counter KDF and ECDH, and
YubiHSM 2 derives no AES keys: there a key keeps writing format 1 (`TokenSession.derives`). An
SP 800-108 derivation gives other keys, so it would be a format of its own, written where a token
offers it and tested against one.

A derived key is a session object (`CKA_TOKEN` false) that is sensitive and never extractable, with
only `CKA_ENCRYPT` and `CKA_DECRYPT`: it dies with the session and cannot be read out. One salt seals
`SUBKEY_BLOBS` blobs; derived keys are kept per session, the least recently used destroyed past
`DERIVED_KEYS_PER_SESSION` (deriving one again costs a C_DeriveKey, ≈ 0.2 ms on SoftHSM2).
"""

from __future__ import annotations

import contextlib
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag
from pkcs11 import exceptions as p11

from keytrail.kms.ciphertext import SUBKEY_BLOBS, TOKEN_SALT

__all__ = ["DERIVATION", "DERIVED_KEYS_PER_SESSION", "DerivedKeys", "derivation_data", "derive"]

DERIVATION = Mechanism.AES_ECB_ENCRYPT_DATA
DERIVED_KEYS_PER_SESSION = 256
_DERIVED_TEMPLATE = {
    Attribute.TOKEN: False,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
}


def derivation_data(salt: bytes) -> bytes:
    """The two AES blocks the token encrypts into the derived key (module docstring)."""
    if len(salt) != TOKEN_SALT:
        raise ValueError(f"a format 3 salt is {TOKEN_SALT} bytes")
    return b"\x01" + salt + bytes(4) + b"\x02" + salt + bytes(4)


def derive(base: Any, salt: bytes) -> Any:
    """C_DeriveKey: the AES-256 session key of `salt` under the token key `base`."""
    return base.derive_key(
        KeyType.AES,
        256,
        capabilities=MechanismFlag.ENCRYPT | MechanismFlag.DECRYPT,  # every other use is set false
        mechanism=DERIVATION,
        mechanism_param=derivation_data(salt),
        template=_DERIVED_TEMPLATE,
    )


@dataclass(slots=True)
class _Sealing:
    """The salt a token key seals with now, and how many more blobs it may seal."""

    salt: bytes
    left: int


class DerivedKeys:
    """The derived keys of one PKCS#11 session. Not thread-safe: the session's lock guards it."""

    def __init__(self, limit: int | None = None, blobs_per_key: int | None = None) -> None:
        self._keys: OrderedDict[tuple[bytes, bytes], Any] = OrderedDict()  # (object id, salt) -> key
        self._sealing: dict[bytes, _Sealing] = {}  # by object id
        # Read as a session starts, not as this module loads, so that tests can make them small.
        self._limit = max(1, DERIVED_KEYS_PER_SESSION if limit is None else limit)  # 0 would destroy the key in use
        self._blobs_per_key = SUBKEY_BLOBS if blobs_per_key is None else blobs_per_key

    def sealing(self, base: Any, object_id: bytes) -> tuple[bytes, Any]:
        """The salt and derived key that the next blob of token key `object_id` is sealed under."""
        sealing = self._sealing.get(object_id)
        if sealing is None or sealing.left <= 0:
            if len(self._sealing) >= 4096:  # keys seen: drop them all rather than grow without bound
                self._sealing.clear()
            sealing = self._sealing[object_id] = _Sealing(os.urandom(TOKEN_SALT), self._blobs_per_key)
        key = self.key(base, object_id, sealing.salt)
        sealing.left -= 1
        return sealing.salt, key

    def key(self, base: Any, object_id: bytes, salt: bytes) -> Any:
        """The derived key of `salt` under token key `object_id`, derived now if not kept."""
        found = self._keys.get((object_id, salt))
        if found is not None:
            self._keys.move_to_end((object_id, salt))
            return found
        derived = self._keys[object_id, salt] = derive(base, salt)
        if len(self._keys) > self._limit:
            _, oldest = self._keys.popitem(last=False)
            with contextlib.suppress(p11.PKCS11Error):  # a session object: it dies with the session anyway
                oldest.destroy()
        return derived

    def __len__(self) -> int:
        return len(self._keys)
