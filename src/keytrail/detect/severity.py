"""Alarm severities, ordered so that escalation is a comparison."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Severity"]


class Severity(StrEnum):
    LOW = "LOW"
    MEDIUM = "MEDIUM"
    HIGH = "HIGH"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _ORDER.index(self)

    def bump(self, steps: int = 1) -> Severity:
        """The severity `steps` levels higher, capped at CRITICAL."""
        return _ORDER[min(self.rank + steps, len(_ORDER) - 1)]

    @staticmethod
    def highest(*levels: Severity) -> Severity:
        return max(levels, key=lambda level: level.rank)


_ORDER = (Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL)
