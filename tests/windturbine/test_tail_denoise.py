"""edged.windturbine.tail_denoise: the newest rows of a denoised buffer, by two matrix
products, against pywt's full transform and inverse (the reference's computation)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from edged.windturbine import features as features_module
from edged.windturbine.features import WindTurbinePreprocessor, raw_features
from edged.windturbine.tail_denoise import TailDenoiser

from .test_features import fleet


def signals(rng, turbines, n):
    """Six series per turbine at the scales the features have (radians to hundreds of
    volts), with steps and spikes as faults make them."""
    scale = np.array([0.02, 0.02, 2.0, 0.4, 0.6, 30.0])
    x = rng.standard_normal((turbines, n, 6)) * scale + np.array([0, 0, -0.1, 2.2, 1.6, 48])
    x[0, n // 2:, 5] += 400.0  # a step
    x[-1, -7, 0] = 3.0  # a spike in the tail
    return x


@pytest.mark.filterwarnings("ignore:Level value of .* is too high")
@pytest.mark.parametrize("n, span, wavelet, level, approximation", [
    (500, 110, "db6", 5, True),  # the reference
    (500, 110, "db6", 5, False),  # the textbook variant
    (501, 110, "db6", 5, True),  # odd: waverec's padding sample
    (110, 110, "db6", 5, True),  # the shortest buffer windows() takes: all of it
    (257, 40, "db2", 3, True),
    (300, 100, "sym4", 4, False),
    (128, 17, "haar", 7, True),
])
def test_tail_matches_the_full_transform(params, n, span, wavelet, level, approximation):
    rng = np.random.default_rng(n + span)
    features = signals(rng, 70, n)  # two blocks, the second short
    raw_std = np.array([0.016, 0.016, 1.8, 0.39, 0.62, 26.4])
    t = (raw_std * np.sqrt(2 * np.log2(n)))[:, None]
    # The reference's way: pywt over the whole buffer, then its last ``span`` rows.
    whole = WindTurbinePreprocessor(dataclasses.replace(
        params, raw_std=raw_std, wavelet=wavelet, max_level=level,
        threshold_approximation=approximation))
    expected = whole.denoise(features)[:, n - span:]
    got = TailDenoiser(n, span, wavelet, level, approximation)(features, t)
    assert got.shape == expected.shape == (70, span, 6)
    # Different summation orders: rounding of the series' own scale, no more.
    scale = np.abs(features).max(axis=1, keepdims=True)
    assert np.all(np.abs(got - expected) <= 1e-12 * scale)


def test_rows_before_the_first_one_read_change_nothing():
    denoiser = TailDenoiser(500, 110, "db6", 5, True)
    assert 0 < denoiser.first_row < 500 - 110
    rng = np.random.default_rng(9)
    features = signals(rng, 3, 500)
    t = np.full((6, 1), 0.5)
    before = denoiser(features, t)
    features[:, : denoiser.first_row] = rng.standard_normal((3, denoiser.first_row, 6)) * 1e6
    assert np.array_equal(denoiser(features, t), before)
    # ... and the row at first_row does: the cut is no later than it must be.
    features[:, denoiser.first_row] += 1e6
    assert not np.array_equal(denoiser(features, t), before)


def test_windows_use_the_full_transforms_tail(params):
    """windows() (tail) and denoise() (pywt, whole buffer) agree on the rows windows use."""
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params, seed=11)
    features = raw_features(rows)
    span = params.window + params.step
    tail = pre.denoise(features)[:, -span:, :]
    x = pre.windows(features).reshape(len(rows), 6, params.window)
    expected = ((tail - params.mean) / params.std).swapaxes(1, 2)[:, :, : params.window]
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-9)


def test_buffers_too_long_for_the_maps_take_the_whole_transform_alike(params, monkeypatch):
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params, seed=12)
    features = raw_features(rows)
    by_maps = pre.windows(features)
    monkeypatch.setattr(features_module, "MAX_TAIL_ROWS", params.buffer - 1)
    whole = pre.windows(features)
    assert not np.array_equal(whole, by_maps)  # the other way, indeed: rounding apart
    np.testing.assert_allclose(whole, by_maps, rtol=0, atol=1e-9)


def test_bad_settings_and_shapes_are_refused():
    with pytest.raises(ValueError, match="span"):
        TailDenoiser(100, 101, "db6", 5, True)
    with pytest.raises(ValueError, match="500 samples"):
        TailDenoiser(500, 110, "db6", 5, True)(np.zeros((2, 499, 6)), np.ones((6, 1)))
