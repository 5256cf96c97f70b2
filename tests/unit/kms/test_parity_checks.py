"""Request checks whose AWS answer was looked up for docs/api-compatibility.md and
docs/asymmetric-keys.md ("Checked against AWS"): grant tokens that CreateGrant did not return, the
alias name `alias/`, and the rotation status of asymmetric and HMAC keys."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def _forged(token: str, change: Callable[[bytes], bytes]) -> str:
    """`token` with its decoded bytes changed by `change`, encoded again in the same form."""
    raw = token.removeprefix("ktg1")
    body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    return "ktg1" + base64.urlsafe_b64encode(change(body)).decode().rstrip("=")


async def test_grant_tokens_are_checked_against_the_grant_they_name(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    create = {"KeyId": key, "GranteePrincipal": BOB, "Operations": ["Encrypt"], "Name": "reader"}
    first = await service.execute("CreateGrant", alice(), create)
    again = await service.execute("CreateGrant", alice(), create)  # a retry by name: the same grant, a new token
    assert again["GrantId"] == first["GrantId"] and again["GrantToken"] != first["GrantToken"]

    def encrypt(token: str) -> Any:
        return service.execute("Encrypt", alice(), {"KeyId": key, "Plaintext": b"x", "GrantTokens": [token]})

    for token in (first["GrantToken"], again["GrantToken"]):
        assert (await encrypt(token))["KeyId"] == key
    # In the right form, naming the grant or one never made, each was taken as if CreateGrant had
    # returned it (docs/api-compatibility.md said otherwise).
    made_up = [
        _forged(again["GrantToken"], lambda body: body[:-1] + bytes([body[-1] ^ 1])),  # its tag changed
        _forged(again["GrantToken"], lambda body: body[:-16]),  # its tag cut off
        _forged(first["GrantToken"], lambda body: body + b"\0"),  # a byte more
        _forged(first["GrantToken"], lambda body: body.replace(first["GrantId"].encode(), b"f" * 64)),
        again["GrantToken"][:-5],
    ]
    for token in made_up:
        with pytest.raises(errors.InvalidGrantTokenException):
            await encrypt(token)
        with pytest.raises((errors.InvalidGrantTokenException, errors.NotFoundException)):
            await service.execute("RetireGrant", alice(), {"GrantToken": token})
    assert [g["GrantId"] for g in (await service.execute("ListGrants", alice(), {"KeyId": key}))["Grants"]] == [
        first["GrantId"]]
    await service.execute("RetireGrant", alice(), {"GrantToken": again["GrantToken"]})
    # The token of a retired grant names no grant any more (AWS documents no answer for it).
    with pytest.raises(errors.InvalidGrantTokenException):
        await encrypt(first["GrantToken"])


async def test_alias_slash_alone_is_no_alias_name(tmp_path: Path) -> None:
    _, service = allow_all_service(tmp_path)
    key = await _key(service)
    with pytest.raises(errors.InvalidAliasNameException) as caught:
        await service.execute("CreateAlias", alice(), {"AliasName": "alias/", "TargetKeyId": key})
    assert caught.value.message == 'Alias must include a name after the prefix "alias/".'
    assert [a for a in (await service.execute("ListAliases", alice(), {}))["Aliases"] if "TargetKeyId" in a] == []
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
    assert [a for a in (await service.execute("ListAliases", alice(), {}))["Aliases"] if "TargetKeyId" in a] == []


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
