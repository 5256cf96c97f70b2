"""How callers name keys, and AWS's messages when they name none."""

from __future__ import annotations

import pytest

from keytrail.kms.identifiers import KeyRefError, RefKind, is_key_id, parse_key_ref

KEY = "1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize(("raw", "kind", "account", "name"), [
    (KEY, RefKind.KEY_ID, "111122223333", KEY),
    (f"arn:aws:kms:us-east-1:444455556666:key/{KEY}", RefKind.KEY_ARN, "444455556666", KEY),
    ("alias/app", RefKind.ALIAS_NAME, "111122223333", "alias/app"),
    ("arn:aws:kms:us-east-1:444455556666:alias/app", RefKind.ALIAS_ARN, "444455556666", "alias/app"),
])
def test_four_forms(raw: str, kind: RefKind, account: str, name: str) -> None:
    ref = parse_key_ref(raw, account="111122223333", region="us-east-1")
    assert (ref.kind, ref.account, ref.name) == (kind, account, name)


def test_other_region_arn_and_malformed_ids() -> None:
    with pytest.raises(KeyRefError, match="^Invalid arn eu-west-1$"):
        parse_key_ref(f"arn:aws:kms:eu-west-1:111122223333:key/{KEY}", account="111122223333", region="us-east-1")
    with pytest.raises(KeyRefError, match="^Invalid keyId 'fake'$"):
        parse_key_ref("fake", account="111122223333", region="us-east-1")


def test_key_id_shapes() -> None:
    assert is_key_id(KEY) and is_key_id("mrk-" + "0" * 32)
    assert not is_key_id(KEY.upper()) and not is_key_id("mrk-" + "0" * 31) and not is_key_id("0" * 32)


@pytest.mark.parametrize(("raw", "message"), [
    (f"{KEY}\n", f"Invalid keyId '{KEY}\n'"),
    (f"arn:aws:kms:us-east-1:111122223333:key/{KEY}\n", f"Invalid arn arn:aws:kms:us-east-1:111122223333:key/{KEY}\n"),
    ("arn:aws:kms:us-east-1:111122223333:alias/app\n", "Invalid arn arn:aws:kms:us-east-1:111122223333:alias/app\n"),
])
def test_a_trailing_newline_names_no_key(raw: str, message: str) -> None:
    # A regex `$` also matches before a final newline: such ids resolved to the key or alias.
    with pytest.raises(KeyRefError) as info:
        parse_key_ref(raw, account="111122223333", region="us-east-1")
    assert str(info.value) == message
