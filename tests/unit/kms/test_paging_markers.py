"""A list page's NextMarker is one the next call may send (MarkerType: at most 1,024 characters),
whatever the listed names hold, and it takes the listing on after the page; a marker made up or
cut short is InvalidMarkerException, never an exception of another kind."""

from __future__ import annotations

import base64
import hashlib
import struct

import pytest

from keytrail.kms.errors import InvalidMarkerException
from keytrail.kms.paging import page

LISTING = "ListResourceTags arn:aws:kms:us-east-1:111122223333:key/k"
TAG = hashlib.sha256(LISTING.encode()).hexdigest()[:16].encode()


def _walk(names: list[str]) -> tuple[list[str], list[str]]:
    """Every name `page` lists one a page, and the markers it handed out on the way."""
    seen: list[str] = []
    markers: list[str] = []
    params: dict[str, object] = {"Limit": 1}
    while True:
        chunk, paging = page(names, params, lambda name: (name,), LISTING)
        seen += chunk
        if not paging["Truncated"]:
            return seen, markers
        markers.append(paging["NextMarker"])
        params = {"Limit": 1, "Marker": paging["NextMarker"]}


@pytest.mark.parametrize("letters", [
    [chr(code) * 128 for code in (0, 1, 31)],  # JSON's \u0000 escapes: 1,056 characters as JSON
    ['"' * 128, "\\" * 128, "\n" * 128],  # two-character escapes
    [chr(0x10FFFF) * 128, chr(0x1F600) * 128, "名" * 128],  # 4-byte and 3-byte letters
    ["\x01" * 64 + "a", "\x01" * 64 + "b", "\x01" * 127 + "\x02"],  # names alike up to their ends
])
def test_markers_of_any_name_stay_within_1024_characters_and_list_every_name(letters: list[str]) -> None:
    seen, markers = _walk(letters)
    assert seen == sorted(letters)
    assert markers and all(len(marker) <= 1024 for marker in markers)


def test_a_listing_goes_on_after_a_long_marked_name_that_is_gone() -> None:
    names = sorted(chr(code) * 128 for code in (1, 2, 3))
    _, paging = page(names, {"Limit": 1}, lambda name: (name,), LISTING)
    rest, _ = page(names, {"Marker": paging["NextMarker"]}, lambda name: (name,), LISTING)
    assert rest == names[1:]
    without_marked, _ = page(names[1:], {"Marker": paging["NextMarker"]}, lambda name: (name,), LISTING)
    assert without_marked == names[1:]


def _bytes(*elements: bytes) -> str:
    return base64.urlsafe_b64encode(TAG + b"".join(elements)).decode()


@pytest.mark.parametrize("marker", [
    _bytes(),  # no position
    _bytes(b"s\x00\x05abc"),  # a string cut short
    _bytes(b"s\x00"),  # its length cut short
    _bytes(b"f\x00\x00"),  # a number cut short
    _bytes(b"s\x00\x02\xff\xfe"),  # no UTF-8
    _bytes(b"x\x00\x01a"),  # no element type
    _bytes(b"f" + struct.pack(">d", 1.5)),  # a number where the listing has a name
    _bytes(b"f" + struct.pack(">d", float("nan"))),
    _bytes(b"s\x00\x01a", b"s\x00\x01b"),  # too many elements
    base64.urlsafe_b64encode(hashlib.sha256(b"ListAliases").hexdigest()[:16].encode() + b"s\x00\x01a").decode(),
    base64.urlsafe_b64encode("é".encode() * 8 + b"s\x00\x01a").decode(),  # no tag at all
])
def test_a_made_up_marker_in_bytes_is_invalid(marker: str) -> None:
    with pytest.raises(InvalidMarkerException):
        page(["a", "b"], {"Marker": marker}, lambda name: (name,), LISTING)


def test_a_marker_in_bytes_of_the_listing_is_read() -> None:
    assert page(["a", "b", "c"], {"Marker": _bytes(b"s\x00\x01a")}, lambda name: (name,), LISTING)[0] == ["b", "c"]
