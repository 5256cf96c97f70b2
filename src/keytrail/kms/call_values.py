"""`call_value`: the dataclass of the small values every KMS call builds (its context, its
signature, its authorization questions, its audit record): frozen to the type checker, a plain
slotted dataclass at run time.

A `frozen=True` dataclass's `__init__` must set each field through `object.__setattr__` (its own
`__setattr__` refuses), about 1,250 instructions a field against about 250 for a plain one, and an
Encrypt builds some 45 such fields: 7 % of the serving process's instructions per call
(bench/instructions.py). mypy, strict over the whole package, refuses an assignment to a field of
a `call_value` class as it does for `frozen=True`; they hash by their fields as frozen ones do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

__all__ = ["call_value"]

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def call_value(cls: type[_T]) -> type[_T]:
    """`@dataclass(frozen=True, slots=True)` for the type checker, without its cost per field."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
