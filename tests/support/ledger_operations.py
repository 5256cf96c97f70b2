"""Random sequences of key store writes for the ledger's property tests (SQLite in
tests/unit/kms/test_store_ledger_properties.py, PostgreSQL in tests/integration/keystores/): every
write method of the store, over few enough keys, aliases, grants, tokens and stores that upserts
land on rows that exist and on rows that do not, deletes miss, add_alias meets a taken name and
update_alias a missing one. A model of the rows says what each call must answer and what the
tables hold afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

from hypothesis import strategies as st

from keytrail.kms.keys import Key
from keytrail.kms.store import Alias
from tests.support.store_documents import ACCOUNT, CKS, GRANT, NOW, OURS, OWED, TOKEN

__all__ = ["KEY_IDS", "REGIONS", "Op", "RowModel", "operations", "run_operation", "store_rows"]

REGIONS = ("us-east-1", "eu-west-1")
KEY_IDS = ("k0", "k1", "k2")
ALIAS_NAMES = ("alias/a", "alias/b", "alias/c")
GRANT_IDS = ("g0", "g1")
TOKEN_IDS = ("t0", "t1", "t2")
STORE_IDS = ("cks-0", "cks-1")
EVENT_IDS = ("e0", "e1")

Op = tuple[Any, ...]

_regions = st.sampled_from(REGIONS)
_keys = st.tuples(_regions, st.sampled_from(KEY_IDS))
_text = st.text("xyz", max_size=3)  # a new document for the same row


def operations(extra: st.SearchStrategy[Op] | None = None) -> st.SearchStrategy[list[Op]]:
    """Sequences of store calls (`extra`: calls only one store has, like reopening SQLite)."""
    one = st.one_of(
        st.tuples(st.just("put_keys"), st.lists(st.tuples(_keys, _text), min_size=1, max_size=3)),
        st.tuples(st.just("delete_key"), _keys, st.lists(st.tuples(_keys, _text), max_size=2)),
        st.tuples(st.sampled_from(["put_alias", "add_alias", "update_alias"]), _regions,
                  st.sampled_from(ALIAS_NAMES), st.sampled_from(KEY_IDS)),
        st.tuples(st.just("delete_alias"), _regions, st.sampled_from(ALIAS_NAMES)),
        st.tuples(st.sampled_from(["put_grant", "delete_grant"]), _keys, st.sampled_from(GRANT_IDS)),
        # Tokens valid up to 5 days apart: a put deletes the ones that expired 2 days before it.
        st.tuples(st.just("put_import_parameters"), st.sampled_from(TOKEN_IDS), st.integers(0, 5)),
        st.tuples(st.sampled_from(["put_custom_key_store", "delete_custom_key_store"]), _regions,
                  st.sampled_from(STORE_IDS), _text),
        # The audit records calls owe: written alone, settled, or with a call's write (`owing`).
        st.tuples(st.sampled_from(["owe_record", "settle_record"]), st.sampled_from(EVENT_IDS)),
        st.tuples(st.just("put_keys_owing"), st.sampled_from(EVENT_IDS), _keys, _text),
        *([extra] if extra is not None else []),
    )
    return st.lists(one, max_size=25)


def _key(where: tuple[str, str], text: str) -> Key:
    region, key_id = where
    return replace(OURS, region=region, key_id=key_id, description=text)


@dataclass
class RowModel:
    """The primary keys each table must hold after the calls so far."""

    keys: set[tuple[str, str]] = field(default_factory=set)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)  # (region, name) -> key id
    grants: set[tuple[str, str, str]] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)  # token id -> the day it is valid to
    stores: set[tuple[str, str]] = field(default_factory=set)
    owed: set[str] = field(default_factory=set)

    def expected(self) -> dict[str, set[tuple[str, ...]]]:
        return {
            "keys": {(ACCOUNT, region, key_id) for region, key_id in self.keys},
            "aliases": {(ACCOUNT, region, name) for region, name in self.aliases},
            "grants": {(ACCOUNT, *grant) for grant in self.grants},
            "import_parameters": {(token,) for token in self.tokens},
            "custom_key_stores": {(ACCOUNT, *cks) for cks in self.stores},
            "owed_records": {(event_id,) for event_id in self.owed},
        }


async def run_operation(store: Any, model: RowModel, op: Op) -> None:
    """Make the call `op` names, check its answer against the model, and update the model."""
    name = op[0]
    if name == "put_keys":
        await store.put_keys([_key(where, text) for where, text in op[1]])
        model.keys |= {where for where, _ in op[1]}
    elif name == "delete_key":
        where, changed = op[1], op[2]
        await store.delete_key(_key(where, ""), [_key(other, text) for other, text in changed])
        region, key_id = where
        model.keys.discard(where)
        model.aliases = {k: v for k, v in model.aliases.items() if not (k[0] == region and v == key_id)}
        model.grants = {g for g in model.grants if g[:2] != where}
        model.keys |= {other for other, _ in changed}
    elif name in ("put_alias", "add_alias", "update_alias"):
        _, region, alias_name, key_id = op
        exists = (region, alias_name) in model.aliases
        answer = await getattr(store, name)(Alias(ACCOUNT, region, alias_name, key_id, NOW, NOW))
        if name == "add_alias":
            assert answer is (not exists), op
        elif name == "update_alias":
            assert answer is exists, op
        if name == "put_alias" or answer:
            model.aliases[(region, alias_name)] = key_id
    elif name == "delete_alias":
        _, region, alias_name = op
        await store.delete_alias(Alias(ACCOUNT, region, alias_name, "k0", NOW, NOW))
        model.aliases.pop((region, alias_name), None)
    elif name in ("put_grant", "delete_grant"):
        (region, key_id), grant_id = op[1], op[2]
        await getattr(store, name)(replace(GRANT, region=region, key_id=key_id, grant_id=grant_id))
        if name == "put_grant":
            model.grants.add((region, key_id, grant_id))
        else:
            model.grants.discard((region, key_id, grant_id))
    elif name == "put_import_parameters":
        _, token_id, day = op
        await store.put_import_parameters(replace(TOKEN, token_id=token_id, valid_to=NOW + timedelta(days=day)))
        model.tokens = {t: d for t, d in model.tokens.items() if d >= day - 2}
        model.tokens[token_id] = day
    elif name in ("put_custom_key_store", "delete_custom_key_store"):
        _, region, store_id, text = op
        await getattr(store, name)(replace(CKS, region=region, store_id=store_id, name=f"n{text}"))
        if name == "put_custom_key_store":
            model.stores.add((region, store_id))
        else:
            model.stores.discard((region, store_id))
    elif name in ("owe_record", "settle_record", "put_keys_owing"):
        await _owed_operation(store, model, op)
    else:
        raise AssertionError(f"unknown operation {op}")


async def _owed_operation(store: Any, model: RowModel, op: Op) -> None:
    name, event_id = op[0], op[1]
    if name == "owe_record":
        await store.owe_record(replace(OWED, event_id=event_id))
        model.owed.add(event_id)
    elif name == "settle_record":
        await store.settle_record(event_id)
        model.owed.discard(event_id)
    else:
        async with store.owing(lambda: replace(OWED, event_id=event_id)) as writes:
            await store.put_keys([_key(op[2], op[3])])
        assert writes.written, op
        model.keys.add(op[2])
        model.owed.add(event_id)


def store_rows(fetched: dict[str, list[tuple[str, ...]]]) -> dict[str, set[tuple[str, ...]]]:
    """The primary keys of each table, as sets (the tables as read, by name)."""
    return {table: set(rows) for table, rows in fetched.items()}
