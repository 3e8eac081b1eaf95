"""edged.base.strict_json.loads under Hypothesis: any text or bytes give a value or JsonError,
never another exception, and what json.dumps writes reads back as the same value."""

from __future__ import annotations

import contextlib
import json
import time

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
