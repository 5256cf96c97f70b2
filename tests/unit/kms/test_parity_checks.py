"""Request checks whose AWS answer was looked up for docs/api-compatibility.md and
docs/asymmetric-keys.md ("Checked against AWS"): grant tokens that CreateGrant did not return, the
alias name `alias/`, and the rotation status of asymmetric and HMAC keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from keytrail.kms import errors
from keytrail.kms.service import KmsService
from keytrail.kms.store import Alias
from tests.support.allow_all import ACCOUNT, alice, allow_all_service

BOB = f"arn:aws:iam::{ACCOUNT}:user/bob"


async def _key(service: KmsService) -> str:
    return str((await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["Arn"])


@pytest.mark.parametrize("token", ["my-ignored-grant-token", "ktg1!!!", "AQpAM2RhZTk1MGMyNTk2ZmZmMzEy"])
async def test_a_grant_token_create_grant_did_not_return_is_invalid(tmp_path: Path, token: str) -> None:
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    with pytest.raises(errors.InvalidGrantTokenException) as caught:
        await service.execute("Encrypt", alice(), {"KeyId": key, "Plaintext": b"x", "GrantTokens": [token]})
    assert caught.value.message == "The grant token is invalid."
    with pytest.raises(errors.InvalidGrantTokenException):
        await service.execute(
            "CreateGrant",
            alice(),
            {"KeyId": key, "GranteePrincipal": BOB, "Operations": ["Decrypt"], "GrantTokens": [token]},
        )
    assert (await service.execute("ListGrants", alice(), {"KeyId": key}))["Grants"] == []


async def test_grant_tokens_create_grant_returned_are_accepted_even_once_retired(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    grant = await service.execute(
        "CreateGrant", alice(), {"KeyId": key, "GranteePrincipal": BOB, "Operations": ["Encrypt"]}
    )
    request = {"KeyId": key, "Plaintext": b"x", "GrantTokens": [grant["GrantToken"]]}
    assert (await service.execute("Encrypt", alice(), request))["KeyId"] == key
    await service.execute("RetireGrant", alice(), {"GrantToken": grant["GrantToken"]})
    # AWS documents no answer for the token of a retired grant: it names nothing, and allows nothing.
    assert (await service.execute("Encrypt", alice(), request))["KeyId"] == key


async def test_alias_slash_alone_is_no_alias_name(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    with pytest.raises(errors.InvalidAliasNameException) as caught:
        await service.execute("CreateAlias", alice(), {"AliasName": "alias/", "TargetKeyId": key})
    assert caught.value.message == 'Alias must include a name after the prefix "alias/".'
    assert (await service.execute("ListAliases", alice(), {}))["Aliases"] == []
    missing = f"Alias arn:aws:kms:us-east-1:{ACCOUNT}:alias/ is not found."
    for operation, params in (
        ("UpdateAlias", {"AliasName": "alias/", "TargetKeyId": key}),
        ("DeleteAlias", {"AliasName": "alias/"}),
        ("Encrypt", {"KeyId": "alias/", "Plaintext": b"x"}),
        ("DescribeKey", {"KeyId": "alias/"}),
    ):
        with pytest.raises(errors.NotFoundException) as not_found:
            await service.execute(operation, alice(), params)
        assert not_found.value.message == missing, operation


async def test_an_alias_slash_alone_made_before_the_check_can_still_be_deleted(tmp_path: Path) -> None:
    store, service = allow_all_service(tmp_path)
    key_id = (await service.execute("CreateKey", alice(), {}))["KeyMetadata"]["KeyId"]
    now = service.now()
    assert await store.add_alias(Alias(ACCOUNT, "us-east-1", "alias/", key_id, now, now))
    assert (await service.execute("DescribeKey", alice(), {"KeyId": "alias/"}))["KeyMetadata"]["KeyId"] == key_id
    await service.execute("DeleteAlias", alice(), {"AliasName": "alias/"})
    assert (await service.execute("ListAliases", alice(), {}))["Aliases"] == []


@pytest.mark.parametrize(("spec", "usage"), [("ECC_NIST_P256", "SIGN_VERIFY"), ("HMAC_256", "GENERATE_VERIFY_MAC")])
async def test_rotation_status_of_an_asymmetric_or_hmac_key_is_false(tmp_path: Path, spec: str, usage: str) -> None:
    # AWS answers {"KeyRotationEnabled": false} here (the AWS CLI's output quoted in
    # ansible-collections/community.aws#311; floci-io/floci#618), while Enable/DisableKeyRotation
    # refuse these keys: they never rotate automatically, so there is nothing else to report.
    _, service = allow_all_service(tmp_path)
    created = await service.execute("CreateKey", alice(), {"KeySpec": spec, "KeyUsage": usage})
    arn = created["KeyMetadata"]["Arn"]
    status = await service.execute("GetKeyRotationStatus", alice(), {"KeyId": arn})
    assert status == {"KeyRotationEnabled": False, "KeyId": arn}
    with pytest.raises(errors.UnsupportedOperationException):
        await service.execute("EnableKeyRotation", alice(), {"KeyId": arn})
