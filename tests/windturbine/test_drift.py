"""Simulated drifts: a turbine's inputs move away from the training data (the sketches'
PSI against a healthy turbine's) before the reference model raises any alarm."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from edged.capture.sketches import DEFAULT_INPUT_EDGES, psi
from edged.model.package import builtin_root, read_manifest
from edged.windturbine.features import (
    WindTurbineParams,
    WindTurbinePreprocessor,
    raw_features,
)
from edged.windturbine.layout import DATASET_COLUMNS, INPUTS
from edged.windturbine.simulator import Drift, WindFarm, parse_drifts

MODEL = builtin_root() / "windturbine-v1"


def decide(drift: str, seconds: float):
    """Every decision (each `step` rows) of turbines 0 (healthy) and 1 (drifting): the
    model-input values of the newest rows, and which decisions were anomalous."""
    manifest = read_manifest(MODEL).model_dump()
    params = WindTurbineParams.from_manifest(manifest["preprocessing"])
    pre = WindTurbinePreprocessor(params)
    session = ort.InferenceSession(str(MODEL / manifest["model"]))
    farm = WindFarm(turbines=2, rate_hz=20, seed=5, drifts=parse_drifts(drift))
    rows = farm.ticks(int(seconds * 20))[:, :, [DATASET_COLUMNS.index(c) for c in INPUTS]]
    features = raw_features(rows).transpose(1, 0, 2)  # (turbines, rows, 6)
    ends = np.arange(params.buffer, features.shape[1] + 1, params.step)
    inputs, alarms = [], []
    for end in ends:
        x = pre.windows(features[:, end - params.buffer:end])
        y = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
        alarms.append(pre.anomalies(pre.errors(x, y, 2)).any(axis=1))
        inputs.append(x.reshape(2, -1, 6, params.window)[:, -1, :, -params.step:])
    return np.stack(inputs, axis=1), np.stack(alarms, axis=1), ends / 20.0


def histogram(values: np.ndarray) -> np.ndarray:
    edges = np.array([-np.inf, *DEFAULT_INPUT_EDGES, np.inf])
    return np.array([np.histogram(values[:, f].ravel(), bins=edges)[0] for f in range(6)])


@pytest.mark.parametrize(("kind", "until"), [("bias", 300), ("wind", 300), ("bearing", 200)])
def test_a_drift_moves_the_inputs_before_any_alarm(kind, until):
    """A 600 s drift from 25 s on: over its ``until - 100`` .. ``until`` seconds, the
    drifting turbine's input histogram is far (PSI > 0.2) from what the same turbine,
    the same weather, made without the drift, and it has raised no alarm yet."""
    healthy, _, times = decide("", 25 + until)
    inputs, alarms, _ = decide(f"1:{kind}@25+600", 25 + until)
    late = times > 25 + until - 100
    found = psi(histogram(inputs[1, late]), histogram(healthy[1, late]))
    assert np.nanmax(found) > 0.2
    assert not alarms[1].any()
    # The healthy turbine beside it is not moved at all.
    np.testing.assert_array_equal(inputs[0], healthy[0])


def test_drifts_parse_like_faults():
    assert parse_drifts("1:bias@60+600, 2:bearing@0-30") == [
        Drift(1, "bias", 60.0, 660.0), Drift(2, "bearing", 0.0, 30.0)]
    with pytest.raises(ValueError, match="unknown drift kind 'voltage'"):
        parse_drifts("1:voltage@0+1")
    with pytest.raises(ValueError, match="drift item 1"):
        parse_drifts("1:bias@5-2")


def test_a_drift_leaves_the_other_turbines_and_the_past_alone():
    plain = WindFarm(turbines=2, rate_hz=20, seed=5).ticks(400)
    drifted = WindFarm(turbines=2, rate_hz=20, seed=5,
                       drifts=[Drift(1, "bias", 10.0, 30.0)]).ticks(400)
    np.testing.assert_array_equal(plain[:, 0], drifted[:, 0])
    np.testing.assert_array_equal(plain[:200], drifted[:200])
    voltage = DATASET_COLUMNS.index("voltage")
    assert (drifted[300:, 1, voltage] > plain[300:, 1, voltage]).all()
