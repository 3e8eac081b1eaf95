"""Capture requests and pre-signed URL messages under Hypothesis: any payload is answered
(accepted or rejected with a reason) or refused with ValueError, never another exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base.metrics import Counters
from edged.capture import url_protocol
from edged.cloud.capture_requests import CaptureRequests

pytestmark = pytest.mark.fuzz

GOOD = {"pipeline": "turbines", "turbine": "turbine-1", "duration_s": 60,
        "request_id": "r-1"}
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSONISH = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=12), c, max_size=4), max_leaves=20)


@st.composite
def near_valid(draw, base: dict) -> bytes:
    """``base`` with fields replaced or dropped, or its text with a span written twice
    (repeated keys) or cut, or nested far too deep."""
    text = json.dumps(base)
    choice = draw(st.integers(0, 3))
    if choice == 0:
        changed = dict(base)
        for key in draw(st.lists(st.sampled_from(sorted(base) + ["extra"]), max_size=3)):
            changed[key] = draw(JSONISH)
        return json.dumps(changed).encode()
    at = draw(st.integers(0, len(text)))
    end = draw(st.integers(at, len(text)))
    if choice == 1:
        return (text[:end] + "," + text[at:end] + text[end:]).encode()
    if choice == 2:
        return text[:at].encode()
    depth = draw(st.integers(1, 3000))
    return ('{"a":' * depth + "1" + "}" * depth).encode()


class _Capture:
    def __init__(self) -> None:
        self.requested: list[tuple[str, float]] = []

    def request(self, turbine: str, duration_s: float) -> None:
        self.requested.append((turbine, duration_s))


@given(st.one_of(near_valid(GOOD), st.binary(max_size=300), st.text(max_size=300),
                 JSONISH.map(lambda v: json.dumps(v).encode())))
def test_any_capture_request_is_answered(payload):
    capture = _Capture()
    requests = CaptureRequests(link=None, thing="gw-1", captures={"turbines": capture},
                               counters=Counters())
    response = requests.handle(payload)
    assert response["status"] in ("accepted", "rejected")
    if response["status"] == "rejected":
        assert response["reason"] and not capture.requested
    else:
        # Accepted means the request read one way only: every key appeared once.
        body = json.loads(payload)
        assert capture.requested == [(body["turbine"], body["duration_s"])]


ACCEPTED = {"clientToken": "t", "urls": [{"key": "k", "url": "https://s3.example.com/k",
                                          "headers": {"Content-MD5": "x"}}],
            "expiresAt": 1.5}
REQUEST = {"clientToken": "t", "objects": [{"key": "k", "bytes": 3,
                                            "md5": "A" * 22 + "=="}]}


@given(st.one_of(near_valid(ACCEPTED), near_valid(REQUEST), st.binary(max_size=300),
                 JSONISH.map(lambda v: json.dumps(v).encode())))
def test_any_url_message_parses_or_is_refused(payload):
    for model in (url_protocol.Accepted, url_protocol.Rejected, url_protocol.UrlRequest):
        try:
            url_protocol.parse(model, payload)
        except ValueError as exc:
            assert str(exc)
    token = url_protocol.client_token_of(payload)
    assert token is None or isinstance(token, str)
