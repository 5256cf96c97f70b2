"""What a key store found changed outside keytrail since it opened, for GET /metrics.

A row whose document does not verify (kms/authentic_docs.py) fails only the calls that need it:
those of one key, alias, grant, import token or custom key store. Counted among all the calls'
errors, a rarely used key's would never page anyone, and tampering with the key store is a
security incident whatever the row. So each store keeps the rows it refused, each counted once
(however many calls it refuses), and whether its rows stopped matching its ledger
(kms/store_ledger.py); serve renders both (cli/node.py) for an alert to page at once.
"""

from __future__ import annotations

from collections.abc import Iterable

from keytrail.kms import errors
from keytrail.kms.authentic_docs import DocumentRefused, Row, refused_call

__all__ = ["Tampering"]


class Tampering:
    """The rows of each table refused since the store opened, and whether its ledger mismatched."""

    def __init__(self, tables: Iterable[str]) -> None:
        self._rows: dict[str, set[Row]] = {table: set() for table in tables}
        # Set once the store's rows no longer match its ledger (rows deleted, put back or added
        # outside keytrail); not for a store a newer version wrote, which is as it should be.
        self.ledger_mismatch = False

    def found(self, refusal: DocumentRefused) -> None:
        """Count the refused row (once, however often it is read again)."""
        self._rows.setdefault(refusal.table, set()).add(refusal.row)

    def refused(self, refusal: DocumentRefused) -> errors.KmsError:
        """`refused_call`'s answer to the call (and its log line), the row counted."""
        self.found(refusal)
        return refused_call(refusal)

    def rows(self) -> dict[str, int]:
        """Per table, how many of its rows were refused since the store opened (every table, 0 for none)."""
        return {table: len(rows) for table, rows in self._rows.items()}
