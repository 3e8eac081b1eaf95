"""A training output (docs/cloud.md, "train") without training: windturbine-v1's model and
statistics, with held-out windows cut from the device's simulator by the device's own
preprocessing, labelled healthy or by the fault running. What ``optimize`` and ``package``
tests read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from edged.model.package import builtin_root
from edged.windturbine.features import WindTurbineParams, WindTurbinePreprocessor, raw_features
from edged.windturbine.layout import DATASET_COLUMNS, INPUTS
from edged.windturbine.simulator import Fault, WindFarm

BUILTIN = builtin_root() / "windturbine-v1"
FAULTS = {1: "vibration", 3: "rotation", 5: "voltage"}


def windows(seconds: int = 100, stride: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(n, 6, 10, 10) float32 model inputs of 8 turbines (three with a fault from 30 s on)
    and each window's label."""
    manifest = json.loads((BUILTIN / "manifest.json").read_text())
    pre = WindTurbinePreprocessor(WindTurbineParams.from_manifest(manifest["preprocessing"]))
    faults = [Fault(turbine, kind, 30.0, 1e9) for turbine, kind in FAULTS.items()]
    rows = WindFarm(turbines=8, seed=seed, faults=faults).ticks(20 * seconds)
    features = raw_features(rows[:, :, [DATASET_COLUMNS.index(c) for c in INPUTS]])
    features = features.transpose(1, 0, 2)  # turbines, rows, features
    buffers, labels = [], []
    for start in range(0, features.shape[1] - 499, stride):
        buffers.append(features[:, start:start + 500])
        newest = (start + 500) / 20  # seconds
        labels += [FAULTS[t] if t in FAULTS and newest - 5.5 >= 30 else "healthy"
                   for t in range(8)]
    x = pre.windows(np.concatenate(buffers)).astype(np.float32)
    return x, np.array(labels)


def make(directory: Path, **kwargs) -> Path:
    """A training output at ``directory``: model.onnx, preprocessing.json, validation.npz,
    golden.npz (inputs only matter: package recomputes the outputs), report.json."""
    directory.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((BUILTIN / "manifest.json").read_text())
    shutil.copyfile(BUILTIN / "model.onnx", directory / "model.onnx")
    (directory / "preprocessing.json").write_text(json.dumps(manifest["preprocessing"]))
    x, labels = windows(**kwargs)
    np.savez(directory / "validation.npz", inputs=x, labels=labels)
    pick = np.arange(0, len(x), max(1, len(x) // 24))[:24]
    np.savez(directory / "golden.npz", inputs=x[pick], outputs=np.zeros_like(x[pick]))
    (directory / "report.json").write_text(json.dumps({"name": "windturbine", "version": 1}))
    return directory
