"""The Kafka topic of the audit events (CONTRACTS.md): one name for the shipper that writes it and
the consumer and detector that read it, here without aiokafka, which offline commands never load."""

from __future__ import annotations

__all__ = ["AUDIT_TOPIC"]

AUDIT_TOPIC = "keytrail.audit.v1"
