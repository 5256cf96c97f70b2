"""Stream consumers: usage, cost and last-used aggregates over the audit events."""
