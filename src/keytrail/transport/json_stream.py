"""One JSON document read a piece of text at a time: the members of its top-level object parsed one
by one, and the items of an array among them one by one as their text arrives, so that a document
of any length is read holding one value (and one piece of text) at a time. A text holding several
top-level values (JSON lines, concatenated documents) is read a value at a time too (`more`,
`add_values`).

Each value is parsed by Python's json (`JSONDecoder.raw_decode`, its C scanner), so values, numbers
and error messages are json's own; a syntax error names its line in the whole document.
"""

from __future__ import annotations

import collections
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["END", "JsonStream", "JsonSyntaxError", "ValueTooLarge"]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_ITEM_SEPARATOR = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")
#: How near the end of the text read so far json may stop on a value the next piece completes
#: (`tru`, `-Inf`, `1e`, a cut \u escape): its complaint there may be the cut, not the document.
_CUT_MARGIN = 16


class JsonSyntaxError(ValueError):
    """Text that is not JSON: `msg` as Python's json words it, at `line` and `column` (1-based, as
    json's lineno and colno) of the document."""

    def __init__(self, msg: str, line: int, column: int) -> None:
        super().__init__(f"line {line} column {column}: {msg}")
        self.msg, self.line, self.column = msg, line, column


class ValueTooLarge(ValueError):
    """A single value (from `line` on) longer than the stream may hold at once."""

    def __init__(self, line: int, limit: int) -> None:
        super().__init__(f"line {line}: a value longer than {limit} characters")
        self.line, self.limit = line, limit


class _End:
    """What `next_item` returns at its array's end."""


END = _End()


class JsonStream:
    """The document of `pieces` (its text, in order), read with methods that follow its shape:
    `begin_object`, then `next_key` and either `value` or `begin_array` and `next_item` per member,
    then `end`. At most `max_value` characters of one value are held at once (ValueTooLarge)."""

    def __init__(self, pieces: Iterator[str], *, decoder: json.JSONDecoder, max_value: int) -> None:
        self._pieces = pieces
        self._decoder = decoder
        # The C scanner raw_decode calls (not typed in typeshed): items are parsed through it direct.
        self._scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        self._max_value = max_value
        self._text = ""
        self._pos = 0  # where reading goes on in _text
        self._kept_from = 0  # what of _text is still needed: the value being read, from here
        self._lines_dropped = 0  # newlines in the text dropped before _text
        self._chars_dropped = 0  # the text dropped before _text: where _text starts in the document
        self._line_start = 0  # where in the document the last line begun in the dropped text starts
        # Newlines counted in _text up to _counted_to: `line` asked once per document (thousands
        # in a piece of small ones) counts on from there, not again from the start of _text.
        self._counted_to = 0
        self._counted_lines = 0
        self._ended = False
        self._failure: Exception | None = None  # what reading the next piece raised, once needed
        self._members_seen = False  # in the object entered: a ',' is due before the next key
        self._items_seen = False  # likewise in the array entered

    def begin_object(self) -> bool:
        """Enter the top-level object; False (nothing consumed) when the document is another value."""
        entered = self._take("{")
        self._members_seen = False  # a document after another (`more`) starts afresh
        return entered

    def next_key(self) -> str | None:
        """The next member's key in the object entered (its ':' consumed); None at its end."""
        if self._take("}"):
            return None
        if self._members_seen and not self._take(","):
            raise self._syntax("Expecting ',' delimiter")
        if self._peek() != '"':
            raise self._syntax("Expecting property name enclosed in double quotes")
        key = self.value()
        if not self._take(":"):
            raise self._syntax("Expecting ':' delimiter")
        self._members_seen = True
        return str(key)

    def begin_array(self) -> bool:
        """Enter the member's value when it is an array; False (nothing consumed) when it is not."""
        entered = self._take("[")
        self._items_seen = False
        return entered

    def next_item(self) -> Any:
        """The next item of the array entered, parsed; END after its last."""
        if self._take("]"):
            return END
        if self._items_seen and not self._take(","):
            raise self._syntax("Expecting ',' delimiter")
        self._items_seen = True
        return self.value()

    def add_items(self, items: list[Any], up_to: int, up_to_chars: int | None = None) -> bool:
        """Add the next items of the array entered to `items` until it holds at least `up_to`, or
        they span at least `up_to_chars` of text; False once the array has ended. Those the text
        read so far holds whole are parsed together, so one call may add all of them, far more
        than `up_to` (what json's scanner cannot take there is left to next_item, which says why
        or reads more). What stops the parse is raised with the items before it added."""
        done = _Spanned(self, up_to, up_to_chars)
        while not done(items):
            if self._items_seen:
                self._parse_held(items, up_to)
                if done(items):
                    break
            if (item := self.next_item()) is END:
                return False
            items.append(item)
        return True

    def add_values(self, values: list[Any], up_to: int, up_to_chars: int | None = None) -> bool:
        """Add the next top-level values of a document that is a sequence of them (JSON lines, or
        objects one after another with nothing between, as Firehose writes them) to `values`,
        until it holds `up_to`, or they span `up_to_chars` of text; False once the text has ended.
        Each is parsed whole (one value at a time is held, as `value`); what stops the parse is
        raised with those before it added."""
        done = _Spanned(self, up_to, up_to_chars)
        while not done(values):
            if not self.more():
                return False
            values.append(self.value())
        return True

    def more(self) -> bool:
        """Whether anything but whitespace follows what was read: another top-level value, or
        text that is none (which `value` then says)."""
        return self._peek() != ""

    def _parse_held(self, items: list[Any], limit: int) -> None:
        text, pos, scan = self._text, self._pos, self._scan
        if (separator := _ITEM_SEPARATOR.match(text, pos)) is not None and (
                parsed := _items_before_last_boundary(text, separator.end(), scan)) is not None:
            items += parsed[0]
            pos = parsed[1]
        while len(items) < limit and (separator := _ITEM_SEPARATOR.match(text, pos)) is not None:
            try:
                item, end = scan(text, separator.end())
            except Exception:  # the end of the text read, or an error: next_item tells which
                break
            if _number_cut(text, end):
                break
            items.append(item)
            pos = end
        self._pos = pos

    def value(self) -> Any:
        """The next value, whole; json's errors (a syntax error as JsonSyntaxError) as it raises them."""
        self._peek()
        self._kept_from = self._pos
        while True:
            try:
                value, end = self._decoder.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as exc:
                if self._ended or not self._maybe_cut(exc):
                    raise self._syntax(exc.msg, exc.pos) from None
                self._read_more()
                continue
            if self._ended or not _number_cut(self._text, end):
                self._pos = end
                return value
            self._read_more()

    def end(self) -> None:
        """Nothing but whitespace after the document (json's "Extra data" otherwise)."""
        if self._peek() != "":
            raise self._syntax("Extra data")

    def line(self) -> int:
        """The line (1-based) of the document reading has reached."""
        return self._line(self._pos)

    def offset(self) -> int:
        """How many characters of the document reading has gone past (what a caller holding the
        values it read measures them by)."""
        return self._chars_dropped + self._pos

    def value_text(self) -> tuple[int, str]:
        """The line the value being read begins on, and its text as far as it was read (what a
        caller looks into for where json's other errors, NaN or a nesting too deep, are)."""
        return self._line(self._kept_from), self._text[self._kept_from:]

    def _take(self, char: str) -> bool:
        if self._peek() != char:
            return False
        self._pos += 1
        return True

    def _peek(self) -> str:
        """The next character that is no whitespace ("" at the end), whitespace passed over."""
        while True:
            self._pos = _after_whitespace(self._text, self._pos)
            if self._pos < len(self._text) or self._ended:
                return self._text[self._pos:self._pos + 1]
            self._kept_from = self._pos
            self._read_more()

    def _maybe_cut(self, exc: json.JSONDecodeError) -> bool:
        """Whether json stopped where the text read so far ends, so more of it may complete the value
        (a string json finds no end of is always one it read to the end)."""
        return exc.msg.startswith("Unterminated string") or exc.pos >= len(self._text) - _CUT_MARGIN

    def _read_more(self) -> None:
        """Drop what is read and done with; add at least as much text as the value holds so far
        (so a long value is parsed again a few times, not once per piece), or mark the end. What
        reading a piece raises is raised once more text is needed after the pieces before it
        (raised at once, it lost them: the values they complete, a damaged file's last ones)."""
        self._drop_done()
        if self._failure is not None:
            raise self._failure
        if len(self._text) > self._max_value:
            raise ValueTooLarge(self._line(0), self._max_value)
        pieces, added = [self._text], 0
        # as much again, but not past the bound by more than a piece: doubling past it held twice the bound
        wanted = min(max(len(self._text), 1), self._max_value + 1 - len(self._text))
        while added < wanted:
            try:
                piece = next(self._pieces, None)
            except Exception as exc:
                self._failure = exc
                break
            if piece is None:
                self._ended = True
                break
            pieces.append(piece)
            added += len(piece)
        self._text = "".join(pieces)  # once: a long value is not copied again for each piece

    def _drop_done(self) -> None:
        drop = self._kept_from
        if drop:
            if (newline := self._text.rfind("\n", 0, drop)) >= 0:
                self._line_start = self._chars_dropped + newline + 1
            dropped_lines = self._text.count("\n", 0, drop)
            self._lines_dropped += dropped_lines
            self._chars_dropped += drop
            if self._counted_to >= drop:
                self._counted_to -= drop
                self._counted_lines -= dropped_lines
            else:
                self._counted_to = self._counted_lines = 0
            self._text = self._text[drop:]
            self._pos -= drop
            self._kept_from = 0

    def _line(self, pos: int) -> int:
        if pos < self._counted_to:  # an earlier place (a value's start, for an error): counted afresh
            return self._lines_dropped + self._text.count("\n", 0, pos) + 1
        self._counted_lines += self._text.count("\n", self._counted_to, pos)
        self._counted_to = pos
        return self._lines_dropped + self._counted_lines + 1

    def _column(self, pos: int) -> int:
        """As json counts it: a CloudTrail file is often one line, where the line alone says nothing."""
        newline = self._text.rfind("\n", 0, pos)
        line_start = self._chars_dropped + newline + 1 if newline >= 0 else self._line_start
        return self._chars_dropped + pos - line_start + 1

    def _syntax(self, msg: str, pos: int | None = None) -> JsonSyntaxError:
        at = self._pos if pos is None else pos
        return JsonSyntaxError(msg, self._line(at), self._column(at))


class _Spanned:
    """Whether the values added to a list since it was made (`add_items`, `add_values`) are enough:
    `up_to` of them, or values spanning `up_to_chars` of the document (a count alone let a caller
    hold 512 records of 200 KB, 100 MB of text parsed, where it meant to hold a few MB)."""

    def __init__(self, stream: JsonStream, up_to: int, up_to_chars: int | None) -> None:
        self._stream, self._up_to = stream, up_to
        self._end = None if up_to_chars is None else stream.offset() + up_to_chars

    def __call__(self, values: list[Any]) -> bool:
        return len(values) >= self._up_to or (self._end is not None and self._stream.offset() >= self._end)


def _last_boundary(text: str, start: int) -> int:
    """Just after the last `}` from `start` that a `,` and a `{` follow (blanks between them), looked
    for in the last _BOUNDARY_WINDOW characters first; -1 when there is none."""
    for window in dict.fromkeys((max(start, len(text) - _BOUNDARY_WINDOW), start)):
        last = collections.deque(_BOUNDARY.finditer(text, window), maxlen=1)
        if last:
            return last[0].start() + 1
    return -1


_BOUNDARY = re.compile(r"\}[ \t\n\r]*,[ \t\n\r]*\{")
_BOUNDARY_WINDOW = 1 << 16


def _items_before_last_boundary(text: str, start: int,
                                scan: Callable[[str, int], tuple[Any, int]]) -> tuple[list[Any], int] | None:
    """The items from `start` (where one begins) to the last `},{` of `text` (_last_boundary), and where
    they end, parsed as one array: a third faster than one by one, and the names of their members
    shared (json's scanner keeps one copy of each name per call). None when that `}` is not where
    an item ends (it ends an object inside one; the array then does not parse), or on any error:
    the items are then parsed one by one. Sound: json is read left to right, so when `[` + the
    text up to the `}` + `]` parses whole as one array, that `}` ends an item of the document too."""
    cut = _last_boundary(text, start)
    if cut <= start:
        return None
    candidate = "[" + text[start:cut] + "]"
    try:
        items, end = scan(candidate, 0)
    except Exception:
        return None
    return (items, cut) if end == len(candidate) else None  # else its "]" closed the array early


def _number_cut(text: str, end: int) -> bool:
    """Whether the value json parsed up to `end` is a number the next piece may go on (`1` of
    `12`, `1.` of `1.5`, `1e` of `1e5`): all the text after it could begin its rest. Its length
    is looked at first: `text[end:]` copied the rest of the text read for each number, so the
    numbers of a 1 MiB piece took time by its square (400,000 in a log file's Records: 25 s)."""
    return text[end - 1] in "0123456789" and len(text) - end <= _LONGEST_NUMBER_REST and \
        text[end:] in _NUMBER_RESTS


_NUMBER_RESTS = frozenset({"", ".", "e", "E", "e+", "e-", "E+", "E-"})
_LONGEST_NUMBER_REST = max(map(len, _NUMBER_RESTS))


def _after_whitespace(text: str, pos: int) -> int:
    blanks = _WHITESPACE.match(text, pos)
    return pos if blanks is None else blanks.end()
