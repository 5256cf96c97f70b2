"""Making new key material for a key spec. Slow generators (RSA) run off the event loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from functools import partial

from keytrail.kms.asymmetric import generate_pkcs8
from keytrail.kms.errors import UnsupportedOperationException
from keytrail.kms.model import KeySpec

__all__ = ["GENERATORS", "generate_secret"]

# HMAC key lengths follow the digest size, as AWS's HMAC key specs do.
_HMAC_BYTES = {KeySpec.HMAC_224: 28, KeySpec.HMAC_256: 32, KeySpec.HMAC_384: 48, KeySpec.HMAC_512: 64}



def _random(size: int) -> Callable[[], bytes]:
    return lambda: os.urandom(size)


GENERATORS: dict[KeySpec, Callable[[], bytes]] = {
    KeySpec.SYMMETRIC_DEFAULT: _random(32),
    **{spec: _random(size) for spec, size in _HMAC_BYTES.items()},
}
# Asymmetric keys (RSA, ECC, Ed25519, ML-DSA, ML-KEM): a PKCS#8 DER private key. SM2 is absent
# (China Regions only); ML_KEM_512 refuses with its reason (pq.py).
GENERATORS.update({spec: partial(generate_pkcs8, spec) for spec in KeySpec
                   if spec not in GENERATORS and spec is not KeySpec.SM2})
_SLOW = frozenset({KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096})


async def generate_secret(spec: KeySpec) -> bytes:
    """New secret material for `spec` (raw bytes, or a PKCS#8 DER private key)."""
    generator = GENERATORS.get(spec)
    if generator is None:
        raise UnsupportedOperationException(f"KeySpec {spec} is not supported.")
    if spec in _SLOW:
        return await asyncio.to_thread(generator)
    return generator()
