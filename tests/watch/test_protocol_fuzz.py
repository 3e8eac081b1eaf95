"""The watch request, read from any local user allowed on the socket: for any bytes, a
request or a RequestError naming a known reason, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.watch.protocol import (
    MAX_REQUEST_BYTES,
    REQUEST_REASONS,
    RequestError,
    WatchRequest,
    parse_request,
)

pytestmark = pytest.mark.fuzz

JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=200),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["decisions", "turbine", "x"]) | st.text(max_size=8), inner,
        max_size=4),
    max_leaves=10)


def _check(line: bytes) -> None:
    try:
        request = parse_request(line)
    except RequestError as exc:
        assert exc.reason in REQUEST_REASONS
        return
    assert request.decisions in ("none", "anomalies", "all")
    assert request.turbine is None or 0 < len(request.turbine) <= 128
    assert parse_request(request.line()) == request  # what a client sends, read back


@given(st.binary(max_size=2 * MAX_REQUEST_BYTES))
def test_any_bytes(line):
    _check(line)


@given(JSONISH)
def test_any_json(value):
    _check(json.dumps(value).encode() + b"\n")


@given(st.sampled_from(["none", "anomalies", "all"]),
       st.none() | st.text(min_size=1, max_size=128))
def test_every_request_a_client_sends_is_read_back(decisions, turbine):
    request = WatchRequest(decisions, turbine)
    assert parse_request(request.line()) == request


def test_the_longest_turbine_id_fits_in_a_request():
    turbine = "\U0001f32c" * 128  # 4 bytes each in UTF-8, 12 as JSON escapes
    assert parse_request(WatchRequest("all", turbine).line()).turbine == turbine


def test_nesting_is_refused_before_parsing():
    with pytest.raises(RequestError) as caught:
        parse_request(b'{"decisions": ' + b"[" * 500 + b"]" * 500 + b"}")
    assert caught.value.reason == "bad_json"
