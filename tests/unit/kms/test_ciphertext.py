"""The ciphertext blob: self-describing, bound to its context, one way to fail."""

from __future__ import annotations

import os
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keytrail.kms.ciphertext import encode_context, open_blob, read_header, seal_blob
from keytrail.kms.errors import InvalidCiphertextException

SECRET = os.urandom(32)
MATERIAL = "ab" * 32


def _seal(plaintext: bytes = b"data", context: dict[str, str] | None = None) -> bytes:
    return seal_blob(SECRET, account="111122223333", key_id="1234abcd-12ab-34cd-56ef-1234567890ab",
                     material_id=MATERIAL, plaintext=plaintext, context=context)


def test_header_names_account_key_and_material() -> None:
    header = read_header(_seal())
    assert (header.account, header.key_id, header.material_id) == (
        "111122223333", "1234abcd-12ab-34cd-56ef-1234567890ab", MATERIAL)


def test_round_trip_with_context() -> None:
    blob = _seal(b"hello", {"b": "2", "a": "1"})
    assert open_blob(SECRET, read_header(blob), {"a": "1", "b": "2"}) == b"hello"


def test_every_flipped_byte_fails_as_invalid_ciphertext() -> None:
    blob = _seal(b"x" * 8, {"k": "v"})
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(InvalidCiphertextException) as info:
            open_blob(SECRET, read_header(bytes(tampered)), {"k": "v"})
        assert info.value.message == ""


@given(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4),
       st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=4))
def test_context_encoding_is_injective(first: dict[str, str], second: dict[str, str]) -> None:
    assert (encode_context(first) == encode_context(second)) == (first == second)


def test_empty_and_missing_context_are_the_same() -> None:
    assert encode_context({}) == encode_context(None) == b""


def test_context_encoding_is_stable_so_stored_blobs_keep_opening() -> None:
    # The encoding is part of every stored blob's additional data: its bytes must never change.
    assert encode_context({"b": "é", "a": "xy"}) == (
        b"\x00\x02" + b"\x00\x00\x00\x01a" + b"\x00\x00\x00\x02xy" + b"\x00\x00\x00\x01b" + b"\x00\x00\x00\x02\xc3\xa9"
    )



# Sealed by the first release of this format with an all-zero nonce: every later release must
# open it, and write the same bytes given the same nonce.
KNOWN_BLOB = bytes.fromhex(
    "013131313132323232333333332431323334616263642d313261622d333463642d353665662d313233343536373839306162"
    "abababababababababababababababababababababababababababababababab000000000000000000000000"
    "65d2daa9db0ce2d37bdfcc47f412a752e548da3d2bff3ebaff382078"
)
KNOWN_CONTEXT = {"Department": "IT", "b": "é"}


def test_a_blob_of_an_earlier_release_opens_and_is_written_alike() -> None:
    secret = bytes(range(32))
    assert open_blob(secret, read_header(KNOWN_BLOB), KNOWN_CONTEXT) == b"known answer"
    with mock.patch("keytrail.kms.ciphertext.os.urandom", return_value=bytes(12)):
        blob = seal_blob(secret, account="111122223333", key_id="1234abcd-12ab-34cd-56ef-1234567890ab",
                         material_id=MATERIAL, plaintext=b"known answer", context=KNOWN_CONTEXT)
    assert blob == KNOWN_BLOB
