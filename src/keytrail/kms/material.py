"""Making new key material for a key spec, and forgetting deleted material. Slow generators (RSA)
run off the event loop, on threads of their own (`SLOW_GENERATIONS`)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Collection, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TypeVar

from keytrail.kms import ciphertext
from keytrail.kms.asymmetric import PRIVATE_KEYS, generate_pkcs8
from keytrail.kms.errors import ThrottlingException, UnsupportedOperationException
from keytrail.kms.keys import Key
from keytrail.kms.model import KeySpec

__all__ = [
    "GENERATORS", "SLOW_GENERATIONS", "SlowGenerations", "cached_secrets", "forget_deleted", "forget_unheld",
    "generate_secret", "secret_cached",
]

T = TypeVar("T")
THROTTLED = "You have exceeded the rate at which you may call KMS. Reduce the frequency of your calls."


class SlowGenerations:
    """RSA key generation (0.1-1.2 s a key) on threads of its own, with a bound on the calls
    waiting for one. On the event loop's shared pool, a caller asking for many RSA keys at once
    queued every other thread's work behind them for minutes: HSM calls, the consumer's reads,
    the closing digest. Past the bound a call is refused as AWS refuses one over its request quota
    (GenerateDataKeyPair RSA_4096: 1 a second), with ThrottlingException, which SDKs retry."""

    def __init__(self, threads: int, waiting: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="keytrail-keygen")
        self.waiting = waiting
        self._calls = 0  # running or waiting

    async def run(self, generator: Callable[[], T]) -> T:
        if self._calls >= self.waiting:
            raise ThrottlingException(THROTTLED)
        self._calls += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, generator)
        finally:
            self._calls -= 1


SLOW_GENERATIONS = SlowGenerations(threads=min(4, os.cpu_count() or 1), waiting=64)

# HMAC key lengths follow the digest size, as AWS's HMAC key specs do.
_HMAC_BYTES = {KeySpec.HMAC_224: 28, KeySpec.HMAC_256: 32, KeySpec.HMAC_384: 48, KeySpec.HMAC_512: 64}



def _random(size: int) -> Callable[[], bytes]:
    return lambda: os.urandom(size)


GENERATORS: dict[KeySpec, Callable[[], bytes]] = {
    KeySpec.SYMMETRIC_DEFAULT: _random(32),
    **{spec: _random(size) for spec, size in _HMAC_BYTES.items()},
}
# Asymmetric keys (RSA, ECC, Ed25519, ML-DSA, ML-KEM): a PKCS#8 DER private key. SM2 is absent:
# keytrail has none in any Region (`cryptography` offers none; asymmetric.check_offered_in_region);
# ML_KEM_512 refuses with its reason (pq.py).
GENERATORS.update({spec: partial(generate_pkcs8, spec) for spec in KeySpec
                   if spec not in GENERATORS and spec is not KeySpec.SM2})
_SLOW = frozenset({KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096})


async def generate_secret(spec: KeySpec) -> bytes:
    """New secret material for `spec` (raw bytes, or a PKCS#8 DER private key)."""
    generator = GENERATORS.get(spec)
    if generator is None:
        raise UnsupportedOperationException(f"KeySpec {spec} is not supported.")
    if spec in _SLOW:
        return await SLOW_GENERATIONS.run(generator)
    return generator()


def forget_deleted(before: Key, after: Iterable[Key] = ()) -> None:
    """Drop from the process's caches (parsed private keys, AES-GCM objects, derived keys) what was
    made from the secrets `before` held and none of `after` holds: material deleted, expired, or
    gone with its key. Called once the deletion is stored, so that the material stays in memory
    no longer than the call (or tick) deleting it, rather than until 1,024 or 4,096 newer entries
    push it out. The same material still held elsewhere (a copy of a multi-Region key, another key
    it was imported into) is made again on its next use."""
    kept = {m.secret for key in after for m in key.materials}
    gone = {m.secret for m in before.materials if m.secret and m.secret not in kept}
    if gone:
        PRIVATE_KEYS.forget(gone)
        ciphertext.forget_secrets(gone)


def cached_secrets() -> set[bytes]:
    """The secrets any cache here holds something made from (the scheduler's sweep)."""
    return PRIVATE_KEYS.secrets() | ciphertext.cached_secrets()


def forget_unheld(cached: Collection[bytes], keys: Iterable[Key]) -> None:
    """Drop what was made from those of `cached` (`cached_secrets()` before `keys` were read) that
    none of `keys`, every key in the store, holds: material deleted by another node sharing the
    store, which forgets only in its own process (`forget_deleted`). Secrets cached after `keys`
    were read (a key created meanwhile) are not in `cached`, so not taken for deleted."""
    if not cached:
        return
    held = {m.secret for key in keys for m in key.materials if m.secret in cached}
    gone = set(cached) - held
    if gone:
        PRIVATE_KEYS.forget(gone)
        ciphertext.forget_secrets(gone)


def secret_cached(secret: bytes) -> bool:
    """Whether any cache here still holds something made from `secret`."""
    return PRIVATE_KEYS.holds(secret) or ciphertext.holds_secret(secret)
