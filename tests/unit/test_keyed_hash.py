"""HMAC-SHA256 from kept pad states: the same bytes as the standard library's HMAC."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keytrail.keyed_hash import KeyedSha256


@given(st.binary(max_size=64), st.binary(max_size=40), st.binary(max_size=300))
def test_digest_is_hmac_sha256_of_prefix_and_message(key: bytes, prefix: bytes, message: bytes) -> None:
    keyed = KeyedSha256.of(key, prefix)
    expected = hmac.digest(key, prefix + message, "sha256")
    assert keyed.digest(message) == expected
    assert keyed.hexdigest(message) == expected.hex()
    assert keyed.digest(message) == expected  # the kept states are copied, never consumed


def test_a_key_longer_than_a_block_is_refused_rather_than_hashed_differently() -> None:
    with pytest.raises(ValueError):
        KeyedSha256.of(bytes(65))
