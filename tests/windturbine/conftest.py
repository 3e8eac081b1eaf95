"""Fixtures for the wind-turbine tests: the committed reference model and synthetic buffers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edged.windturbine.features import WindTurbineParams
from edged.windturbine.layout import FAULT_KINDS, INPUTS

MODEL_DIR = Path(__file__).resolve().parents[2] / "edged" / "model" / "builtin" / "windturbine-v1"

COL = {name: i for i, name in enumerate(INPUTS)}


@pytest.fixture(scope="session")
def manifest() -> dict:
    path = MODEL_DIR / "manifest.json"
    if not path.is_file():
        pytest.fail(f"reference model manifest missing: {path}")
    return json.loads(path.read_text())


@pytest.fixture(scope="session")
def params(manifest) -> WindTurbineParams:
    return WindTurbineParams.from_manifest(manifest["preprocessing"])


@pytest.fixture(scope="session")
def model_fn():
    """The committed reference model, run with onnxruntime on the CPU: float32 x -> p."""
    import onnxruntime

    path = MODEL_DIR / "model.onnx"
    if not path.is_file():
        pytest.fail(f"reference model missing: {path}")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    return run


def quaternion_from_euler(roll, pitch, yaw):
    """Inverse of the standard conversion: (roll, pitch, yaw) -> (qx, qy, qz, qw)."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    qw = cr * cp * cy + sr * sp * sy
    qx = sr * cp * cy - cr * sp * sy
    qy = cr * sp * cy + sr * cp * sy
    qz = cr * cp * sy - sr * sp * cy
    return qx, qy, qz, qw


def rows_from_features(features: np.ndarray) -> np.ndarray:
    """(..., 6) features -> (..., 7) raw rows in INPUTS order."""
    rows = np.empty(features.shape[:-1] + (len(INPUTS),))
    qx, qy, qz, qw = quaternion_from_euler(features[..., 0], features[..., 1], features[..., 2])
    rows[..., COL["qx"]], rows[..., COL["qy"]] = qx, qy
    rows[..., COL["qz"]], rows[..., COL["qw"]] = qz, qw
    rows[..., COL["wind_speed_rps"]] = features[..., 3]
    rows[..., COL["rps"]] = features[..., 4]
    rows[..., COL["voltage"]] = features[..., 5]
    return rows


def healthy_rows(rng: np.random.Generator, params: WindTurbineParams, n: int) -> np.ndarray:
    """(n, 7) rows whose features are drawn around the reference means, raw_std spreads."""
    return rows_from_features(rng.normal(params.mean, params.raw_std, size=(n, 6)))


def constant_rows(params: WindTurbineParams, n: int) -> np.ndarray:
    """(n, 7) rows whose features sit exactly at the reference means."""
    return rows_from_features(np.broadcast_to(params.mean, (n, 6)).copy())


def inject(rows: np.ndarray, kind: str, rng: np.random.Generator, last: int = 60) -> np.ndarray:
    """The reference simulator's fault `kind`, over the last `last` rows of a copy of `rows`."""
    assert kind in FAULT_KINDS
    rows = rows.copy()
    tail = rows[-last:]
    if kind == "vibration":
        for q in ("qx", "qy", "qz", "qw"):
            tail[:, COL[q]] = rng.uniform(0, 100, size=last)
    elif kind == "rotation":
        tail[:, COL["rps"]] = rng.uniform(0, 100, size=last)
    else:
        tail[:, COL["voltage"]] = rng.integers(0, 10000, size=last)
    return rows
