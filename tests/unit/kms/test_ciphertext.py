"""The ciphertext blob: self-describing, bound to its context, one way to fail."""

from __future__ import annotations

import os
from typing import Any
from unittest import mock

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from keytrail.kms import ciphertext
from keytrail.kms.ciphertext import (
    FORMAT_V1,
    FORMAT_V2,
    FORMAT_V3,
    TOKEN_SALT,
    encode_context,
    open_blob,
    read_header,
    seal_blob,
)
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



# Sealed by the first release of format 1 with an all-zero nonce: every later release must open it
# (blobs are stored for years; HSM-backed keys still write this format).
KNOWN_V1_BLOB = bytes.fromhex(
    "013131313132323232333333332431323334616263642d313261622d333463642d353665662d313233343536373839306162"
    "abababababababababababababababababababababababababababababababab000000000000000000000000"
    "65d2daa9db0ce2d37bdfcc47f412a752e548da3d2bff3ebaff382078"
)
KNOWN_CONTEXT = {"Department": "IT", "b": "é"}


def test_a_format_1_blob_of_an_earlier_release_still_opens() -> None:
    header = read_header(KNOWN_V1_BLOB)
    assert header.format == FORMAT_V1
    assert open_blob(bytes(range(32)), header, KNOWN_CONTEXT) == b"known answer"


def test_a_blob_is_sealed_under_a_key_derived_from_its_salt_not_under_the_version_secret() -> None:
    # Format 2: AES-256-GCM under HKDF-Expand(secret, label ‖ salt), with the blob's random nonce.
    # Checked against pyca's own HKDF, not keytrail's derivation.
    blob = _seal(b"hello", {"k": "v"})
    header = read_header(blob)
    assert header.format == FORMAT_V2 and len(header.seed) == 32 + 12
    salt, nonce = header.seed[:32], header.seed[32:]
    additional_data = header.header + encode_context({"k": "v"})
    derived = HKDFExpand(hashes.SHA256(), 32, b"keytrail ciphertext blob v2" + salt).derive(SECRET)
    assert AESGCM(derived).decrypt(nonce, header.body, additional_data) == b"hello"
    with pytest.raises(InvalidTag):
        AESGCM(SECRET).decrypt(nonce, header.body, additional_data)


def test_a_derived_key_seals_a_bounded_number_of_blobs_then_a_new_salt_is_drawn(monkeypatch: Any) -> None:
    # NIST SP 800-38D allows one key 2^32 random nonces: a derived key stops long before.
    monkeypatch.setattr(ciphertext, "SUBKEY_BLOBS", 3)
    monkeypatch.setattr(ciphertext, "_SEALING", {})
    salts = [read_header(_seal(b"same")).seed[:32] for _ in range(7)]
    assert salts[0] == salts[1] == salts[2] != salts[3]
    assert salts[3] == salts[4] == salts[5] != salts[6]
    nonces = {read_header(_seal(b"same")).seed[32:] for _ in range(50)}
    assert len(nonces) == 50  # each blob its own nonce


def test_a_format_2_blob_is_written_alike_by_every_release(monkeypatch: Any) -> None:
    secret = bytes(range(32))
    monkeypatch.setattr(ciphertext, "_SEALING", {})
    with mock.patch("keytrail.kms.ciphertext.os.urandom", side_effect=lambda size: bytes(size)):
        blob = seal_blob(secret, account="111122223333", key_id="1234abcd-12ab-34cd-56ef-1234567890ab",
                         material_id=MATERIAL, plaintext=b"known answer", context=KNOWN_CONTEXT)
    assert blob.hex() == KNOWN_V2_BLOB_HEX
    assert open_blob(secret, read_header(blob), KNOWN_CONTEXT) == b"known answer"


# Format 2 as first written (4ba9735f until the nonce came under the same format byte): salt, then
# the body under a key derived per blob and a nonce of zeros. Sealed by keytrail 1f8cc226 with the
# secret bytes(range(32)); the short one has no room for a nonce in today's layout.
FIRST_V2_SHORT_HEX = (
    "023131313132323232333333332431323334616263642d313261622d333463642d353665662d3132333435363738393061"
    "62abababababababababababababababababababababababababababababababab51aac8a978e1d57727ec5227964497722e"
    "404d32aabb436d260b7f46d4234e9a45d1f0d4a0d8b3fee0ffaddcd251ad7942b0bb52e6")
FIRST_V2_LONG_HEX = (
    "023131313132323232333333332431323334616263642d313261622d333463642d353665662d3132333435363738393061"
    "62abababababababababababababababababababababababababababababababab65aad784f991ce7e96b08aa8d8eb259bea"
    "d1b96e404935197e81739a861dbb50feb8276c50bfb574a98fd709d908f955e09c0d2b5323c79b05b09c49f7ef6d7fb350f5"
    "f651cad72aa2db713bd8dc7032")


@pytest.mark.parametrize(("blob_hex", "context", "plaintext"), [
    (FIRST_V2_SHORT_HEX, None, b"hello"),
    (FIRST_V2_LONG_HEX, {"purpose": "test"}, b"a data key of 32 bytes, or so..."),
])
def test_a_format_2_blob_as_first_written_still_opens(blob_hex: str, context: dict[str, str] | None,
                                                       plaintext: bytes) -> None:
    """Those releases' Encrypt, GenerateDataKey and grant-made ciphertexts failed every Decrypt after
    an upgrade (InvalidCiphertextException): their layout changed under the same format byte."""
    blob = bytes.fromhex(blob_hex)
    assert open_blob(bytes(range(32)), read_header(blob), context) == plaintext
    with pytest.raises(InvalidCiphertextException):  # still authenticated: the context is bound
        open_blob(bytes(range(32)), read_header(blob), {"purpose": "other"})
    with pytest.raises(InvalidCiphertextException):
        open_blob(bytes(range(1, 33)), read_header(blob), context)


def test_a_format_1_blob_relabelled_as_format_2_does_not_open() -> None:
    relabelled = bytes([FORMAT_V2]) + KNOWN_V1_BLOB[1:] + bytes(32)  # long enough to parse as format 2
    with pytest.raises(InvalidCiphertextException):
        open_blob(bytes(range(32)), read_header(relabelled), KNOWN_CONTEXT)


def test_a_format_3_blob_parses_but_no_secret_opens_it() -> None:
    # Format 3 is an HSM key's (kms/hsm_derivation.py): its 11-byte salt and nonce parse like any
    # header, but only the token derives its key, so no secret held in software opens it.
    header = read_header(bytes.fromhex(KNOWN_V3_BLOB_HEX))
    assert (header.format, len(header.seed), header.material_id) == (FORMAT_V3, TOKEN_SALT + 12, MATERIAL)
    for secret in (b"", bytes(range(32)), SECRET):
        with pytest.raises(InvalidCiphertextException) as info:
            open_blob(secret, header, KNOWN_CONTEXT)
        assert info.value.message == ""


def test_a_format_3_blob_is_aes_gcm_under_two_aes_blocks_of_the_token_key() -> None:
    # What the token computes for CKM_AES_ECB_ENCRYPT_DATA, here with pyca and a known token key value:
    # tests/integration/keystores/test_custom_key_store_derivation.py checks SoftHSM2 writes the same.
    header = read_header(bytes.fromhex(KNOWN_V3_BLOB_HEX))
    salt, nonce = header.seed[:TOKEN_SALT], header.seed[TOKEN_SALT:]
    blocks = Cipher(algorithms.AES(bytes(range(32))), modes.ECB()).encryptor()
    derived = blocks.update(b"\x01" + salt + bytes(4) + b"\x02" + salt + bytes(4)) + blocks.finalize()
    additional_data = header.header + encode_context(KNOWN_CONTEXT)
    assert AESGCM(derived).decrypt(nonce, header.body, additional_data) == b"known answer"


# Sealed by the first release of format 3 (SoftHSM2 2.6.1, token key bytes(range(32))) with an
# all-zero salt and nonce: every later release and every token writes the same bytes.
KNOWN_V3_BLOB_HEX = (
    "033131313132323232333333332431323334616263642d313261622d333463642d353665662d313233343536373839306162"
    "abababababababababababababababababababababababababababababababab"
    "0000000000000000000000"
    "000000000000000000000000"
    "68ded9b3ed55b03032780dfbe0ea8362a4a5ab4e8828f9153d6c4aef"
)


# Sealed by the first release of format 2 with an all-zero salt and nonce (its derivation is checked
# against pyca's HKDF above): every later release writes the same bytes given the same salt and nonce.
KNOWN_V2_BLOB_HEX = (
    "023131313132323232333333332431323334616263642d313261622d333463642d353665662d313233343536373839306162"
    "abababababababababababababababababababababababababababababababab"
    "0000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000"
    "cca5229cd1f0846ac1bdf534e8f9eb080bd2e6949c639ae5074c5c5f"
)


def _format_1_blob(secret: bytes, plaintext: bytes) -> bytes:
    """A format-1 blob as earlier releases sealed it: GCM under the version's secret itself."""
    header = ciphertext.blob_header("111122223333", "1234abcd-12ab-34cd-56ef-1234567890ab", MATERIAL, FORMAT_V1)
    nonce = os.urandom(12)
    return header + nonce + AESGCM(secret).encrypt(nonce, plaintext, header)


@pytest.mark.parametrize("blob", [KNOWN_V1_BLOB, bytes.fromhex(KNOWN_V3_BLOB_HEX)], ids=["format 1", "format 3"])
def test_a_blob_cut_anywhere_is_refused_as_its_header_is_read(blob: bytes) -> None:
    # Cut in its header, its nonce (AES-GCM would raise ValueError, not InvalidTag, for one under
    # 8 bytes) or short of a whole tag: such a blob reaches neither the key look-up nor the cipher.
    for length in range(len(blob) - len(b"known answer")):
        with pytest.raises(InvalidCiphertextException):
            read_header(blob[:length])


def test_a_format_2_blob_cut_anywhere_does_not_open() -> None:
    # Some cuts parse (as format 2 as first written, which had no nonce), none authenticates.
    blob = _seal(b"a data key of 32 bytes, or so...")
    for length in range(len(blob)):
        with pytest.raises(InvalidCiphertextException):
            open_blob(SECRET, read_header(blob[:length]), None)


@pytest.mark.parametrize("format_byte", [0x00, 0x04, 0x80, 0xFF])
def test_a_blob_of_an_unknown_format_is_invalid_ciphertext(format_byte: int) -> None:
    with pytest.raises(InvalidCiphertextException):
        read_header(bytes([format_byte]) + _seal()[1:])


@pytest.mark.parametrize("account", [b"11112222333a", b"-11122223333", b"111122223333"[::-1].replace(b"1", b" ")])
def test_a_blob_whose_account_is_not_twelve_digits_is_invalid_ciphertext(account: bytes) -> None:
    blob = _seal()
    with pytest.raises(InvalidCiphertextException):
        read_header(blob[:1] + account + blob[13:])


def test_forgetting_a_secret_drops_what_opening_its_format_1_blobs_cached() -> None:
    secret = os.urandom(32)
    blob = _format_1_blob(secret, b"old")
    assert open_blob(secret, read_header(blob), None) == b"old"
    assert ciphertext.holds_secret(secret) and secret in ciphertext.cached_secrets()
    ciphertext.forget_secrets({secret})
    assert not ciphertext.holds_secret(secret) and secret not in ciphertext.cached_secrets()


def test_a_version_keeps_its_derived_key_while_other_versions_seal(monkeypatch: Any) -> None:
    monkeypatch.setattr(ciphertext, "_SEALING", {})
    other = os.urandom(32)
    first = read_header(_seal()).seed[:32]
    seal_blob(other, account="111122223333", key_id="k", material_id=MATERIAL, plaintext=b"x", context=None)
    assert read_header(_seal()).seed[:32] == first


def test_the_sealing_state_of_versions_is_bounded(monkeypatch: Any) -> None:
    # One entry per version that sealed: 4,096 later versions push the first one's out, as they
    # push out its derivation and derived key, so nothing made from it stays cached.
    monkeypatch.setattr(ciphertext, "_SEALING", {})
    secrets = [os.urandom(32) for _ in range(4097)]
    for secret in secrets:
        seal_blob(secret, account="111122223333", key_id="k", material_id=MATERIAL, plaintext=b"x", context=None)
    assert not ciphertext.holds_secret(secrets[0])
    assert ciphertext.holds_secret(secrets[-1])
