"""A name holding a NUL character, which no PostgreSQL text can hold, against `serve --store
postgresql://…`: the key or alias it names does not exist, as with the SQLite store, never a 500."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.errors import aws_error
from tests.support.postgres import database_url, scratch_database
from tests.support.server import ACCOUNT, KeytrailServer

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeytrailServer]:
    with scratch_database() as name:
        running = KeytrailServer(tmp_path_factory.mktemp("nul") / "data", "--store", database_url(name)).start()
        yield running
        running.stop()


def _forged_blob(key_id: bytes) -> bytes:
    """A format-2 ciphertext blob (kms/ciphertext.py) whose header names `key_id`: salt, nonce and tag of zeros."""
    return b"\x02" + ACCOUNT.encode() + bytes([len(key_id)]) + key_id + bytes(32) + bytes(32 + 12 + 16)


@pytest.mark.parametrize("key_id", ["alias/a\x00b", f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/\x00"])
def test_an_alias_name_with_a_nul_names_no_alias(server: KeytrailServer, key_id: str) -> None:
    # It was KMSInternalException, a traceback in the log: asyncpg refuses the query
    # ('invalid byte sequence for encoding "UTF8": 0x00').
    kms = server.client("alice")
    code, message, _ = aws_error(kms.describe_key, KeyId=key_id)
    assert code == "NotFoundException", message
    assert aws_error(kms.encrypt, KeyId=key_id, Plaintext=b"x")[0] == "NotFoundException"


@pytest.mark.parametrize("key_id", [b"\x00", b"1234abcd-12ab-34cd-56ef-1234567890a\x00"])
def test_a_ciphertext_naming_a_key_id_with_a_nul_names_no_key(server: KeytrailServer, key_id: bytes) -> None:
    code, message, _ = aws_error(server.client("alice").decrypt, CiphertextBlob=_forged_blob(key_id))
    assert code == "AccessDeniedException", message
    assert "does not exist" in message
