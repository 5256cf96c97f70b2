"""The KMS price table (USD): defaults from the AWS KMS pricing page, overridable from TOML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from decimal import Decimal
from pathlib import Path

__all__ = ["PRICE_CLASSES", "PriceTable", "load_price_table"]

#: Request price classes, in the order of the AWS KMS pricing page.
PRICE_CLASSES = (
    "symmetric",
    "rsa_2048",
    "asymmetric",
    "ecc_generate_data_key_pair",
    "rsa_generate_data_key_pair",
)


@dataclass(frozen=True)
class PriceTable:
    """Prices in USD. Request prices are per 10,000 requests; key prices per key-month."""

    key_month: Decimal = Decimal("1.00")
    rotation_month: Decimal = Decimal("1.00")  # each of the first `billed_rotations` rotations
    billed_rotations: int = 2  # rotations after the second are free (April 2024 change)
    hours_per_month: int = 730  # hourly proration: one key-month is 730 key-hours
    symmetric: Decimal = Decimal("0.03")
    rsa_2048: Decimal = Decimal("0.03")
    asymmetric: Decimal = Decimal("0.15")
    ecc_generate_data_key_pair: Decimal = Decimal("0.10")
    rsa_generate_data_key_pair: Decimal = Decimal("12.00")
    free_tier_requests: int = 0  # per calling account per calendar month; AWS offers 20,000

    def per_request(self, price_class: str) -> Decimal:
        """The price of one request of `price_class`."""
        return Decimal(getattr(self, price_class)) / 10_000


def load_price_table(path: Path) -> PriceTable:
    """Read a TOML price table; keys named like the PriceTable fields override the defaults."""
    with path.open("rb") as handle:
        data = tomllib.load(handle)
    known = {f.name: f.type for f in fields(PriceTable)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown price table keys: {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError(f"{path}: {name} must be a number")
        values[name] = int(value) if known[name] in ("int", int) else Decimal(str(value))
    return replace(PriceTable(), **values)  # type: ignore[arg-type]
