"""edged.model.golden: reading golden pairs and the one tolerance rule, and both callers
(bundle verification, the hot swap's staging) applying it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from edged.base.errors import GoldenError, ModelError
from edged.model import golden
from edged.model.errors import SwapError
from edged.runtime.swap import check_golden


def _pairs(tmp_path: Path, inputs, outputs, name: str = "golden.npz") -> Path:
    path = tmp_path / name
    np.savez(path, inputs=np.asarray(inputs), outputs=np.asarray(outputs))
    return path


def _refused(reason: str, fn, *args, **kwargs) -> GoldenError:
    with pytest.raises(GoldenError) as info:
        fn(*args, **kwargs)
    assert info.value.reason == reason, info.value
    assert isinstance(info.value, ModelError)
    return info.value


# -- the rule ------------------------------------------------------------------------------

def test_tolerance_is_a_floor_or_relative_per_element():
    expected = np.array([0.0, 0.5, 1.0, 10.0, -330.0])
    np.testing.assert_allclose(golden.tolerance(expected),
                               [1e-4, 1e-4, 1e-4, 1e-3, 330e-4])


@pytest.mark.parametrize("expected", [0.0, 0.1, 1.0, 330.0, -42.0])
def test_an_element_passes_at_its_tolerance_and_fails_just_past_it(expected):
    y = np.array([expected])
    allowed = float(golden.tolerance(y)[0])
    golden.compare(y + allowed * 0.999, y)
    golden.compare(y - allowed * 0.999, y)
    error = _refused("golden_failed", golden.compare, y + allowed * 1.01, y)
    assert "1 of 1 golden output values differ" in str(error)


def test_a_small_element_beside_a_large_one_is_held_to_its_own_tolerance():
    """Per element, not per sample: staging's old rule (1e-4 of a sample's largest value)
    let this 0.01 drift on a 0.1 pass next to a 330."""
    y = np.array([[330.0, 0.1]])
    _refused("golden_failed", golden.compare, y + [[0.0, 0.01]], y)


def test_nan_and_infinity_are_misses_unless_the_golden_holds_the_same():
    y = np.array([1.0, np.inf, -np.inf, 2.0])
    golden.compare(y.copy(), y)
    error = _refused("golden_failed", golden.compare, np.array([np.nan, np.inf, 5.0, np.inf]),
                     y)
    assert "3 of 4" in str(error)
    _refused("golden_failed", golden.compare, np.array([np.nan]), np.array([np.nan]))


def test_float32_outputs_are_compared_in_float64():
    y = np.array([0.1], np.float32)
    golden.compare(np.array([0.1], np.float32), y)


def test_a_shape_mismatch_fails():
    error = _refused("golden_failed", golden.compare, np.zeros((2, 3)), np.zeros((2, 4)))
    assert "output shape (2, 3), golden (2, 4)" in str(error)


# -- reading -------------------------------------------------------------------------------

def test_pairs_are_read(tmp_path):
    inputs, outputs = golden.read_pairs(_pairs(tmp_path, np.ones((3, 2)), np.zeros((3, 1))))
    assert inputs.shape == (3, 2) and outputs.shape == (3, 1)


def test_pairs_past_the_bound_are_refused_before_they_are_read(tmp_path):
    path = _pairs(tmp_path, np.ones((100, 100)), np.ones((100, 1)))
    error = _refused("too_large", golden.read_pairs, path, max_bytes=10_000)
    assert "golden.npz unpacks to more than 10000 bytes" in str(error)


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_unreadable_files_are_malformed(tmp_path, content):
    path = tmp_path / "golden.npz"
    path.write_bytes(content)
    _refused("malformed", golden.read_pairs, path)


def test_missing_arrays_are_malformed(tmp_path):
    path = tmp_path / "golden.npz"
    np.savez(path, inputs=np.ones(3))
    assert "'outputs'" in str(_refused("malformed", golden.read_pairs, path))


def test_an_object_array_is_malformed(tmp_path):
    path = tmp_path / "golden.npz"
    np.savez(path, inputs=np.array([{}], dtype=object), outputs=np.ones(1))
    _refused("malformed", golden.read_pairs, path)


@pytest.mark.parametrize(("inputs", "outputs"), [
    (np.ones((3, 2)), np.ones((2, 2))),  # three inputs, two outputs
    (np.ones((0, 2)), np.ones((0, 2))),  # none at all
    (np.float32(1), np.ones(1)),         # a scalar has no pairs
    (np.ones(1), np.float32(1)),
])
def test_inputs_and_outputs_must_pair_up(tmp_path, inputs, outputs):
    _refused("golden_failed", golden.read_pairs, _pairs(tmp_path, inputs, outputs))


def test_check_runs_predict_on_the_inputs_and_counts_the_pairs(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    path = _pairs(tmp_path, x, x * 2)
    assert golden.check(path, lambda batch: batch * 2) == 3
    _refused("golden_failed", golden.check, path, lambda batch: batch * 3)


def test_predict_errors_pass_through(tmp_path):
    path = _pairs(tmp_path, np.ones((1, 2)), np.ones((1, 2)))

    def broken(batch):
        raise KeyError("the caller's own error")

    with pytest.raises(KeyError, match="own error"):
        golden.check(path, broken)


# -- the hot swap's staging uses it --------------------------------------------------------

def _backend(directory: Path, predict, name: str | None = "golden.npz"):
    return SimpleNamespace(directory=directory, manifest={"golden": name}, predict=predict)


def test_staging_applies_the_rule_and_raises_swap_error(tmp_path):
    y = np.array([[330.0, 0.1]])
    _pairs(tmp_path, np.zeros((1, 2)), y)
    assert check_golden(_backend(tmp_path, lambda x: y + [[0.02, 0.0]])) == 1
    with pytest.raises(SwapError, match="golden pairs do not reproduce: 1 of 2"):
        check_golden(_backend(tmp_path, lambda x: y + [[0.0, 0.01]]))
    with pytest.raises(SwapError, match="1 of 2"):  # NaN: passed the old per-sample rule
        check_golden(_backend(tmp_path, lambda x: y * [[1.0, np.nan]]))


def test_staging_without_golden_pairs_checks_nothing(tmp_path):
    assert check_golden(_backend(tmp_path, None, name=None)) == 0


def test_staging_refuses_unreadable_golden_pairs_as_a_swap_error(tmp_path):
    (tmp_path / "golden.npz").write_bytes(b"junk")
    with pytest.raises(SwapError, match="cannot read the golden arrays"):
        check_golden(_backend(tmp_path, lambda x: x))
