"""Store documents authenticated under the root key, each bound to the row it belongs in.

A document the KMS writes to a key store starts with its MAC: `{"mac":"<64 hex>",…}`, an
HMAC-SHA256 (key derived from the root key, `RootKey.mac`) of the table, the row's primary key and
the document without that member, as written. So a document edited in place, forged, or copied to
another row (another key, account, Region, grant) does not verify, and is refused: the call that
needed it fails with KMSInternalException, and the log names the table and row, never the content.
Documents are still JSON (`jq` reads them; the MAC is one more member).

Since the key store keeps a ledger of its rows (kms/store_ledger.py), the MAC also binds that the
store has one (`_LEDGERED`): a document written since verifies under this binding only, so a
store whose ledger row was deleted shows it by its documents, which no one can write again
without the root key. Documents of the version before are verified without it once, as the store
is upgraded (`verify(..., ledgered=False)`), and given the MAC of today.
"""

from __future__ import annotations

import hmac
import json
import logging
import re

from keytrail.kms import errors
from keytrail.kms.sealing import RootKey

__all__ = [
    "HEAD_CHARS", "DocumentRefused", "RefusedRows", "Row", "authenticate", "carries_mac", "head", "refused_call",
    "row_binding", "verify",
]

log = logging.getLogger(__name__)

Row = tuple[str, ...]  # a row's primary key, in the table's column order

# The characters `json.dumps` writes as they are: printable ASCII but the quote and the backslash.
_JSON_AS_IS = re.compile(r'[ !#-\[\]-~]*')
_HEAD = '{"mac":"'
_MAC_HEX = 64
_BODY_AT = len(_HEAD) + _MAC_HEX + 2  # past the MAC's closing quote and the comma
HEAD_CHARS = _BODY_AT  # the characters of `head`, for a database to cut them itself
# The first line of what a document MAC covers in a store that keeps a ledger. The binding of the
# version before starts with the JSON array, "[": the two never cover the same bytes.
_LEDGERED = "ledgered\n"


def row_binding(table: str, row: Row) -> str:
    """`json.dumps([table, *row])`, what a MAC and a ledger term bind a row by: the primary key as a
    JSON array, so no value can shift a boundary between them. Written out directly for the plain
    ASCII the KMS's own identifiers are (twice per row as a store opens: its MAC and its ledger
    term); anything else goes through `json.dumps`, whose output this must equal byte for byte."""
    parts = (table, *row)
    if _JSON_AS_IS.fullmatch("".join(parts)):
        return '["' + '", "'.join(parts) + '"]'
    return json.dumps(parts)


class DocumentRefused(Exception):
    """A store document that does not verify under the root key (edited, forged, moved, or written
    without a MAC where one is due). Names the table and row only."""

    def __init__(self, table: str, row: Row) -> None:
        super().__init__(f"the {table} document of row {'/'.join(row)} does not verify under the root key")
        self.table, self.row = table, row


def _mac(root: RootKey, table: str, row: Row, body: str, ledgered: bool = True) -> str:
    bound = (_LEDGERED if ledgered else "") + row_binding(table, row) + "\n" + body
    return root.mac(bound.encode()).hex()


def authenticate(root: RootKey, table: str, row: Row, body: str) -> str:
    """`body` (a JSON object as a codec wrote it) with its MAC for this table and row in front."""
    if not body.startswith("{") or body == "{}":
        raise ValueError("a store document is a JSON object with members")
    return f'{_HEAD}{_mac(root, table, row, body)}",{body[1:]}'


def carries_mac(text: str) -> bool:
    """Whether `text` claims a MAC (verified or not, well-formed or not): documents written before
    this version do not. Loose on purpose: a store holding one is no old store to upgrade."""
    return text.lstrip().startswith('{"mac"')


def head(text: str) -> str:
    """The part of a document its ledger term covers (kms/store_ledger.py): the MAC as written,
    which covers the rest (or the start of a document not in the form `authenticate` writes)."""
    return text[:_BODY_AT]


def verify(root: RootKey, table: str, row: Row, text: str, *, ledgered: bool = True) -> str:
    """The document's body, once its MAC verifies for this table and row; DocumentRefused otherwise
    (also for a document that carries no MAC, or not in the form `authenticate` writes).
    `ledgered=False`: the MAC of the version before the ledger, for the upgrade only."""
    if not (text.startswith(_HEAD) and text[_BODY_AT - 2:_BODY_AT] == '",'):
        raise DocumentRefused(table, row)
    body = "{" + text[_BODY_AT:]
    # As bytes: compare_digest raises TypeError on a str that is not ASCII, which a forger can write.
    claimed = text[len(_HEAD):_BODY_AT - 2].encode("utf-8", "replace")
    if not hmac.compare_digest(claimed, _mac(root, table, row, body, ledgered).encode()):
        raise DocumentRefused(table, row)
    return body


def refused_call(refusal: DocumentRefused) -> errors.KmsError:
    """The call's answer to a refused document, logged once per refusal in one line: which row to
    look at (restore it as keytrail last wrote it, from a backup: the store's ledger holds that
    version, kms/store_ledger.py), never what it holds."""
    log.error("key store: %s (edited, forged or copied from another row): refused", refusal)
    return errors.KMSInternalException("The request was rejected because an internal exception occurred.")


class RefusedRows:
    """Rows whose document did not verify, by table name: for a store that reads each row once
    (SQLite, as it opens) and must go on refusing the calls that need one."""

    def __init__(self) -> None:
        self._rows: dict[str, set[Row]] = {}

    def add(self, refusal: DocumentRefused) -> None:
        self._rows.setdefault(refusal.table, set()).add(refusal.row)

    def within(self, table: str, scope: Row) -> list[Row]:
        """The refused rows of `table` whose primary key starts with `scope`."""
        return [row for row in self._rows.get(table, ()) if row[:len(scope)] == scope]

    def refuse_within(self, table: str, scope: Row) -> None:
        """KMSInternalException (and its log line) if a refused row is in `scope`: a call that
        answered without it would pass it off as absent (a forged grant, say, as never made)."""
        if table not in self._rows:  # no row of it refused: every call on a key asks, most stores have none
            return
        if found := self.within(table, scope):
            raise refused_call(DocumentRefused(table, found[0]))

    def forget(self, table: str, *rows: Row) -> None:
        """Rows just written or deleted hold no refused document any more."""
        if table in self._rows:
            self._rows[table].difference_update(rows)
