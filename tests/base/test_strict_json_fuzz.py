"""check_depth's quick test (edged.base.strict_json._bounded) against the tokenizer it
stands in for: never lets a deeper document through, and on JSON agrees exactly.
(loads over any input: test_strict_json_loads_fuzz.py.)"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.strict_json import TooDeep, check_depth, loads, nesting_depth

# Every character nesting depends on, and a few it does not.
_TEXT = st.text(alphabet='[]{}"\\a:,1 é', max_size=300)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab é', max_size=5),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), inner, max_size=4),
    max_leaves=40)


def raises(text: str | bytes, depth: int) -> bool:
    try:
        check_depth(text, depth)
    except TooDeep:
        return True
    return False


@pytest.mark.fuzz
@given(_TEXT, st.integers(0, 8))
def test_nothing_deeper_gets_through(text, depth):
    deeper = nesting_depth(text) > depth
    for form in (text, text.encode()):
        assert raises(form, depth) or not deeper


@pytest.mark.fuzz
@given(_JSON, st.integers(0, 8))
def test_on_json_it_agrees_with_the_tokenizer(value, depth):
    text = json.dumps(value, ensure_ascii=False)
    assert raises(text, depth) == (nesting_depth(text) > depth)
    assert raises(text.encode(), depth) == (nesting_depth(text) > depth)


def test_a_deep_message_is_refused_before_it_is_parsed():
    with pytest.raises(TooDeep):
        loads('{"a":' * 2000 + "1" + "}" * 2000)
    with pytest.raises(TooDeep):
        loads("[" * 2000)  # never closed: the tokenizer's answer
    rows = json.dumps({"rows": [{"a": 1, "b": "x[y"} for _ in range(100)]})
    assert len(loads(rows, max_depth=3)["rows"]) == 100


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32",
                                      "utf-32-le", "utf-32-be"])
def test_bytes_in_another_encoding_are_refused_by_name(encoding):
    from edged.base.strict_json import JsonError, loads

    document = '{"fault": "vibration", "on": true}'
    assert loads(document.encode()) == {"fault": "vibration", "on": True}
    with pytest.raises(JsonError, match="not UTF-8"):
        loads(document.encode(encoding))
