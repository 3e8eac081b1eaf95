"""Sketch records as a device writes them (the monitoring contract, docs/monitoring.md), for
tests, the benchmark and trying the report without a fleet.

Each device draws its hourly input histograms from a distribution: the training one
(``expected``), or for a drifting device the same shifted by ``drift`` z units in one
feature. Objects land under the capture layout, one gzip JSON-lines object per
device x model version x hour, the partition being the hour the sketch covers.
"""

from __future__ import annotations

import gzip
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edged_cloud.monitor.stats import DEFAULT_ERROR_EDGES, DEFAULT_INPUT_EDGES, histogram

FEATURES = ["roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage"]
HOUR = 3600


@dataclass
class Device:
    name: str
    version: int = 1
    drift_feature: str | None = None
    drift: float = 0.0          # z units added to the drifting feature
    silent_from: float | None = None  # no records from this Unix time on
    switch_at: float | None = None    # (time, version): moves to a new version then
    switch_to: int | None = None
    windows: bool = False       # also write decision records carrying a window
    extra: dict = field(default_factory=dict)


def sample_inputs(rng: np.random.Generator, n: int, shift: np.ndarray) -> np.ndarray:
    """(features, n) model-input values: standard normal, as normalised training data."""
    return rng.standard_normal((len(FEATURES), n)) + shift[:, None]


def sketch(device: Device, version: int, start: float, rng: np.random.Generator, *,
           decisions: int = 7200, turbines: int = 1, anomaly_rate: float = 0.01,
           final: bool = True, written: float | None = None) -> dict:
    shift = np.zeros(len(FEATURES))
    if device.drift_feature:
        shift[FEATURES.index(device.drift_feature)] = device.drift
    values = sample_inputs(rng, min(decisions * 10, 2000), shift)
    scale = decisions * 10 / values.shape[1]  # histogram a sample, scaled to the hour's rows
    input_counts = [(histogram(row, DEFAULT_INPUT_EDGES) * scale).round().astype(int).tolist()
                    for row in values]
    ratios = rng.lognormal(-1.0, 0.5, (len(FEATURES), 500))
    error_counts = [(histogram(row, DEFAULT_ERROR_EDGES) * decisions / 500).round()
                    .astype(int).tolist() for row in ratios]
    anomalous = int(rng.binomial(decisions, anomaly_rate))
    return {
        "schema": 1, "kind": "sketch", "id": str(uuid.uuid4()),
        "key": f"wind:{version}:{start:.0f}", "device_id": device.name, "pipeline": "wind",
        "model_name": "windturbine", "model_version": version, "bundle_sha256": None,
        "time": written if written is not None else start + HOUR + 1,
        "period_start": start, "period_end": start + HOUR, "final": final,
        "turbines": turbines, "decisions": decisions, "anomalous": anomalous,
        "groups": {"vibration": anomalous, "rotation": 0, "voltage": 0},
        "stale_s": 0.0, "features": FEATURES,
        "input_edges": DEFAULT_INPUT_EDGES, "input_counts": input_counts,
        "error_edges": DEFAULT_ERROR_EDGES, "error_counts": error_counts,
        "thresholds": [1.0] * len(FEATURES),
    }


def decision(device: Device, version: int, when: float, rng: np.random.Generator) -> dict:
    """A sampled decision record with a ``window`` (100 rows x 6 features, z units)."""
    shift = np.zeros(len(FEATURES))
    if device.drift_feature:
        shift[FEATURES.index(device.drift_feature)] = device.drift
    window = sample_inputs(rng, 100, shift).T.round(4).tolist()
    return {"schema": 1, "kind": "decision", "id": str(uuid.uuid4()),
            "key": f"T01:{int(when)}", "pipeline": "wind", "device_id": device.name,
            "turbine": "T01", "model_name": "windturbine", "model_version": version,
            "bundle_sha256": None, "time": when, "anomalous": False, "primary": None,
            "features": FEATURES, "values": [0.3] * 6, "thresholds": [1.0] * 6,
            "flags": [False] * 6, "window": window}


def key_of(device: str, version: int, start: float) -> str:
    when = datetime.fromtimestamp(start, UTC)
    return (f"device={device}/model=windturbine/version={version}/"
            f"date={when:%Y-%m-%d}/hour={when:%H}/{uuid.uuid4()}.jsonl.gz")


def objects(devices: list[Device], start: float, hours: int, seed: int = 0):
    """(key, gzip body) of every device's hourly objects from ``start`` (an hour boundary)."""
    rng = np.random.default_rng(seed)
    for device in devices:
        for h in range(hours):
            begin = start + h * HOUR
            if device.silent_from is not None and begin >= device.silent_from:
                break
            version = device.version
            if device.switch_at is not None and begin >= device.switch_at:
                version = device.switch_to
            records = [sketch(device, version, begin, rng)]
            if device.windows:
                records += [decision(device, version, begin + 60 * k, rng) for k in range(3)]
            body = b"".join(json.dumps(r).encode() + b"\n" for r in records)
            yield key_of(device.name, version, begin), gzip.compress(body, mtime=0)


def write_lake(root: Path, devices: list[Device], start: float, hours: int,
               seed: int = 0) -> int:
    """Write the objects under ``root``; returns how many."""
    count = 0
    for key, body in objects(devices, start, hours, seed):
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
        count += 1
    return count
