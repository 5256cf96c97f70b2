"""The KMS price table (USD): defaults from the AWS KMS pricing page, overridable from TOML."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from keytrail.owner_only import read_regular_text

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
    # Hourly proration: 0 divides each hour by the hours of its own UTC calendar month (744 in
    # October), so a key kept a whole month is exactly one key-month ($1); N > 0 divides every
    # hour by N (730 is the average month some calculators use).
    hours_per_month: int = 0
    symmetric: Decimal = Decimal("0.03")
    rsa_2048: Decimal = Decimal("0.03")
    asymmetric: Decimal = Decimal("0.15")
    ecc_generate_data_key_pair: Decimal = Decimal("0.10")
    rsa_generate_data_key_pair: Decimal = Decimal("12.00")
    free_tier_requests: int = 0  # per calling account per calendar month; AWS offers 20,000

    def per_request(self, price_class: str) -> Decimal:
        """The price of one request of `price_class`."""
        return Decimal(getattr(self, price_class)) / 10_000


_MAX_PRICE = Decimal(1_000_000)  # far above any KMS price; beyond it sums lose their exactness
# Far above any free tier, rotation count or month's hours; the cost tables hold counts as 64-bit
# integers, and a free tier of 2**63 ended `cost` and `report` in a polars traceback.
_MAX_COUNT = 10**12


def load_price_table(path: Path) -> PriceTable:
    """Read a TOML price table; keys named like the PriceTable fields override the defaults
    (ValueError naming the key when a value is not a price or count of its kind)."""
    try:  # TOML is UTF-8; a leading BOM is allowed
        data = tomllib.loads(read_regular_text(path, "utf-8-sig"))
    except tomllib.TOMLDecodeError as exc:  # named as the table's other faults are, with the file
        raise ValueError(f"{path}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:  # a binary file, or the wrong file named
        raise ValueError(f"{path}: not valid TOML (not UTF-8 text)") from None
    except RecursionError:  # tomllib recurses per level: arrays or inline tables some hundreds deep
        raise ValueError(f"{path}: not valid TOML (values nested too deeply)") from None
    known = {f.name: f.type for f in fields(PriceTable)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{path}: unknown price table keys: {', '.join(unknown)}")
    values: dict[str, object] = {}
    for name, value in data.items():
        counts = known[name] in ("int", int)
        values[name] = _count(path, name, value) if counts else _price(path, name, value)
    return replace(PriceTable(), **values)  # type: ignore[arg-type]


def _count(path: Path, name: str, value: object) -> int:
    count = int(value) if isinstance(value, str) and value.isdigit() else value  # "3" as well as 3
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _MAX_COUNT:
        raise ValueError(f"{path}: {name} must be a whole number from 0 to {_MAX_COUNT}, not {value!r}")
    return count


def _price(path: Path, name: str, value: object) -> Decimal:
    try:  # a number, or a string of one (exact decimals: "0.03")
        price = Decimal(str(value)) if not isinstance(value, bool) and isinstance(value, int | float | str) else None
    except InvalidOperation:
        price = None
    if price is None or not price.is_finite() or not 0 <= price <= _MAX_PRICE:
        raise ValueError(f"{path}: {name} must be a price in USD from 0 to {_MAX_PRICE}, not {value!r}")
    return price
