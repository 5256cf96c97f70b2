"""What a store reads as it opens, through its fast paths: a row's binding written out directly
must equal `json.dumps` byte for byte (else every MAC and ledger term of a store written before
would stop verifying), and a document orjson refuses is still read."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from keytrail.kms.authentic_docs import row_binding
from keytrail.kms.sealing import RootKey
from keytrail.kms.sqlite_store import SqliteStore
from tests.support.store_documents import ACCOUNT, GRANT, OTHER, OURS, REGION

_ROW_VALUES = st.text(alphabet=st.characters(max_codepoint=0x2FFF), max_size=12)


@given(table=_ROW_VALUES, row=st.lists(_ROW_VALUES, max_size=4))
@example(table="keys", row=[ACCOUNT, REGION, OURS.key_id])
@example(table="aliases", row=['quo"te', "back\\slash", "tab\t", "del\x7f", "é", "\u2028"])
def test_a_row_binding_is_what_json_dumps_writes(table: str, row: list[str]) -> None:
    assert row_binding(table, tuple(row)) == json.dumps([table, *row])


async def test_a_key_whose_document_orjson_refuses_opens_as_it_was_written(tmp_path: Path) -> None:
    # `json.dumps` escapes a lone surrogate, which orjson will not read back: the store still opens.
    root, path = RootKey(os.urandom(32)), tmp_path / "keys.db"
    odd = replace(OURS, description="half a pair: \ud800")
    store = SqliteStore(path, root)
    await store.put_keys([odd, OTHER])
    await store.put_grant(GRANT)
    await store.close()
    again = SqliteStore(path, root)
    assert await again.get_key(ACCOUNT, REGION, OURS.key_id) == odd
    assert await again.get_key(ACCOUNT, REGION, OTHER.key_id) == OTHER
    assert await again.list_grants(ACCOUNT, REGION, OTHER.key_id) == [GRANT]
    await again.close()
