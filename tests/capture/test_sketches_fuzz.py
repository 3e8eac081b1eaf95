"""The sketches' two readers of untrusted input under Hypothesis: the state file a
previous run left beside the spool (``sketches.json``) and a bundle manifest's
``monitoring`` section. Any bytes or JSON give a valid state (that a restart then
continues from without an error) or a ValueError naming what is wrong, never another
exception."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.base import strict_json
from edged.capture.sketches import (
    MAX_STATE_BYTES,
    Bins,
    Sketcher,
    hour_of,
    parse_state,
)
from edged.plugin.events import Decision, ModelRef, Round

pytestmark = pytest.mark.fuzz

SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**80, 2**80)
           | st.floats() | st.text(max_size=8))
JSONISH = st.recursive(SCALARS, lambda c: st.lists(c, max_size=4)
                       | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=20)
FEATURES = ("a", "b")
T = 1_700_000_000.0


def a_round(version: int = 1) -> Round:
    decision = Decision("p", "t-0", T, (0.5, 2.0), (False, True), {"g": True},
                        ModelRef("m", version))
    return Round("p", [decision], FEATURES, (1.0, 1.0), T, 0.0,
                 values=np.array([[0.5, 2.0]]), anomalous=np.array([[False, True]]),
                 group_flags=np.array([[True]]))


def saved_state() -> dict:
    """A real state file's content: one open hour's partial."""
    sketcher = Sketcher("p", "d", ("g",))
    sketcher.observe(a_round(), bins=Bins(), step=10, sha=None)
    return json.loads(sketcher.state(sketcher.partial(T + 1)))


GOOD_STATE = saved_state()
GOOD_RECORD = next(iter(GOOD_STATE["sketches"].values()))


@st.composite
def near_state(draw) -> dict:
    """The real state with some fields of its record replaced or dropped."""
    record = dict(GOOD_RECORD)
    for name in draw(st.lists(st.sampled_from(sorted(record)), max_size=3)):
        if draw(st.booleans()):
            record[name] = draw(JSONISH)
        else:
            record.pop(name, None)
    return {"schema": 1, "sketches": {record.get("key", "k") if isinstance(
        record.get("key"), str) else "k": record}}


@st.composite
def near_text(draw) -> bytes:
    """The real file's text cut short, a span written twice, or nested far too deep."""
    text = json.dumps(GOOD_STATE)
    at = draw(st.integers(0, len(text)))
    end = draw(st.integers(at, len(text)))
    choice = draw(st.integers(0, 2))
    if choice == 0:
        return text[:at].encode()
    if choice == 1:
        return (text[:end] + "," + text[at:end] + text[end:]).encode()
    depth = draw(st.integers(1, 2000))
    return ('{"schema": 1, "sketches": ' + '{"a":' * depth + "1" + "}" * depth + "}").encode()


def read_state(data: bytes) -> dict[str, dict]:
    """What PipelineCapture._read_sketch_state does with the file's bytes."""
    return parse_state(strict_json.loads(data, max_bytes=MAX_STATE_BYTES, max_depth=6))


@given(st.one_of(near_state().map(lambda v: json.dumps(v).encode()), near_text(),
                 st.binary(max_size=200), JSONISH.map(lambda v: json.dumps(v).encode())))
def test_any_state_file_is_read_or_rejected_and_a_read_one_is_continued(data):
    try:
        saved = read_state(data)
    except (strict_json.JsonError, ValueError) as exc:
        assert str(exc)
        return
    # Accepted: a restart's first round of that hour continues it (or, bins that do
    # not fit, starts afresh), without an exception on the decision path.
    sketcher = Sketcher("p", "d", ("g",))
    sketcher.resume_from(saved)
    sketcher.observe(a_round(), bins=Bins(), step=10, sha=None)
    [record] = sketcher.partial(T + 2)
    assert record["decisions"] >= 1
    assert record["period_start"] == hour_of(T)


def test_the_real_state_file_is_accepted_and_continued():
    saved = read_state(json.dumps(GOOD_STATE).encode())
    sketcher = Sketcher("p", "d", ("g",))
    sketcher.resume_from(saved)
    sketcher.observe(a_round(), bins=Bins(), step=10, sha=None)
    [record] = sketcher.partial(T + 2)
    assert record["decisions"] == 2 and record["anomalous"] == 2
    assert record["groups"] == {"g": 2}


@pytest.mark.parametrize(("change", "named"), [
    ({"decisions": -1}, "decisions"), ({"decisions": 2**80}, "decisions"),
    ({"stale_s": float("inf")}, "stale_s"), ({"input_counts": [[1.5]]}, "input_counts"),
    ({"groups": {"g": "1"}}, "groups"), ({"turbine_names": "t-0"}, "turbine_names"),
])
def test_a_bad_field_is_named(change, named):
    key = GOOD_RECORD["key"]
    with pytest.raises(ValueError, match=named) as error:
        parse_state({"schema": 1, "sketches": {key: {**GOOD_RECORD, **change}}})
    assert key in str(error.value)


EDGES = st.lists(st.one_of(st.integers(-2**70, 2**70), st.floats(), st.booleans(),
                           st.text(max_size=3)), max_size=6)


@st.composite
def monitoring(draw) -> dict:
    """A monitoring section: edges and an expected table of any shape and content."""
    section = {}
    if draw(st.booleans()):
        section["input_edges"] = draw(EDGES | JSONISH)
    if draw(st.booleans()):
        section["error_edges"] = draw(EDGES | JSONISH)
    if draw(st.booleans()):
        section["expected_input"] = draw(st.lists(EDGES, max_size=3) | JSONISH)
    return section


@given(st.one_of(monitoring(), JSONISH), st.integers(0, 3))
def test_any_monitoring_section_gives_bins_or_a_clear_error(section, features):
    try:
        bins = Bins.from_manifest({"monitoring": section}, features)
    except ValueError as exc:
        assert "monitoring" in str(exc)
        return
    assert np.all(np.diff(bins.input_edges) > 0) and np.all(np.isfinite(bins.input_edges))
    assert np.all(np.diff(bins.error_edges) > 0) and np.all(np.isfinite(bins.error_edges))
    if bins.expected is not None:
        assert bins.expected.shape == (features, len(bins.input_edges) + 1)
        assert np.all(bins.expected >= 0)


def test_a_valid_monitoring_section_is_used():
    bins = Bins.from_manifest({"monitoring": {
        "input_edges": [-1, 0, 1], "error_edges": [1.0],
        "expected_input": [[0.25] * 4, [0.1, 0.2, 0.3, 0.4]]}}, 2)
    assert bins.input_edges.tolist() == [-1.0, 0.0, 1.0]
    assert bins.expected.tolist()[1] == [0.1, 0.2, 0.3, 0.4]
    for section, named in [({"input_edges": [1, 1]}, "input_edges"),
                           ({"error_edges": [10**400]}, "error_edges"),
                           ({"expected_input": [[1e400] * 18]}, "expected_input"),
                           ({"expected_input": [["0.5"] * 18] * 2}, "expected_input")]:
        with pytest.raises(ValueError, match=named):
            Bins.from_manifest({"monitoring": section}, 2)
