"""Where the expected input distribution (what PSI compares a device against) comes from,
best first:

1. a model bundle's manifest ``monitoring.expected_input`` (``edged-cloud package`` writes
   it from the training output's healthy validation windows): ``--baseline`` names the
   bundle (``bundle.tar.gz``), its model directory or its ``manifest.json``;
2. a training output directory (``--baseline TRAINING_OUTDIR``): the same computed from its
   ``validation.npz``, healthy windows only;
3. neither: the fleet's own first 24 hours of sketches of that model version (weaker: it
   is what the fleet saw, not what the model was trained on, and a device drifting from
   its first day goes unseen).
"""

from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged_cloud.errors import BadInput, NotFound
from edged_cloud.monitor import stats

MANIFEST = "manifest.json"
FIRST_HOURS = 24


@dataclass
class Baseline:
    input_edges: list[float]
    expected: np.ndarray   # features x (E + 1) proportions
    source: str            # "manifest", "training" or "fleet-first-24h"


def monitoring_section(windows: np.ndarray, labels: np.ndarray | None,
                       step: int = 10) -> dict:
    """The manifest's ``monitoring`` from held-out windows (healthy ones where labelled)."""
    if labels is not None:
        windows = windows[np.asarray(labels) == "healthy"]
    if not len(windows):
        raise BadInput("no healthy validation windows to take the expected inputs from")
    return {"input_edges": stats.DEFAULT_INPUT_EDGES, "error_edges": stats.DEFAULT_ERROR_EDGES,
            "expected_input": stats.expected_input(windows, stats.DEFAULT_INPUT_EDGES, step)}


def from_monitoring(section: dict, where: str) -> Baseline:
    try:
        edges = [float(x) for x in section["input_edges"]]
        expected = np.asarray(section["expected_input"], dtype=float)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{where}: monitoring: malformed ({exc})") from None
    if expected.ndim != 2 or expected.shape[1] != len(edges) + 1:
        raise BadInput(f"{where}: monitoring.expected_input: expected features x "
                       f"{len(edges) + 1} proportions, got shape {expected.shape}")
    return Baseline(edges, expected, "manifest")


def _from_manifest(path: Path) -> Baseline:
    from edged_cloud.model_source import read_json

    manifest = read_json(path)
    section = manifest.get("monitoring") if isinstance(manifest, dict) else None
    if not isinstance(section, dict):
        raise BadInput(f"{path}: no monitoring section (package the model with "
                       "edged-cloud package, or give its training output)")
    return from_monitoring(section, str(path))


def load(path: Path) -> Baseline:
    """A baseline from a bundle, a model directory, a manifest or a training output."""
    if not path.exists():
        raise NotFound(f"{path}: no such file or directory")
    if path.is_file() and path.name.endswith((".tar.gz", ".tgz")):
        from edged.model.bundle import BundleError, extract_bundle

        with tempfile.TemporaryDirectory(prefix="edged-monitor-") as tmp:
            try:
                slot = extract_bundle(path, Path(tmp) / "slot")
            except (BundleError, tarfile.TarError, OSError) as exc:
                raise BadInput(f"{path}: not a bundle: {exc}") from None
            return _from_manifest(slot / MANIFEST)
    if path.is_file():
        return _from_manifest(path)
    if (path / MANIFEST).is_file():
        return _from_manifest(path / MANIFEST)
    if (path / "validation.npz").is_file():
        from edged_cloud.model_source import read_arrays

        arrays = read_arrays(path / "validation.npz", "inputs", optional=("labels",))
        windows = arrays["inputs"]
        if windows.ndim != 4:
            raise BadInput(f"{path}/validation.npz: inputs: expected (n, features, s, s), "
                           f"got shape {windows.shape}")
        section = monitoring_section(windows, arrays.get("labels"))
        baseline = from_monitoring(section, str(path))
        baseline.source = "training"
        return baseline
    raise BadInput(f"{path}: neither a bundle, a model directory, a manifest nor a "
                   "training output (validation.npz)")


def from_fleet(edges: list[float], first_counts: np.ndarray) -> Baseline:
    """The fleet's own first day of a version: summed counts as proportions."""
    return Baseline(edges, stats.proportions(first_counts), "fleet-first-24h")
