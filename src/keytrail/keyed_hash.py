"""HMAC-SHA256 under one fixed key, kept as its two keyed SHA-256 states.

RFC 2104's HMAC is SHA-256 over the key padded and XORed with an outer pad, of SHA-256 over the key
XORed with an inner pad and the message. Keeping those two states hashed once and copying them per
message costs about half of `hmac.HMAC.copy()` plus a digest (0.66 against 1.13 µs measured),
and a third of a one-shot `hmac.digest` (which pads the key again each time); hashlib runs the
same OpenSSL SHA-256.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["KeyedSha256"]

_BLOCK = 64  # SHA-256's block size


@dataclass(frozen=True, slots=True)
class KeyedSha256:
    """HMAC-SHA256 under one key; `prefix` is absorbed once, as the start of every message."""

    inner: hashlib._Hash
    outer: hashlib._Hash

    @classmethod
    def of(cls, key: bytes, prefix: bytes = b"") -> KeyedSha256:
        if len(key) > _BLOCK:
            raise ValueError("a key longer than SHA-256's block would be hashed first; not needed here")
        block = key.ljust(_BLOCK, b"\0")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        inner.update(prefix)
        return cls(inner, hashlib.sha256(bytes(b ^ 0x5C for b in block)))

    def _outer(self, message: bytes) -> hashlib._Hash:
        inner, outer = self.inner.copy(), self.outer.copy()
        inner.update(message)
        outer.update(inner.digest())
        return outer

    def digest(self, message: bytes) -> bytes:
        return self._outer(message).digest()

    def hexdigest(self, message: bytes) -> str:
        return self._outer(message).hexdigest()
