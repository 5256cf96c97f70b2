"""Rotation calls on a key of a custom key store (the service in this process, over SoftHSM2)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from tests.integration.keystores.in_process import ACCOUNT, REGION, call, hsm_key, service
from tests.support.softhsm import SoftHsm


@pytest.fixture
async def svc(tmp_path: Path, hsm: SoftHsm) -> AsyncIterator[KmsService]:
    async with service(tmp_path) as running:
        yield running


async def test_every_rotation_call_on_an_hsm_key_names_its_origin(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str
) -> None:
    # Key states table, notes [6] and [7]: Enable/DisableKeyRotation and GetKeyRotationStatus treat
    # a key of a custom key store alike; Enable/Disable (and RotateKeyOnDemand) answered no message.
    _, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"
    for operation in ("EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus", "RotateKeyOnDemand"):
        with pytest.raises(errors.UnsupportedOperationException) as raised:
            await call(svc, operation, KeyId=key_id)
        assert raised.value.message == f"{arn} origin is AWS_CLOUDHSM which is not valid for this operation.", operation


@pytest.mark.parametrize("include", [None, "ALL_KEY_MATERIAL", "ROTATIONS_ONLY"])
async def test_list_key_rotations_of_an_hsm_key_is_unsupported(
    svc: KmsService, clusters: Iterator[str], trust_anchor: str, include: str | None
) -> None:
    # ListKeyRotations lists the materials of keys "that support automatic or on-demand key rotation"
    # (its IncludeKeyMaterial member); a key of a custom key store has one material it never rotates,
    # which ALL_KEY_MATERIAL listed as CURRENT.
    _, key_id = await hsm_key(svc, next(clusters), trust_anchor)
    arn = f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"
    with pytest.raises(errors.UnsupportedOperationException) as raised:
        await call(svc, "ListKeyRotations", KeyId=key_id, **({"IncludeKeyMaterial": include} if include else {}))
    assert raised.value.message == f"{arn} origin is AWS_CLOUDHSM which is not valid for this operation."
