"""The progress bar draws only when enabled and ends its line."""

from __future__ import annotations

import io

from keytrail.reports.progress import Progress


def test_disabled_bar_writes_nothing() -> None:
    stream = io.StringIO()
    bar = Progress("files", enabled=False, stream=stream)
    bar.update(1, 2)
    bar.close()
    assert stream.getvalue() == ""


def test_auto_bar_is_off_when_the_stream_is_not_a_terminal() -> None:
    assert Progress("files", stream=io.StringIO()).enabled is False


def test_enabled_bar_shows_the_fraction_and_the_final_count() -> None:
    stream = io.StringIO()
    bar = Progress("files", enabled=True, stream=stream, width=10)
    bar.update(1, 4)
    bar.update(4, 4)
    bar.close()
    text = stream.getvalue()
    assert "\r[##........] 1/4 files" in text
    assert text.endswith("\r[##########] 4/4 files\n")
