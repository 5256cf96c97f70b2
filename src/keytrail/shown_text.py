"""Text from outside (an imported record's fields, a key's description, an alias name) made safe to
show: on a terminal, where a newline or escape sequence forges lines or rewrites the screen
(CWE-117), and in the HTML report, where markup would run and a bidirectional override (U+202E)
shows one ARN as another."""

from __future__ import annotations

import html

__all__ = ["markup", "printable"]


def printable(text: str) -> str:
    """`text` with each character a terminal or browser would act on, rather than show, escaped
    (`\\n`, `\\x1b`, `\\u202e`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def markup(text: str) -> str:
    """`text` as HTML text or an attribute value: `printable`, with `<`, `>`, `&` and quotes escaped."""
    return html.escape(printable(text))
