"""edged.windturbine.features against the literal reference (reference_impl.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from edged.windturbine.features import (
    WindTurbineParams,
    WindTurbinePreprocessor,
    euler_from_quaternion,
    raw_features,
)
from edged.windturbine.layout import FAULT_KINDS, FEATURES, GROUPS, INPUTS

from . import reference_impl as ref
from .conftest import constant_rows, healthy_rows, inject

# Reference facts (docs/windturbine.md): the workshop's statistics, feature order.
DOC_STATS = {
    "mean": [-0.007964888641109898, 0.0011708225976491218, -0.10684876812419516,
             2.1539819710169525, 1.6106330201974879, 47.79383123678855],
    "std": [0.00749032366908536, 0.0042807694729227255, 0.48142986104607144,
            0.354319324916855, 0.46953962260612736, 15.94323947766873],
    "raw_std": [0.016420936223837328, 0.016334995704541194, 1.8099483201980124,
                0.390586993510686, 0.6198457502848073, 26.381718657769373],
    "thresholds": [1.0827953869777986, 0.7643392252412812, 0.9999310888948346,
                   0.8415668710195762, 0.8265145168668945, 0.9139359431676647],
}  # fmt: skip
VOLTAGE = FEATURES.index("voltage")


def fleet(params, seed=0):
    """16 turbines of 500 rows: healthy, each fault kind, and one constant buffer.

    Returns (rows (16, N, 7), kinds: list of None | fault kind | "constant").
    """
    rng = np.random.default_rng(seed)
    n = params.buffer
    kinds: list[str | None] = [None] * 6 + [k for k in FAULT_KINDS for _ in range(3)]
    kinds.append("constant")
    rows = []
    for kind in kinds:
        if kind == "constant":
            rows.append(constant_rows(params, n))
        elif kind is None:
            rows.append(healthy_rows(rng, params, n))
        else:
            rows.append(inject(healthy_rows(rng, params, n), kind, rng))
    return np.stack(rows), kinds


# --- Euler angles ------------------------------------------------------------------------


def test_euler_matches_scalar_formula():
    rng = np.random.default_rng(1)
    q = np.concatenate(
        [
            rng.normal(size=(501, 4)),  # arbitrary, unnormalised
            rng.uniform(0, 100, size=(200, 4)),  # the vibration fault: far outside ±1
            [
                [0, 0, 0, 1],  # identity
                [0, 0, 0, 0],  # degenerate
                [0, math.sin(math.pi / 4), 0, math.cos(math.pi / 4)],  # pitch +90°
                [0, -math.sin(math.pi / 4), 0, math.cos(math.pi / 4)],  # pitch -90°
                [0.5, 0.5, 0.5, 0.5],  # gimbal lock, pitch argument exactly 1
                [0, 1, 0, 1],  # pitch argument 2 -> clipped to 1
                [0, -1, 0, 1],  # pitch argument -2 -> clipped to -1
                [1, 0, 0, 0],  # roll 180°
                [0, 0, 1, 0],  # yaw 180°
            ],
        ]
    )
    q = q[rng.permutation(len(q))].reshape(2, -1, 4)  # any shape, not just 1-D
    roll, pitch, yaw = euler_from_quaternion(q[..., 0], q[..., 1], q[..., 2], q[..., 3])
    assert roll.shape == pitch.shape == yaw.shape == q.shape[:-1]
    expected = np.array([ref.euler_from_quaternion(*map(float, row)) for row in q.reshape(-1, 4)])
    got = np.stack([roll, pitch, yaw], axis=-1).reshape(-1, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    # Out-of-range pitch arguments are clipped, not NaN.
    assert np.all(np.isfinite(got))
    assert euler_from_quaternion(0, 1, 0, 1)[1] == math.pi / 2
    assert euler_from_quaternion(0, -1, 0, 1)[1] == -math.pi / 2


def test_raw_features_match_reference_and_keep_column_order(params):
    rows, _ = fleet(params)
    features = raw_features(rows)
    assert features.shape == rows.shape[:-1] + (len(FEATURES),)
    assert features.dtype == np.float64
    for t in range(rows.shape[0]):
        np.testing.assert_allclose(features[t], ref.raw_features(rows[t]), rtol=0, atol=1e-12)
    for name in FEATURES[3:]:
        assert np.array_equal(features[..., FEATURES.index(name)], rows[..., INPUTS.index(name)])
    with pytest.raises(ValueError):
        raw_features(rows[..., :6])


# --- Preprocessing -----------------------------------------------------------------------


@pytest.mark.parametrize("threshold_approximation", [True, False])
def test_denoise_matches_reference_columns(params, threshold_approximation):
    params = dataclasses.replace(params, threshold_approximation=threshold_approximation)
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params)
    features = raw_features(rows)
    got = pre.denoise(features)
    assert got.shape == features.shape
    worst = 0.0
    for t in range(features.shape[0]):
        expected = ref.wavelet_denoise(
            features[t], params.raw_std, params.wavelet, params.max_level, threshold_approximation
        )
        assert expected.shape == features[t].shape  # N = 500: reconstruction is exact length
        np.testing.assert_allclose(got[t], expected, rtol=1e-12, atol=1e-12)
        worst = max(worst, float(np.max(np.abs(got[t] - expected))))
    print(f"denoise max |diff| vs reference: {worst:.3g}")


def test_denoise_odd_length_is_trimmed(params):
    """For odd N waverec gives N + 1 samples; denoise keeps the first N of them."""
    pre = WindTurbinePreprocessor(params)
    features = raw_features(healthy_rows(np.random.default_rng(2), params, 501))
    got = pre.denoise(features[None])[0]
    expected = ref.wavelet_denoise(features, params.raw_std)
    assert expected.shape == (502, 6)  # the reference's untrimmed stack
    assert got.shape == (501, 6)
    np.testing.assert_allclose(got, expected[:501], rtol=1e-12, atol=1e-12)


def test_windows_match_reference_x(params):
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params)
    x = pre.windows(raw_features(rows))
    w = params.windows_per_buffer
    side = math.isqrt(params.window)
    assert x.shape == (rows.shape[0] * w, 6, side, side)
    assert x.dtype == np.float64
    worst = 0.0
    for t in range(rows.shape[0]):
        expected = ref.reference_x(ref.raw_features(rows[t]), params)
        assert expected.shape == (w, 6, side, side)
        mine = x[t * w : (t + 1) * w]
        worst = max(worst, float(np.max(np.abs(mine - expected))))
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-6)
    print(f"windows max |diff| vs reference: {worst:.3g}")


def test_a_round_is_denoised_in_blocks_bit_for_bit(params):
    """windows() denoises 32 turbines at a time: 70 turbines (three blocks, the last
    short) give exactly what each turbine alone gives."""
    pre = WindTurbinePreprocessor(params)
    rows = np.concatenate([fleet(params, seed=seed)[0] for seed in range(5)])[:70]
    features = raw_features(rows)
    together = pre.windows(features)
    alone = np.concatenate([pre.windows(features[t : t + 1]) for t in range(len(rows))])
    assert np.array_equal(together, alone)


def test_windows_textbook_variant_matches_reference(params):
    params = dataclasses.replace(params, threshold_approximation=False)
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params, seed=3)
    x = pre.windows(raw_features(rows))
    for t in range(rows.shape[0]):
        expected = ref.reference_x(ref.raw_features(rows[t]), params)
        np.testing.assert_allclose(x[t : t + 1], expected, rtol=0, atol=1e-6)


def test_windows_are_rows_before_the_newest_step(params):
    """The single window is rows -110..-10 of the buffer, not the newest 100 rows."""
    pre = WindTurbinePreprocessor(params)
    features = raw_features(healthy_rows(np.random.default_rng(4), params, params.buffer))
    denoised = pre.denoise(features[None])[0]
    normalised = (denoised - params.mean) / params.std
    x = pre.windows(features[None])
    start = params.buffer - params.window - params.step
    expected = normalised[start : start + params.window].T.reshape(x.shape[1:])
    np.testing.assert_allclose(x[0], expected, rtol=0, atol=1e-12)


def test_windows_rejects_bad_shapes(params):
    pre = WindTurbinePreprocessor(params)
    with pytest.raises(ValueError):
        pre.windows(np.zeros((2, params.buffer, 5)))
    with pytest.raises(ValueError):
        pre.windows(np.zeros((params.buffer, 6)))
    with pytest.raises(ValueError):
        pre.windows(np.zeros((2, params.window + params.step - 1, 6)))


def test_constant_buffer_quirk(params):
    """Thresholding the approximation pulls a constant 47.79 V down to about 28 (docs)."""
    features = raw_features(constant_rows(params, params.buffer))
    assert np.allclose(features[:, VOLTAGE], DOC_STATS["mean"][VOLTAGE])
    quirk = WindTurbinePreprocessor(params).denoise(features[None])[0]
    assert 27.5 < quirk[:, VOLTAGE].mean() < 28.5
    np.testing.assert_allclose(
        quirk, ref.wavelet_denoise(features, params.raw_std), rtol=1e-12, atol=1e-12
    )
    textbook = dataclasses.replace(params, threshold_approximation=False)
    plain = WindTurbinePreprocessor(textbook).denoise(features[None])[0]
    np.testing.assert_allclose(plain[:, VOLTAGE], features[:, VOLTAGE], rtol=0, atol=1e-9)


def test_all_zero_buffer_needs_no_division_warning(params):
    # Zero coefficients divide by zero inside soft thresholding; pytest turns a
    # RuntimeWarning into an error (pyproject), so this fails if it is not suppressed.
    out = WindTurbinePreprocessor(params).denoise(np.zeros((3, params.buffer, 6)))
    assert np.array_equal(out, np.zeros_like(out))


# --- Errors and decisions ----------------------------------------------------------------


def test_decisions_match_reference(params, model_fn):
    pre = WindTurbinePreprocessor(params)
    rows, kinds = fleet(params, seed=5)
    turbines = rows.shape[0]
    x = pre.windows(raw_features(rows))
    p = model_fn(x.astype(np.float32))  # one batched model call for the whole fleet
    values = pre.errors(x, p, turbines)
    anomalous = pre.anomalies(values)
    assert values.shape == anomalous.shape == (turbines, 6)
    assert values.dtype == np.float64 and anomalous.dtype == bool

    w = params.windows_per_buffer
    for t, kind in enumerate(kinds):
        ref_values, ref_anomalous, ref_x = ref.reference_decide(rows[t], params, model_fn)
        np.testing.assert_array_equal(anomalous[t], ref_anomalous, err_msg=f"turbine {t}")
        np.testing.assert_allclose(values[t], ref_values, rtol=1e-5, atol=1e-6)
        # Same x and p: errors() is the reference's arithmetic to rounding.
        np.testing.assert_allclose(
            values[t],
            ref.reference_values(x[t * w : (t + 1) * w], p[t * w : (t + 1) * w]),
            rtol=1e-12,
            atol=1e-15,
        )
        np.testing.assert_allclose(x[t * w : (t + 1) * w], ref_x, rtol=0, atol=1e-6)
        # The reference's own claims about its model (docs/windturbine.md).
        if kind in (None, "constant"):
            assert not ref_anomalous.any(), f"turbine {t} ({kind}): {ref_values}"
        if kind is None:
            assert np.all(ref_values < 0.25 * params.thresholds), f"turbine {t}: {ref_values}"
        if kind in GROUPS:
            assert ref_anomalous[list(GROUPS[kind])].all(), f"turbine {t} ({kind}): {ref_values}"
            # "any of the three injections ... lifts every feature far above its threshold"
            assert ref_anomalous.all(), f"turbine {t} ({kind}): {ref_values}"


def test_errors_accepts_float32_x_and_checks_shapes(params, model_fn):
    pre = WindTurbinePreprocessor(params)
    rows, _ = fleet(params, seed=6)
    x = pre.windows(raw_features(rows))
    x32 = x.astype(np.float32)
    p = model_fn(x32)
    e64 = pre.errors(x, p, rows.shape[0])
    e32 = pre.errors(x32, p, rows.shape[0])
    assert e32.dtype == np.float64
    np.testing.assert_allclose(e32, e64, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        pre.errors(x, p, rows.shape[0] + 1)
    with pytest.raises(ValueError):
        pre.errors(x, p[:-1], rows.shape[0])


def test_anomalies_compare_strictly_with_thresholds(params):
    pre = WindTurbinePreprocessor(params)
    th = params.thresholds
    errors = np.stack([th, np.nextafter(th, np.inf), np.nextafter(th, -np.inf)])
    assert pre.anomalies(errors).tolist() == [[False] * 6, [True] * 6, [False] * 6]


# --- Parameters --------------------------------------------------------------------------


def test_manifest_holds_the_reference_statistics(manifest, params):
    for key, values in DOC_STATS.items():
        np.testing.assert_allclose(getattr(params, key), values, rtol=1e-12, atol=0)
    assert params.buffer == 500 and params.window == 100 and params.step == 10
    assert params.wavelet == "db6" and params.max_level == 5
    assert params.threshold_approximation is True


def test_from_manifest_defaults_and_frozen_arrays():
    params = WindTurbineParams.from_manifest({**DOC_STATS, "unrelated": 1})
    assert (params.buffer, params.window, params.step) == (500, 100, 10)
    assert (params.wavelet, params.max_level, params.threshold_approximation) == ("db6", 5, True)
    assert params.windows_per_buffer == 1
    assert params.mean.dtype == np.float64 and params.mean.shape == (6,)
    with pytest.raises(ValueError):
        params.mean[0] = 0.0  # read-only


@pytest.mark.parametrize(("window", "step"), [(100, 10), (100, 1), (16, 4), (4, 3)])
def test_windows_per_buffer_counts_reference_windows(window, step):
    params = WindTurbineParams(**DOC_STATS, buffer=200, window=window, step=step)
    n = len(ref.create_dataset(np.zeros(window + step), window, step))
    assert params.windows_per_buffer == n


@pytest.mark.parametrize("key", list(DOC_STATS))
@pytest.mark.parametrize("values", [[1.0] * 5, [1.0] * 7, [[1.0] * 6], 1.0])
def test_from_manifest_wrong_length(key, values):
    with pytest.raises(ValueError, match=key):
        WindTurbineParams.from_manifest({**DOC_STATS, key: values})


@pytest.mark.parametrize("key", ["std", "raw_std"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_from_manifest_non_positive(key, bad):
    values = list(DOC_STATS[key])
    values[2] = bad
    with pytest.raises(ValueError, match=key):
        WindTurbineParams.from_manifest({**DOC_STATS, key: values})


@pytest.mark.parametrize("key", list(DOC_STATS))
def test_from_manifest_missing_key(key):
    stats = {k: v for k, v in DOC_STATS.items() if k != key}
    with pytest.raises(ValueError, match=key):
        WindTurbineParams.from_manifest(stats)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("buffer", 109),  # cannot hold window + step
        ("buffer", 500.5),
        ("window", 99),  # not a square
        ("step", 0),
        ("max_level", True),
        ("wavelet", "nope"),
        ("threshold_approximation", "yes"),
        ("features", list(reversed(FEATURES))),
    ],
)
def test_from_manifest_bad_settings(key, value):
    with pytest.raises(ValueError, match=key):
        WindTurbineParams.from_manifest({**DOC_STATS, key: value})
