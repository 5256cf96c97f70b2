"""The Kafka topic of the audit events (CONTRACTS.md): one name for the shipper that writes it and
the consumer and detector that read it, here without aiokafka, which offline commands never load."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["AUDIT_TOPIC", "IMPORTED_HEADER", "is_imported"]

AUDIT_TOPIC = "keytrail.audit.v1"
# The header the shipper puts on a record `keytrail audit import` added (history from another
# source, which the detector judges as of its end): the record itself says nothing of it.
IMPORTED_HEADER = ("keytrail-origin", b"import")


def is_imported(headers: Sequence[tuple[str, bytes]]) -> bool:
    """Whether a Kafka message's headers (name, value pairs) mark it imported."""
    return IMPORTED_HEADER in headers
