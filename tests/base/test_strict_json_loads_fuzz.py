"""edged.base.strict_json.loads under Hypothesis: any text or bytes give a value or JsonError,
never another exception, and what json.dumps writes reads back as the same value."""

from __future__ import annotations

import contextlib
import json
import time
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base import strict_json
from edged.base.strict_json import JsonError

pytestmark = pytest.mark.fuzz

# Pieces of JSON, so that generated text is often nearly valid, deeply nested or has
# repeated keys, not only noise the parser refuses at its first character.
_TOKENS = st.sampled_from(['{', '}', '[', ']', ',', ':', '"a"', '"a":', '"b":', '1', '-0',
                           '1e999', '"\\u00e9"', '"\\ud800"', 'null', 'true', ' ',
                           '"', '\\', '9' * 5000, 'NaN', 'Infinity', '\x00', '\udcff'])
TEXT = st.one_of(st.text(max_size=300), st.lists(_TOKENS, max_size=400).map("".join))
BYTES = st.one_of(st.binary(max_size=300), TEXT.map(
    lambda t: t.encode("utf-8", "surrogatepass")))


def _loads_or_refuses(document: str | bytes, **bounds: object) -> None:
    started = time.process_time()
    with contextlib.suppress(JsonError):
        strict_json.loads(document, **bounds)
    # CPU time, not wall time: a shared CI machine must not fail it.
    assert time.process_time() - started < 2.0


@given(TEXT)
def test_any_text_is_a_value_or_a_json_error(text):
    _loads_or_refuses(text)
    _loads_or_refuses(text, max_depth=3, max_bytes=200, repeated_keys=True)


@given(BYTES)
def test_any_bytes_are_a_value_or_a_json_error(data):
    _loads_or_refuses(data)
    _loads_or_refuses(data, max_depth=3, max_bytes=200)


@given(st.integers(1, 5000), st.sampled_from(["[", '{"a":', '[{"a":']))
def test_nesting_beyond_the_bound_is_refused(depth, opener):
    closer = "".join({"[": "]", "{": "}"}[c] for c in reversed(opener) if c in "[{")
    text = opener * depth + "1" + closer * depth
    levels = depth * sum(c in "[{" for c in opener)
    if levels > strict_json.MAX_DEPTH:
        with pytest.raises(JsonError, match="nested deeper"):
            strict_json.loads(text)
    else:
        strict_json.loads(text)


VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=40)


@given(VALUES)
def test_what_json_dumps_writes_reads_back_the_same(value):
    # The generated values nest at most ~20 levels, under the default bound of 32.
    assert strict_json.loads(json.dumps(value)) == value
    assert strict_json.loads(json.dumps(value).encode()) == value


@given(st.dictionaries(st.text(max_size=5), st.integers(), min_size=1, max_size=5),
       st.data())
def test_a_repeated_key_is_refused_unless_allowed(obj, data):
    key = data.draw(st.sampled_from(sorted(obj)))
    text = json.dumps(obj)[:-1] + f", {json.dumps(key)}: 7}}"
    with pytest.raises(JsonError, match="appears twice"):
        strict_json.loads(text)
    assert strict_json.loads(text, repeated_keys=True) == {**obj, key: 7}


# JSON numbers of every shape, long ones included (orjson reads integers beyond 64 bits
# as floats, so a document with one must be json's).
_EDGES = [2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**18, 10**19, 10**20]
NUMBER = st.one_of(
    st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,4})?",
                  fullmatch=True),
    st.sampled_from(_EDGES + [-n for n in _EDGES]).map(str),
    st.integers(-(10**25), 10**25).map(str))
ESCAPE = st.sampled_from(['"\\u00e9"', '"\\ud83d\\ude00"', '"\\ud800"', '"\\udc00x"',
                          '"\\/\\b\\f\\n\\r\\t"', '"\\u0000"', '"\x7f"', '"\x1f"'])
DOCUMENT = st.one_of(
    TEXT,
    VALUES.map(json.dumps),
    st.lists(st.one_of(NUMBER, ESCAPE, _TOKENS), max_size=60).map(",".join).map(
        lambda inner: f"[{inner}]"),
    st.dictionaries(st.sampled_from(["a", "b", "c"]), NUMBER, max_size=4).map(
        lambda obj: "{" + ",".join(f'"{k}": {v}' for k, v in obj.items()) + ', "a": 1}'),
)


def _same(a: object, b: object) -> bool:
    """Equal, with the same types all the way down (1 is not 1.0, -0.0 is not 0.0, NaN is
    NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return a == b


def _outcome(document: str | bytes) -> tuple[str, object]:
    try:
        return "value", strict_json.loads(document, repeated_keys=True)
    except JsonError as exc:
        return "refused", str(exc)


@given(DOCUMENT, st.booleans())
def test_with_repeated_keys_allowed_orjson_reads_what_json_would(text, as_bytes):
    # The fast path's answer, against json's alone (the path every document with a long
    # digit run takes): the same value with the same types, or the same refusal.
    document = text.encode("utf-8", "surrogatepass") if as_bytes else text
    fast = _outcome(document)
    with mock.patch.object(strict_json, "_long_digits", return_value=True):
        slow = _outcome(document)
    assert fast[0] == slow[0], (document, fast, slow)
    assert _same(fast[1], slow[1]), (document, fast, slow)
