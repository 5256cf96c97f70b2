"""transport/json_stream: a document read a piece at a time reads as json reads it whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keytrail.transport.json_stream import END, JsonStream, JsonSyntaxError, ValueTooLarge

DOCUMENT = ('{"Records": [\n {"a": 1, "b": [true, false, null], "c": "caf\\u00e9 \\"x\\""},\n 12345,\n -1.5e3,\n'
            ' "text", [], {},\n 7\n], "other": {"n": -0.25}, "tail": "\\ud83d\\ude00"}\n')


# As AWS writes them (no blanks), with `},{` and `}, {` inside items too (a list of objects, strings).
COMPACT = ('{"Records":[{"r":[{"a":1},{"b":2}]},{"n":{"x":{}}},{"s":"},{"},{"t":"}, {\\"q\\": 1"},'
           '{"r":[{"a":1}, {"b":2}]},3,{"e":[]}],"other":[{"a":1},{"b":2}]}')


def _pieces(text: str, size: int) -> Iterator[str]:
    return (text[start:start + size] for start in range(0, len(text), size))


def _read(stream: JsonStream, batch: int = 3) -> tuple[list[Any], dict[str, Any]]:
    """The items of "Records" (add_items, next_item) and the other members (value)."""
    items: list[Any] = []
    others: dict[str, Any] = {}
    assert stream.begin_object()
    while (key := stream.next_key()) is not None:
        if key == "Records" and stream.begin_array():
            while stream.add_items(items, len(items) + batch):
                pass
        else:
            others[key] = stream.value()
    stream.end()
    return items, others


def _stream(text: str, size: int, max_value: int = 1 << 20) -> JsonStream:
    return JsonStream(_pieces(text, size), decoder=json.JSONDecoder(), max_value=max_value)


@pytest.mark.parametrize("document", [DOCUMENT, COMPACT])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 16, 40, 64, 10_000])
def test_a_document_cut_anywhere_reads_as_json_reads_it_whole(document: str, size: int) -> None:
    whole = json.loads(document)
    items, others = _read(_stream(document, size))
    assert items == whole.pop("Records")
    assert others == whole


@pytest.mark.parametrize("document", [DOCUMENT, COMPACT, '{"Records": [1.5e3, -2.5, 10, 1E+2, 0], "z": -0.25}'])
def test_a_document_in_two_pieces_cut_anywhere_reads_as_json_reads_it_whole(document: str) -> None:
    """Each place between two characters ends the text read once: a number there (`1.` of `1.5`,
    `1e` of `1e3`) goes on in the next piece."""
    whole = json.loads(document)
    for at in range(len(document) + 1):
        stream = JsonStream(iter([document[:at], document[at:]]), decoder=json.JSONDecoder(), max_value=1 << 20)
        assert _read(stream) == (whole["Records"], {k: v for k, v in whole.items() if k != "Records"}), at


@pytest.mark.parametrize(("broken", "before"), [
    ('{"Records": [1, 2,\n oops]}', [1, 2]),
    ('{"Records": [1, 2\n 3]}', [1, 2]),
    ('{"Records": [1, 2,]}', [1, 2]),
    ('{"Records": [1, {"a"\n: 1,}]}', [1]),
    ('{"Records": [1, "cut', [1]),
    ('{"Records": [1, 2]\n "x": 1}', [1, 2]),
    ('{"Records": [1]}\n\n x', [1]),
    ('{"Records": [1], "x": tru}', [1]),
    ('{"Records": [1], \n"x": 1.}', [1]),
    ('{"Records": [1, -]}', [1]),
    ('{"Records": [1, "\\uZZZZ"]}', [1]),
    ('{"Records": [1, "a\tb"]}', [1]),
    ('{,"Records": []}', []),
    ('{"Records" [1]}', []),
    ('', []),
])
@pytest.mark.parametrize("size", [1, 4, 10_000])
def test_a_syntax_error_is_json_s_at_its_line_after_the_items_before_it(broken: str, before: list[int],
                                                                       size: int) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(broken)
    items: list[Any] = []
    stream = _stream(broken, size)
    with pytest.raises(JsonSyntaxError) as raised:
        if not stream.begin_object():
            stream.value()  # the empty document
        while stream.next_key() is not None:
            if stream.begin_array():
                while stream.add_items(items, len(items) + 1):
                    pass
            else:
                stream.value()
        stream.end()
    assert (raised.value.msg, raised.value.line, raised.value.column) == (
        expected.value.msg, expected.value.lineno, expected.value.colno)
    assert items == before


def test_items_are_parsed_as_the_text_arrives() -> None:
    """What follows the items asked for is not read: a reader holds a piece, not the document."""
    def pieces() -> Iterator[str]:
        yield '{"Records": [{"n": 1}, {"n": 2}, '
        yield '{"n": 3}, '
        raise AssertionError("read past what was asked for")

    stream = JsonStream(pieces(), decoder=json.JSONDecoder(), max_value=1 << 20)
    assert stream.begin_object() and stream.next_key() == "Records" and stream.begin_array()
    items: list[Any] = []
    assert stream.add_items(items, 2)
    assert items == [{"n": 1}, {"n": 2}]
    assert stream.next_item() == {"n": 3}


def test_a_value_longer_than_allowed_is_refused_at_its_line_not_held() -> None:
    document = '{"Records": [1,\n "' + "x" * 5000 + '"]}'
    stream = _stream(document, 64, max_value=1000)
    assert stream.begin_object() and stream.next_key() == "Records" and stream.begin_array()
    assert stream.next_item() == 1
    with pytest.raises(ValueTooLarge) as raised:
        stream.next_item()
    assert raised.value.line == 2


@pytest.mark.parametrize("length", [1100, 1500, 1900])
def test_a_value_past_the_bound_by_more_than_a_piece_is_refused_however_far_past(length: int) -> None:
    # Each read took in as much text again as held: a value just under twice the bound was read whole
    # (a 32 MiB bound let through 64 MiB of one value, held twice over while parsed).
    pieces: list[int] = []
    text = '["' + "x" * length + '"]'
    stream = JsonStream((pieces.append(len(piece)) or piece for piece in _pieces(text, 100)),
                        decoder=json.JSONDecoder(), max_value=1000)
    assert stream.begin_array()
    with pytest.raises(ValueTooLarge):
        stream.next_item()
    assert sum(pieces) <= 1000 + 100


def test_the_end_of_an_array_and_of_the_document() -> None:
    stream = _stream('{"Records": []}', 1)
    assert stream.begin_object() and stream.next_key() == "Records" and stream.begin_array()
    assert stream.next_item() is END
    assert stream.next_key() is None
    stream.end()
    assert not _stream("[1]", 1).begin_object()


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(["},{", "}, {", '"}', "x", "é\n"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_JSON, max_size=6), other=_JSON, compact=st.booleans(), indent=st.sampled_from([None, 1]),
       size=st.integers(1, 80), edit=st.tuples(st.integers(0, 10_000), st.sampled_from(["drop", "add", "cut", None]),
                                                st.sampled_from(list('{}[],:" \n1e.-tx\\'))))
def test_any_document_in_any_pieces_reads_as_json_reads_it_whole(records: list[Any], other: Any, compact: bool,
                                                                  indent: int | None, size: int,
                                                                  edit: tuple[int, str | None, str]) -> None:
    """The items, the other members, or json's complaint and its line: alike, whether the text
    is whole or damaged (a character dropped or added, the tail cut) and however it is cut."""
    text = json.dumps({"Records": records, "z": other}, indent=indent, separators=(",", ":") if compact else None)
    at, how, char = edit
    at %= len(text)
    text = {"drop": text[:at] + text[at + 1:], "add": text[:at] + char + text[at:], "cut": text[:at]}.get(how, text)
    try:
        whole, expected = json.loads(text), None
    except json.JSONDecodeError as exc:
        whole, expected = None, (exc.msg, exc.lineno, exc.colno)
    stream = _stream(text, size)
    try:
        read = _read_any(stream)
    except JsonSyntaxError as exc:
        assert (exc.msg, exc.line, exc.column) == expected
        return
    assert expected is None
    if isinstance(read, tuple) and isinstance(whole, dict) and isinstance(whole.get("Records"), list):
        items, others = read
        assert items == whole.pop("Records") and others.keys() <= whole.keys() | {"Records"}
    elif not isinstance(read, tuple):
        assert read == whole


def _read_any(stream: JsonStream) -> Any:
    """As _read, for any document: the value itself when it is no object."""
    if not stream.begin_object():
        value = stream.value()
        stream.end()
        return value
    items: list[Any] = []
    others: dict[str, Any] = {}
    while (key := stream.next_key()) is not None:
        if key == "Records" and "Records" not in others and stream.begin_array():
            others["Records"] = None
            while stream.add_items(items, len(items) + 2):
                pass
        else:
            others[key] = stream.value()
    stream.end()
    return items, others


@pytest.mark.parametrize("size", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("between", ["\n", "", " \r\n\t"])
def test_values_one_after_another_read_as_json_reads_each(size: int, between: str) -> None:
    # JSON lines, objects with nothing between them (Firehose), documents one after another (zcat).
    values = [{"a": 1, "b": [1, {"c": "}{"}]}, {"d": -2.5e3}, [1, 2], "x", {"e": {}}, True]
    stream = _stream(between.join(map(json.dumps, values)) + between, size)
    read: list[Any] = []
    while stream.add_values(read, len(read) + 2):
        pass
    assert read == values


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_a_document_after_another_is_entered_afresh(size: int) -> None:
    # a second document's first member was taken for one after a first member: "Expecting ','"
    stream = _stream('{"a": 1, "b": 2}{"c": 3}', size)
    documents = []
    while stream.more():
        assert stream.begin_object()
        documents.append({key: stream.value() for key in iter(stream.next_key, None)})
    assert documents == [{"a": 1, "b": 2}, {"c": 3}]


@pytest.mark.parametrize("size", [1, 3, 7, 64])
def test_values_the_pieces_before_a_failing_one_complete_are_read_before_its_failure(size: int) -> None:
    # The pieces read to complete a value were dropped when the next one raised (a byte that is no
    # UTF-8, a gzip member damaged): the last values before the damage were lost.
    text = '{"a": 1}\n{"b": [2, "x"]}\n'

    def pieces() -> Iterator[str]:
        yield from _pieces(text, size)
        raise OSError("damaged")

    stream = JsonStream(pieces(), decoder=json.JSONDecoder(), max_value=1 << 20)
    values: list[Any] = []
    with pytest.raises(OSError, match="damaged"):
        stream.add_values(values, 10)
    assert values == [{"a": 1}, {"b": [2, "x"]}]


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_the_line_of_each_document_and_of_an_error_after_many(size: int) -> None:
    # `line` counts on from where it last counted (it counted from the piece's start each time:
    # 80,000 small documents in a piece took 9.7 s), and afresh for an earlier place.
    documents = ['{"a": 1}', '{"b":\n [1,\n 2]}', '{}', '\n\n{"c": "x\\ny"}', '{"d": 2}\n']
    text = "".join(documents * 50) + '{"e": oops}'
    stream = _stream(text, size)
    lines = []
    for _ in range(len(documents) * 50):
        assert stream.more()
        assert stream.begin_object()
        lines.append(stream.line())
        assert stream.value_text()[0] <= lines[-1]
        while stream.next_key() is not None:
            stream.value()
    expected = []
    for index in range(len(documents) * 50):
        before = "".join((documents * 50)[:index]) + (documents * 50)[index].split("{")[0]
        expected.append(before.count("\n") + 1)
    assert lines == expected
    assert stream.begin_object() and stream.next_key() == "e"
    with pytest.raises(JsonSyntaxError) as error:
        stream.value()
    assert (error.value.line, error.value.column) == (text.count("\n") + 1, len(text.rsplit("\n", 1)[1]) - 4)


@pytest.mark.parametrize("size", [1, 3, 1 << 20])
def test_numbers_one_after_another_are_each_read_whole(size: int) -> None:
    # Whether a number may go on in the next piece looked at a copy of all the text after it, for
    # each number: 400,000 numbers of a piece took 25 s; the rest is looked at only when short.
    text = "[" + ",".join(["12", "1.5", "-3e2", "7"] * 5000) + "]\n4 5.25\n6e1"
    stream = _stream(text, size)
    assert stream.begin_array()
    items: list[Any] = []
    while stream.add_items(items, len(items) + 1000):
        pass
    assert items == [12, 1.5, -300.0, 7] * 5000
    values: list[Any] = []
    assert not stream.add_values(values, 10)
    assert values == [4, 5.25, 60.0]
