"""IAM policy matching: escaped wildcards, policy variables and the Condition operators.

Follows "IAM JSON policy elements: Condition operators" and "Conditions with multiple context keys
or values". Patterns never become regexes from raw text: every literal is escaped, only `*` and
`?` are wildcards, so a policy cannot inject regex syntax.
"""

from __future__ import annotations

import base64
import ipaddress
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Protocol

__all__ = [
    "OPERATORS",
    "Condition",
    "Pattern",
    "Resolve",
    "parse_condition_operator",
    "unreadable_value",
    "wildcard_match",
]

# A lookup from a lowercase condition key to its value in the request (None when absent).
Resolve = Callable[[str], Any]

_TOKEN = re.compile(r"\$\{([^}]*)\}|\*|\?")
_LITERAL_VARIABLES = {"*": "*", "?": "?", "$": "$"}


def _variable(body: str) -> tuple[str, str | None]:
    """`aws:username, 'default'` → (`aws:username`, `default`)."""
    name, _, default = body.partition(",")
    text = default.strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return name.strip().lower(), text[1:-1]
    return name.strip().lower(), None


@dataclass(frozen=True, slots=True)
class Pattern:
    """A policy string: literals, `*`/`?` wildcards (when allowed) and `${…}` policy variables."""

    parts: tuple[tuple[str, str], ...]  # ("lit", text) | ("any", "") | ("one", "") | ("var", body)
    ignore_case: bool = False
    # Worked out once, as every request matches them: the text of a pattern of literals only (in
    # `_caseless` form when case is ignored), the runs of a pattern with wildcards and no variables.
    _text: str | None = field(default=None, init=False, compare=False, repr=False)
    _runs: _Runs | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.is_literal:
            text = self.literal()
            object.__setattr__(self, "_text", _caseless(text) if self.ignore_case else text)
        elif "var" not in (kind for kind, _ in self.parts):
            object.__setattr__(self, "_runs", self.runs(_no_variables))

    @classmethod
    def parse(cls, text: str, *, wildcards: bool, variables: bool, ignore_case: bool = False) -> Pattern:
        parts: list[tuple[str, str]] = []
        pos = 0
        for match in _TOKEN.finditer(text):
            token = match.group(0)
            if match.group(1) is not None and not variables:
                continue
            if token in "*?" and not wildcards:
                continue
            parts.append(("lit", text[pos:match.start()]))
            if match.group(1) is not None:
                body = match.group(1)
                parts.append(("lit", body) if body in _LITERAL_VARIABLES else ("var", body))
            else:
                parts.append(("any" if token == "*" else "one", ""))
            pos = match.end()
        parts.append(("lit", text[pos:]))
        return cls(tuple(p for p in parts if p != ("lit", "")), ignore_case)

    @property
    def variables(self) -> tuple[str, ...]:
        return tuple(_variable(body)[0] for kind, body in self.parts if kind == "var")

    @property
    def is_literal(self) -> bool:
        return all(kind == "lit" for kind, _ in self.parts)

    def literal(self) -> str:
        return "".join(body for _, body in self.parts)

    def runs(self, resolve: Resolve) -> _Runs | None:
        """The pattern as its runs between `*` wildcards, each of a fixed length (`?` one character
        of it); None when a variable has no value and no default. Case is set aside by matching
        `_caseless` texts. A pattern with a variable is matched as text (`_Text`): the variable's
        value may be a whole request member, which compiled and cached as a regex cost 50 ms and
        1.6 MB a value. Only a policy's own patterns become regexes, compiled once."""
        texts: list[_Text] = []
        regexes: list[str] = []
        segments: list[tuple[int, str]] = []
        regex: list[str] = []
        length = 0  # of the current run, in characters of the value
        varied = False
        for kind, body in self.parts:
            if kind == "any":
                texts.append(_Text(tuple(segments), length))
                regexes.append("".join(regex))
                segments, regex, length = [], [], 0
            elif kind == "one":
                regex.append(".")
                length += 1
            else:
                text = body if kind == "lit" else _variable_value(body, resolve)
                if text is None:
                    return None
                varied = varied or kind == "var"
                text = _caseless(text) if self.ignore_case else text
                segments.append((length, text))
                regex.append(re.escape(text))
                length += len(text)
        texts.append(_Text(tuple(segments), length))
        regexes.append("".join(regex))
        if varied:
            return _runs_of(tuple(texts), length)
        return _compiled(tuple(regexes), length)

    def matches(self, value: str, resolve: Resolve) -> bool:
        if self.ignore_case:
            value = _caseless(value)
        if self._text is not None:
            return value == self._text
        runs = self._runs or self.runs(resolve)
        return runs is not None and runs.match(value)


def _caseless(text: str) -> str:
    """`text` with case set aside, one character for one, so that a pattern's runs keep their
    lengths: ASCII by `str.lower`; other text character by character as Java's equalsIgnoreCase
    compares them (ſ is s, ς is σ, İ is i), where `str.lower` makes İ two characters and keeps ς
    apart from σ."""
    if text.isascii():
        return text.lower()
    return "".join(map(_caseless_character, text))


@lru_cache(maxsize=4096)
def _caseless_character(character: str) -> str:
    upper = character.upper()
    lower = (upper if len(upper) == 1 else character).lower()
    return lower[0]  # İ's full lowercase is i and a combining dot; its simple one is i


def _variable_value(body: str, resolve: Resolve) -> str | None:
    name, default = _variable(body)
    value = _policy_value(name, resolve)
    if value is None or isinstance(value, list | tuple):
        return default
    return _as_string(value)


class _Found(Protocol):
    """Where a run was found: a regex's match, or `_End`."""

    def end(self) -> int: ...


class _Run(Protocol):
    """A fixed-length run of a pattern: a compiled regex, or `_Text`."""

    def match(self, value: str, pos: int = ...) -> _Found | None: ...

    def search(self, value: str, pos: int = ...) -> _Found | None: ...

    def fullmatch(self, value: str, pos: int = ...) -> _Found | None: ...


@dataclass(frozen=True, slots=True)
class _End:
    at: int

    def end(self) -> int:
        return self.at


class _Text:
    """A fixed-length run of text, `?` places in it left open, matched with str methods as a compiled
    run is matched (`match`, `search`, `fullmatch` from `pos`): no regex compiled nor cached for a
    policy variable's value, which a caller sets (an encryption context value of 100,000
    characters: 4,096 of them, cached as regexes with their runs and in `re`'s own cache, held
    6 GB)."""

    __slots__ = ("length", "segments")

    def __init__(self, segments: tuple[tuple[int, str], ...], length: int) -> None:
        self.segments = tuple((offset, text) for offset, text in segments if text)  # (offset, text)
        self.length = length

    def match(self, value: str, pos: int = 0) -> _End | None:
        if len(value) - pos < self.length:
            return None
        fits = all(value.startswith(text, pos + offset) for offset, text in self.segments)
        return _End(pos + self.length) if fits else None

    def search(self, value: str, pos: int = 0) -> _End | None:
        if not self.segments:
            return self.match(value, pos)
        offset, text = self.segments[0]
        at = value.find(text, pos + offset)
        while at >= 0:
            found = self.match(value, at - offset)
            if found is not None:
                return found
            at = value.find(text, at + 1)
        return None

    def fullmatch(self, value: str, pos: int = 0) -> _End | None:
        return self.match(value, pos) if len(value) - pos == self.length else None


class _Runs:
    """A wildcard pattern matched without backtracking: never one regex with `.*` in it, which
    backtracks O(n^k) times for k stars (a StringLike on a caller's encryption context value could
    hold the event loop for years). Each run between stars has a fixed length; the first must
    start the value, the last end it, and the others are placed leftmost in order, which finds a
    match whenever there is one. Each run is searched once: O(len(value) × len(pattern))."""

    __slots__ = ("first", "last", "last_length", "middle")

    def __init__(self, runs: tuple[_Run, ...], last_length: int) -> None:
        self.first, *middle, self.last = runs
        self.middle = tuple(middle)
        self.last_length = last_length

    def match(self, value: str) -> bool:
        head = self.first.match(value)
        if head is None:
            return False
        position = head.end()
        for run in self.middle:
            found = run.search(value, position)
            if found is None:
                return False
            position = found.end()
        start = len(value) - self.last_length
        return start >= position and self.last.fullmatch(value, start) is not None


class _Whole(_Runs):
    """A pattern without `*`: one fixed-length run that is the whole value."""

    def match(self, value: str) -> bool:
        return self.first.fullmatch(value) is not None


@lru_cache(maxsize=4096)
def _compiled(runs: tuple[str, ...], last_length: int) -> _Runs:
    return _runs_of(tuple(re.compile(run, re.DOTALL) for run in runs), last_length)


def _runs_of(runs: tuple[_Run, ...], last_length: int) -> _Runs:
    return _Whole(runs * 2, last_length) if len(runs) == 1 else _Runs(runs, last_length)


def wildcard_match(pattern: str, value: str, *, ignore_case: bool = False) -> bool:
    """`*` matches any run of characters, `?` one character; everything else is literal."""
    return Pattern.parse(pattern, wildcards=True, variables=False, ignore_case=ignore_case).matches(
        value, _no_variables
    )


def _no_variables(_: str) -> None:
    return None


# keytrail's own request values (`keytrail:EncryptionContext`, `keytrail:GrantConstraints`) carry whole
# values for grants. They are no condition keys: a policy reads them as absent, as AWS reads a key it
# does not have, not as Python's text of a dict.
_PRIVATE_KEYS = "keytrail:"


def _policy_value(name: str, resolve: Resolve) -> Any:
    """The request's value of the lowercase condition key `name`, as a policy sees it."""
    return None if name.startswith(_PRIVATE_KEYS) else resolve(name)


# --- value coercions ---------------------------------------------------------------------------

def _as_string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


# IAM's Numeric operators compare "a key to an integer or decimal value": ASCII digits (\d and float()
# take any script's), an optional sign and fraction; no blanks, `_`, exponent, inf or nan.
_DECIMAL = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
# W3C's ISO 8601 profile (which IAM's Date operators take) has YYYY-MM; fromisoformat has not. YYYY
# alone is epoch seconds: IAM takes those too, and reads a bare number so.
_YEAR_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    if isinstance(value, str) and not _DECIMAL.fullmatch(value):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int past a double's range: stored before those were refused
        return None
    return number if math.isfinite(number) else None  # 400 digits of text read as inf


def _as_date(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    number = _as_number(value)
    if number is not None:
        try:
            return datetime.fromtimestamp(number, UTC)
        except (OverflowError, OSError, ValueError):  # NaN, or seconds beyond the calendar
            return None
    if not isinstance(value, str):
        return None
    try:
        month = _YEAR_MONTH.fullmatch(value)
        parsed = (datetime(int(month[1]), int(month[2]), 1) if month
                  else datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _as_bytes(value: Any) -> bytes | None:
    """A BinaryEquals policy value: base-64 text, decoded. Text with a character past ASCII (é, which a
    key policy may hold) is none: base64 refuses it with a ValueError of its own, not binascii.Error."""
    try:
        return base64.b64decode(value, validate=True) if isinstance(value, str) else None
    except ValueError:  # binascii.Error is one
        return None


def _as_truth(value: Any) -> str | None:
    """A Bool or Null policy value: true or false, in any case (JSON's true and false too)."""
    text = _as_string(value).lower() if isinstance(value, str | bool) else None
    return text if text in ("true", "false") else None


# --- operators ---------------------------------------------------------------------------------

Matcher = Callable[[Any, Any, Resolve], bool]


def _string(ignore_case: bool, wildcards: bool) -> Matcher:
    def match(request: Any, policy: Any, resolve: Resolve) -> bool:
        pattern = _pattern(_as_string(policy), wildcards, ignore_case)
        return pattern.matches(_as_string(request), resolve)
    return match


@lru_cache(maxsize=4096)
def _pattern(text: str, wildcards: bool, ignore_case: bool) -> Pattern:
    return Pattern.parse(text, wildcards=wildcards, variables=True, ignore_case=ignore_case)


def _numeric(compare: Callable[[float, float], bool]) -> Matcher:
    def match(request: Any, policy: Any, _: Resolve) -> bool:
        left, right = _as_number(request), _as_number(policy)
        return left is not None and right is not None and compare(left, right)
    return match


def _date(compare: Callable[[datetime, datetime], bool]) -> Matcher:
    def match(request: Any, policy: Any, _: Resolve) -> bool:
        left, right = _as_date(request), _as_date(policy)
        return left is not None and right is not None and compare(left, right)
    return match


def _bool(request: Any, policy: Any, _: Resolve) -> bool:
    return _as_string(request).lower() == _as_string(policy).lower()


def _binary(request: Any, policy: Any, _: Resolve) -> bool:
    """The request value's bytes (a string's UTF-8) against the bytes the base-64 policy value encodes."""
    raw = request if isinstance(request, bytes) else _as_string(request).encode()
    return _as_bytes(policy) == raw


def _as_network(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    return _network(value) if isinstance(value, str) else None


def _ip(request: Any, policy: Any, _: Resolve) -> bool:
    network, address = _network(_as_string(policy)), _address(_as_string(request))
    return network is not None and address is not None and address in network


@lru_cache(maxsize=1024)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """The range `text` writes; one of IPv4 addresses mapped into IPv6 (`::ffff:203.0.113.0/120`)
    as the IPv4 range it is, for a caller is recorded by its IPv4 address (api/source_ip.py): as
    written, a Deny on it missed every caller it names."""
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return None
    mapped = network.network_address.ipv4_mapped if isinstance(network, ipaddress.IPv6Network) else None
    if mapped is None or network.prefixlen < _MAPPED_PREFIX:
        return network
    return ipaddress.IPv4Network((mapped, network.prefixlen - _MAPPED_PREFIX))


_MAPPED_PREFIX = 96  # ::ffff:0:0/96, the IPv4-mapped addresses (RFC 4291 §2.5.5.2)


@lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _arn(request: Any, policy: Any, resolve: Resolve) -> bool:
    """ArnEquals/ArnLike: the six colon-separated parts are matched one by one, case-sensitively."""
    wanted = _as_string(policy).split(":", 5)
    actual = _as_string(request).split(":", 5)
    if len(wanted) != 6 or len(actual) != 6:
        return False
    return all(_pattern(w, True, False).matches(a, resolve) for w, a in zip(wanted, actual, strict=True))


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    match: Matcher
    negated: bool = False


def _operators() -> dict[str, Operator]:
    table: list[tuple[str, Matcher, bool]] = [
        ("StringEquals", _string(False, False), False), ("StringNotEquals", _string(False, False), True),
        ("StringEqualsIgnoreCase", _string(True, False), False),
        ("StringNotEqualsIgnoreCase", _string(True, False), True),
        ("StringLike", _string(False, True), False), ("StringNotLike", _string(False, True), True),
        ("NumericEquals", _numeric(lambda a, b: a == b), False),
        ("NumericNotEquals", _numeric(lambda a, b: a == b), True),
        ("NumericLessThan", _numeric(lambda a, b: a < b), False),
        ("NumericLessThanEquals", _numeric(lambda a, b: a <= b), False),
        ("NumericGreaterThan", _numeric(lambda a, b: a > b), False),
        ("NumericGreaterThanEquals", _numeric(lambda a, b: a >= b), False),
        ("DateEquals", _date(lambda a, b: a == b), False),
        ("DateNotEquals", _date(lambda a, b: a == b), True),
        ("DateLessThan", _date(lambda a, b: a < b), False),
        ("DateLessThanEquals", _date(lambda a, b: a <= b), False),
        ("DateGreaterThan", _date(lambda a, b: a > b), False),
        ("DateGreaterThanEquals", _date(lambda a, b: a >= b), False),
        ("Bool", _bool, False), ("BinaryEquals", _binary, False),
        ("IpAddress", _ip, False), ("NotIpAddress", _ip, True),
        ("ArnEquals", _arn, False), ("ArnLike", _arn, False),
        ("ArnNotEquals", _arn, True), ("ArnNotLike", _arn, True),
    ]
    return {name.lower(): Operator(name, match, negated) for name, match, negated in table}


OPERATORS: dict[str, Operator] = _operators()
_QUALIFIERS = {"forallvalues": "ForAllValues", "foranyvalue": "ForAnyValue"}


def parse_condition_operator(text: str) -> tuple[str | None, str, bool]:
    """`ForAnyValue:StringLikeIfExists` → ("ForAnyValue", "StringLike", True). Raises ValueError."""
    qualifier: str | None = None
    name = text
    if ":" in text:
        prefix, _, name = text.partition(":")
        if prefix.lower() not in _QUALIFIERS:
            raise ValueError(f"unknown set operator {prefix!r}")
        qualifier = _QUALIFIERS[prefix.lower()]
    if_exists = name.lower().endswith("ifexists") and name.lower() != "ifexists"
    base = name[: -len("IfExists")] if if_exists else name
    if base.lower() == "null":
        if qualifier or if_exists:
            raise ValueError(f"{text!r}: Null takes no set operator and no IfExists")
        return None, "Null", False
    if base.lower() not in OPERATORS:
        raise ValueError(f"unknown condition operator {text!r}")
    return qualifier, OPERATORS[base.lower()].name, if_exists


# What a policy value of each operator must be, read as the operator reads it; any other value
# matches nothing (a negated operator: everything), so a Deny written with it never applies.
_READ_AS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "Numeric": (_as_number, "a number (an integer or decimal)"),
    "Date": (_as_date, "a date (ISO 8601 or epoch seconds)"),
    "Bool": (_as_truth, "true or false"),
    "Null": (_as_truth, "true or false"),
    "BinaryEquals": (_as_bytes, "base-64 encoded"),
    "IpAddress": (_as_network, "an IP address or CIDR range"),
    "NotIpAddress": (_as_network, "an IP address or CIDR range"),
}


def unreadable_value(operator: str, value: Any) -> str | None:
    """What a policy value of `operator` (a name `parse_condition_operator` returns) must be, such
    as "a date (ISO 8601 or epoch seconds)", when `value` is none; None when it can be read."""
    family = next((f for f in ("Numeric", "Date") if operator.startswith(f)), operator)
    read = _READ_AS.get(family)
    if read is None or read[0](value) is not None:
        return None
    return read[1]


@dataclass(frozen=True, slots=True)
class Condition:
    """One (operator, key, values) triple of a Condition block; values are ORed (NORed if negated)."""

    operator: str
    key: str  # lowercase
    values: tuple[Any, ...]
    qualifier: str | None = None
    if_exists: bool = False

    @property
    def reads(self) -> frozenset[str]:
        """Every condition key this condition looks at: its own key and its policy variables."""
        names = {self.key}
        for value in self.values:
            if isinstance(value, str) and "${" in value:
                names.update(Pattern.parse(value, wildcards=False, variables=True).variables)
        return frozenset(names)

    def holds(self, resolve: Resolve) -> bool:
        value = _policy_value(self.key, resolve)
        present = value is not None and value != [] and value != ()
        if self.operator == "Null":
            return any(_as_string(v).lower() == ("false" if present else "true") for v in self.values)
        if not present:
            return self._absent()
        operator = OPERATORS[self.operator.lower()]
        requested: Sequence[Any] = value if isinstance(value, list | tuple) else (value,)
        results = [self._one(operator, item, resolve) for item in requested]
        if self.qualifier == "ForAllValues":
            return all(results)
        if self.qualifier == "ForAnyValue":
            return any(results)
        # A multi-valued key without a set operator: positive operators need one match, negated
        # operators need every value to miss.
        return all(results) if operator.negated else any(results)

    def _absent(self) -> bool:
        if self.if_exists or self.qualifier == "ForAllValues":
            return True
        if self.qualifier == "ForAnyValue":
            return False
        return OPERATORS[self.operator.lower()].negated

    def _one(self, operator: Operator, item: Any, resolve: Resolve) -> bool:
        hit = any(operator.match(item, policy, resolve) for policy in self.values)
        return not hit if operator.negated else hit
