"""Text from outside (an imported record's fields, a key's description, an alias name) made safe to
show: on a terminal, where a newline or escape sequence forges lines or rewrites the screen
(CWE-117), and in the HTML report, where markup would run and a bidirectional override (U+202E)
shows one ARN as another."""

from __future__ import annotations

import html
import unicodedata

__all__ = ["columns", "encodable", "markup", "padded", "printable"]


def printable(text: str) -> str:
    """`text` with each character a terminal or browser would act on, rather than show, escaped
    (`\\n`, `\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def markup(text: str) -> str:
    """`text` as HTML text or an attribute value: `printable`, with `<`, `>`, `&` and quotes escaped."""
    return html.escape(printable(text))


def encodable(text: str, encoding: str) -> str:
    """`text` as a stream in `encoding` shows it: each character the encoding lacks as its backslash
    escape (`\\xfc`), as the entry point has stdout write it (an ASCII stdout under LC_ALL=C)."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding Python does not know: the text as it is
        pass
    return text


def columns(text: str) -> int:
    """How many terminal columns `text` takes: two for a wide character (CJK, most emoji), none
    for a combining mark, as wcwidth(3) counts them; `len` put the next column off by one per emoji."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
               for c in text)


def padded(text: str, width: int) -> str:
    """`text` with spaces after it up to `width` terminal columns (`str.ljust` counts characters)."""
    return text + " " * (width - columns(text))
