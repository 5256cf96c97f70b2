"""DeriveSharedSecret under DryRun stops short of the private key, as every other operation does
("Testing your permissions": DryRun verifies permissions, not the cryptography)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from keytrail.kms import asymmetric, errors
from tests.support.allow_all import alice, allow_all_service


def _peer_spki() -> bytes:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    return public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


async def test_a_dry_run_derives_nothing_and_never_opens_the_private_key(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    created = await service.execute("CreateKey", alice(), {"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"})
    request = {"KeyId": created["KeyMetadata"]["Arn"], "KeyAgreementAlgorithm": "ECDH", "PublicKey": _peer_spki()}
    asymmetric.PRIVATE_KEYS.clear()  # parsed private keys are cached: one parsed shows it was used
    with pytest.raises(errors.DryRunOperationException):
        await service.execute("DeriveSharedSecret", alice(), {**request, "DryRun": True})
    assert len(asymmetric.PRIVATE_KEYS) == 0
    derived = await service.execute("DeriveSharedSecret", alice(), request)
    assert len(derived["SharedSecret"]) == 32 and len(asymmetric.PRIVATE_KEYS) == 1


async def test_a_dry_run_with_a_peer_key_on_another_curve_is_refused_as_the_call_would_be(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    created = await service.execute("CreateKey", alice(), {"KeySpec": "ECC_NIST_P384", "KeyUsage": "KEY_AGREEMENT"})
    request = {"KeyId": created["KeyMetadata"]["Arn"], "KeyAgreementAlgorithm": "ECDH", "PublicKey": _peer_spki()}
    for dry_run in (True, False):
        with pytest.raises(errors.ValidationException):
            await service.execute("DeriveSharedSecret", alice(), {**request, "DryRun": dry_run})
