"""Property: whatever a sender publishes, on whatever topic, MessageParser.parse returns
the rows it appended or raises RowError; never another exception (which would stop the
source), for every layout and format, and the rows it keeps are well formed."""

from __future__ import annotations

import contextlib
import json
import re
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.errors import RowError
from edged.builtin.mqtt.formats import MessageParser, TopicRouter, make_decoder
from edged.plugin.rows import MAX_TURBINE_ID, MESSAGE_REASONS, ROW_REASONS
from edged.windturbine import layout

INPUTS = layout.INPUTS
KEYS = [*layout.DATASET_COLUMNS, "rows", "turbineId", "volts"]


def _parser(layout_name, fmt, topics, *, turbine_field=None, turbine=None, pattern=None,
            columns=None, keys=None) -> MessageParser:
    allow = None if pattern is None else re.compile(pattern)
    decoder = make_decoder(layout_name, INPUTS, columns=columns, keys=keys,
                           turbine_field=turbine_field, turbine_pattern=allow)
    return MessageParser(decoder, TopicRouter(topics, pattern=allow), fmt=fmt,
                         max_bytes=4096, turbine=turbine)


PARSERS = [
    _parser(name, fmt, ("turbines/{turbine}/raw",), pattern=pattern)
    for name in ("dataset23", "successor20") for fmt in ("auto", "json", "csv")
    for pattern in (None, "t[0-9]+")
] + [
    _parser("dataset23", "auto", ("farm/#",), turbine_field="turbineId"),
    _parser("successor20", "auto", ("turbine/raw",), turbine="mini-1"),
    _parser("custom", "auto", ("site/+/{turbine}",), columns=["id", *INPUTS, "x"],
            keys={"voltage": "volts"}, turbine_field="id"),
    _parser("custom", "json", ("bus",), keys={"voltage": "volts"}, turbine_field="turbineId",
            pattern="T[0-9]{1,4}"),
]

# Fragments a hostile or broken sender would combine: structure, keys, numbers, ids.
_FRAGMENTS = st.sampled_from([
    "{", "}", "[", "]", ",", ":", '"', "\\", "\n", "\r\n", "\x00", " ", "null", "true",
    "1", "-0.5", "1e999", "NaN", "Infinity", "12345678901234567890" * 12, '"rows"',
    '"turbineId"', '"t1"', '"T12"', '"' + "x" * 200 + '"', "é",
    *(json.dumps(k) for k in KEYS),
])
_TEXT = st.lists(_FRAGMENTS, max_size=120).map("".join)
_ROW = st.fixed_dictionaries({k: st.one_of(st.floats(allow_nan=True), st.integers(),
                                           st.text(max_size=5), st.none(),
                                           st.lists(st.integers(), max_size=2))
                              for k in INPUTS},
                             optional={"turbineId": st.one_of(st.text(max_size=140),
                                                              st.integers(),
                                                              st.booleans())})
_JSON = st.one_of(_ROW, st.lists(_ROW, max_size=5), st.fixed_dictionaries(
    {"rows": st.lists(_ROW | st.lists(st.floats(), max_size=25), max_size=5)},
    optional={"turbineId": st.text(max_size=5) | st.lists(st.none())})).map(json.dumps)
_PAYLOAD = st.one_of(st.binary(max_size=600), _TEXT.map(str.encode),
                     _JSON.map(str.encode),
                     st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
                     st.integers(1, 3000).map(lambda n: b"[" * n))
_LEVEL = st.one_of(st.sampled_from(["turbines", "raw", "farm", "site", "bus", "turbine",
                                    "t1", "T12", ""]),
                   st.text(max_size=8), st.integers(0, 300).map(lambda n: "t" * n))
_TOPIC = st.lists(_LEVEL, min_size=1, max_size=5).map("/".join)


@pytest.mark.fuzz
@given(st.sampled_from(PARSERS), _TOPIC, _PAYLOAD)
def test_parse_returns_rows_or_raises_row_error(parser, topic, payload):
    turbines, values, rejected = [], [], []
    started = time.process_time()
    try:
        count = parser.parse(topic, payload, turbines, values, rejected)
    except RowError as exc:
        # Counted as messages_rejected{reason}, declared from MESSAGE_REASONS.
        assert exc.reason in MESSAGE_REASONS, exc
    else:
        assert count == len(values) == len(turbines)
        assert all(len(row) == len(INPUTS) and all(isinstance(v, float) for v in row)
                   for row in values)
        assert all(isinstance(t, str) and 0 < len(t) <= MAX_TURBINE_ID for t in turbines)
    assert all(isinstance(e, RowError) for e in rejected)
    # Counted as rows_rejected{reason}, declared from ROW_REASONS.
    assert all(e.reason in ROW_REASONS for e in rejected), rejected
    assert time.process_time() - started < 1.0  # bounded: a 4 KB message is milliseconds


@pytest.mark.fuzz
@given(st.sampled_from(PARSERS[:2]), st.lists(_ROW, min_size=1, max_size=20))
def test_well_formed_rows_are_never_refused_whole(parser, rows):
    """A batch whose rows are objects is never a message rejection: each row stands or
    falls on its own (the JSON path; CSV-only parsers skipped)."""
    if parser.format == "csv":
        return
    payload = json.dumps(rows).encode()
    if len(payload) > parser.max_bytes:
        return
    turbines, values, rejected = [], [], []
    parser.parse("turbines/t1/raw", payload, turbines, values, rejected)
    assert len(values) + len(rejected) == len(rows)


# One-row CSV messages as a sender might spoil them: a field changed to anything.
_GOOD_LINE = ",".join(["farm", "t1", "1", "2", "2023-11-14T22:13:20.000+00:00",
                       *("0.5" for _ in range(18))])
_FIELD = st.one_of(st.sampled_from(["", " ", "1", " 2.5 ", "1_0", "nan", "-inf", "1e999",
                                    "0x10", "é", '"', "\n", "\r", "1,2", "{", "[", "."]),
                   st.floats().map(repr), st.text(max_size=6))


@st.composite
def _line_messages(draw):
    """(topic, payload) pairs: mostly good lines, alone or a few to a message, some
    spoiled, some on known topics, some new, and now and then JSON."""
    messages = []
    for _ in range(draw(st.integers(1, 12))):
        lines = []
        for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
            fields = _GOOD_LINE.split(",")
            for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
                fields[draw(st.integers(0, len(fields) - 1))] = draw(_FIELD)
            lines.append(",".join(fields))
        payload = draw(st.sampled_from(["\n", "\n", "\r\n", "\n\n", "\x0b"])).join(lines)
        payload = draw(st.sampled_from([payload, payload, " " + payload, payload + "\n",
                                        '{"qx": 1}']))
        topic = f"turbines/{draw(st.sampled_from(['t1', 't2', 'x', 't' * 200]))}/raw"
        messages.append((topic, payload.encode()))
    return messages


@pytest.mark.fuzz
@given(st.sampled_from(PARSERS), _line_messages(), st.booleans())
def test_parse_lines_takes_only_what_parse_accepts_alike(parser, messages, warm):
    """What MessageParser.parse_lines parses together is exactly what parse makes of
    each of those messages alone (the same rows, the same values, nothing refused); the
    rest are left to parse, in order."""
    if warm:  # topics seen before: their ids are known
        for topic, _ in messages:
            with contextlib.suppress(RowError):
                parser.router.turbine(topic)
    topics = [topic for topic, _ in messages]
    payloads = [payload for _, payload in messages]
    rest, turbines, values, ends = parser.parse_lines(topics, payloads)
    assert rest == sorted(set(rest)) and all(0 <= i < len(messages) for i in rest)
    assert len(ends) == len(messages) and ends == sorted(ends)
    assert len(turbines) == len(values) == (ends[-1] if ends else 0)
    assert values.shape == (len(turbines), len(INPUTS)) and values.dtype == np.float64
    for i in range(len(messages)):
        first = ends[i - 1] if i else 0
        if i in rest:
            assert ends[i] == first
            continue
        alone_t, alone_v, rejected = [], [], []
        parser.parse(topics[i], payloads[i], alone_t, alone_v, rejected)
        assert (alone_t, rejected) == (turbines[first:ends[i]], [])
        assert np.array_equal(np.array(alone_v), values[first:ends[i]])
