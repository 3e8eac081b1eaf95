"""The loaded-models file's decoder under Hypothesis (edged.agent.restore.decode): for any
bytes, a list of models or LoadedModelsFileError, never another exception, within
bounded time; and what the agent writes, it reads back."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged.agent.restore import (
    MAX_MODELS,
    MAX_PATH,
    LoadedModelsFileError,
    SavedModel,
    decode,
    encode,
)

pytestmark = pytest.mark.fuzz

NAMES = st.from_regex(r"[a-zA-Z0-9](-?[a-zA-Z0-9]){0,20}", fullmatch=True)
PATHS = st.text(min_size=1, max_size=60).filter(lambda p: "\0" not in p)
saved_models = st.builds(SavedModel, NAMES, PATHS, PATHS.map(lambda p: "/" + p))

# JSON values near the file's shape, so that many inputs get past the parse.
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                 st.text(max_size=20), NAMES, st.just(1))
entries = st.one_of(
    st.fixed_dictionaries({"name": st.one_of(NAMES, leaf), "url": st.one_of(PATHS, leaf),
                           "directory": st.one_of(PATHS.map(lambda p: "/" + p), leaf)}),
    st.dictionaries(st.sampled_from(["name", "url", "directory", "x"]), leaf, max_size=4),
    leaf)
documents = st.one_of(
    st.fixed_dictionaries({"version": st.one_of(st.just(1), leaf),
                           "models": st.one_of(st.lists(entries, max_size=5), leaf)}),
    st.recursive(leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                               st.dictionaries(st.text(max_size=5), inner,
                                                               max_size=3)), max_leaves=10))


def decoded_or_refused(data: bytes) -> list[SavedModel] | None:
    started = time.process_time()  # CPU time: a wall-clock bound flakes on a busy machine
    try:
        return decode(data)
    except LoadedModelsFileError:
        return None
    finally:
        assert time.process_time() - started < 1.0


@given(st.binary(max_size=400))
def test_any_bytes(data):
    decoded_or_refused(data)


@given(documents)
def test_json_near_the_shape(document):
    models = decoded_or_refused(json.dumps(document).encode())
    if models is not None:
        assert len(models) <= MAX_MODELS
        assert len({m.name for m in models}) == len(models)
        for m in models:
            assert m.directory.startswith("/") and 0 < len(m.url) <= MAX_PATH


@given(st.lists(saved_models, max_size=8, unique_by=lambda m: m.name))
def test_what_is_written_is_read_back(models):
    assert decode(encode(models)) == models
