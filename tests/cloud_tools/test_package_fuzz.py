"""What edged-cloud package and optimize read from disk, fuzzed: a key directory's index and
a training output's JSON and arrays are an edged_cloud value or a BadInput naming the file,
never another exception."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edged_cloud import keyring
from edged_cloud.errors import BadInput
from edged_cloud.model_source import read_arrays, read_json, windows_of

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20)
                    | st.floats(allow_nan=False),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["format", "keys", "id", "created",
                                                       "status", "version", "x"]), inner,
                                      max_size=5), max_leaves=20)


@pytest.mark.fuzz
@given(st.one_of(JSON.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
def test_any_keyring_index_is_a_keyring_or_bad_input(tmp_path_factory, data):
    directory = tmp_path_factory.mktemp("keys")
    (directory / keyring.INDEX).write_bytes(data)
    try:
        ring = keyring.load(directory)
    except BadInput as exc:
        assert keyring.INDEX in str(exc)
        return
    assert all(e.status in keyring.STATUSES for e in ring.keys)
    assert sum(e.status == "current" for e in ring.keys) <= 1


@pytest.mark.fuzz
@given(st.binary(max_size=300))
def test_any_json_file_is_a_value_or_bad_input(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("json") / "preprocessing.json"
    path.write_bytes(data)
    try:
        read_json(path)
    except BadInput as exc:
        assert "preprocessing.json" in str(exc)


@pytest.mark.fuzz
@given(st.one_of(st.binary(max_size=300),
                 st.tuples(st.sampled_from(["inputs", "outputs", "labels"]),
                           st.lists(st.integers(0, 12), min_size=0, max_size=4),
                           st.sampled_from(["float32", "float64", "int64", "U3"]))))
def test_any_npz_is_windows_or_bad_input(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("npz") / "validation.npz"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        name, shape, dtype = content
        buffer = io.BytesIO()
        np.savez(buffer, **{name: np.zeros(shape, dtype=dtype)})
        path.write_bytes(buffer.getvalue())
    try:
        arrays = read_arrays(path, "inputs", optional=("labels",))
        windows = windows_of(path, arrays["inputs"], [None, 6, 10, 10])
    except BadInput as exc:
        assert "validation.npz" in str(exc)
        return
    assert windows.shape[1:] == (6, 10, 10) and len(windows) > 0
