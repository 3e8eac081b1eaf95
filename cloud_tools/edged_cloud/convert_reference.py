"""Convert the wind-turbine workshop's PyTorch model into edged's default ONNX model.

Run from a source checkout (the default paths are relative to the repository root):

    python -m edged_cloud.convert_reference --source DIR --out DIR

Writes model.onnx, golden.npz, manifest.json and ATTRIBUTION.md into the output folder,
after checking ONNX Runtime against PyTorch on a few thousand windows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from edged_cloud.train.export import (
    TOLERANCE,
    WINDOW_SHAPE,
    export_onnx,
    npz_bytes,
    scaled_error,
    torch_outputs,
    window_errors,
)
from edged_cloud.train.model import autoencoder

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "reference" / "windturbine" / "original"
DEFAULT_OUT = REPO_ROOT / "edged" / "model" / "builtin" / "windturbine-v1"

FEATURES = ["roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage"]
STATISTICS = ("mean", "std", "raw_std", "thresholds")

VERIFY_BATCH_SIZES = {1: 40, 2: 20, 7: 8, 64: 4, 256: 4}
VERIFY_SEED = 17
# Anomalies reach a few hundred after normalisation, hence the wide distributions.
VERIFY_KINDS = ("normal", "normal_x10", "normal_x100", "normal_x1000", "constant")
CONSTANT_LEVELS = (0.0, 1.0, -1.0, 5.0, -20.0, 300.0)
GOLDEN_SEED = 2021
# (distribution, count) of the golden windows: mostly healthy-looking, some anomalous.
GOLDEN_MIX = (("normal", 8), ("normal_x10", 5), ("normal_x100", 5), ("constant", 6))


def _torch() -> ModuleType:
    """torch, imported when the conversion needs it: `--help` and a mistyped argument
    work without it (the device install and edged-cloud without [train] have none)."""
    try:
        import torch
    except ImportError as exc:
        raise SystemExit("convert_reference needs torch: pip install 'edged-cloud[train]'"
                         ) from exc
    return torch


def load_model(path: Path) -> torch.nn.Module:
    # The workshop pickled the whole nn.Sequential, not a state_dict, so weights_only
    # loading cannot rebuild it; the file is a vetted local input.
    torch = _torch()
    pickled = torch.load(path, map_location="cpu", weights_only=False)
    # Its weights in the one definition of the architecture: a pickle that is not the
    # reference autoencoder fails here, naming the layers that differ.
    model = autoencoder()
    model.load_state_dict(pickled.state_dict(), strict=True)
    return model.eval()  # Dropout must be the identity at inference


def sample_windows(rng: np.random.Generator, kind: str, count: int) -> np.ndarray:
    shape = (count, *WINDOW_SHAPE)
    if kind == "constant":
        # A flat sensor (stuck value) gives a constant window; a spread of levels checks
        # the bias path far from zero as well as at zero. Distinct while there are enough,
        # so that a small golden set holds no duplicate windows.
        levels = rng.choice(CONSTANT_LEVELS, size=count, replace=count > len(CONSTANT_LEVELS))
        return np.broadcast_to(levels[:, None, None, None], shape).astype(np.float32)
    scale = {"normal": 1.0, "normal_x10": 10.0, "normal_x100": 100.0, "normal_x1000": 1000.0}
    return (rng.standard_normal(shape) * scale[kind]).astype(np.float32)


def verify(model: torch.nn.Module, session: ort.InferenceSession) -> dict[str, np.ndarray]:
    """Per distribution, one row per window: (max abs difference, largest |output|)."""
    rng = np.random.default_rng(VERIFY_SEED)
    errors = {}
    for kind in VERIFY_KINDS:
        rows = []
        for batch, repeats in VERIFY_BATCH_SIZES.items():
            for _ in range(repeats):
                windows = sample_windows(rng, kind, batch)
                expected = torch_outputs(model, windows)
                actual = session.run(["output"], {"input": windows})[0]
                rows.append(window_errors(expected, actual))
        errors[kind] = np.concatenate(rows)
    return errors


def report(errors: dict[str, np.ndarray]) -> float:
    """Print the differences per distribution; return the worst scaled difference."""
    print(f"{'inputs':<14}{'windows':>8}{'max abs diff':>15}{'max rel diff':>15}")
    for kind, rows in (*errors.items(), ("all", np.concatenate(list(errors.values())))):
        abs_diff, magnitude = rows[:, 0], rows[:, 1]
        # Relative to the window's largest output: element-wise ratios blow up on the
        # outputs that happen to sit near zero and say nothing about precision.
        rel = abs_diff / np.maximum(magnitude, np.finfo(np.float32).tiny)
        print(f"{kind:<14}{len(rows):>8}{abs_diff.max():>15.3e}{rel.max():>15.3e}")
    return scaled_error(np.concatenate(list(errors.values())))


def golden_windows() -> np.ndarray:
    rng = np.random.default_rng(GOLDEN_SEED)
    return np.concatenate([sample_windows(rng, kind, n) for kind, n in GOLDEN_MIX])


def load_statistics(source: Path) -> dict[str, list[float]]:
    stats = {}
    for name in STATISTICS:
        values = np.load(source / f"{name}.npy", allow_pickle=False)
        if values.shape != (len(FEATURES),) or not np.all(np.isfinite(values)):
            raise ValueError(f"{name}.npy: expected {len(FEATURES)} finite values")
        # float64 -> Python float is exact and json.dumps round-trips it exactly.
        stats[name] = [float(v) for v in values.astype(np.float64)]
    return stats


def build_manifest(stats: dict[str, list[float]], files: dict[str, bytes]) -> dict:
    tensor = {"dtype": "float32", "shape": [None, *WINDOW_SHAPE]}
    return {
        "name": "windturbine",
        "version": 1,
        "format": "onnx",
        "model": "model.onnx",
        "inputs": [{"name": "input", **tensor}],
        "outputs": [{"name": "output", **tensor}],
        "preprocessing": {
            "type": "windturbine",
            "features": FEATURES,
            "buffer": 500,
            "window": 100,
            "step": 10,
            "wavelet": "db6",
            "max_level": 5,
            "threshold_approximation": True,
            **stats,
        },
        "golden": "golden.npz",
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in files.items()},
        "source": (
            "Converted from the AWS SageMaker Edge Manager wind-turbine workshop model "
            "(MIT-0) by cloud_tools/edged_cloud/convert_reference.py"
        ),
    }


ATTRIBUTION = """\
# Attribution

The model and statistics come from the AWS SageMaker Edge Manager wind-turbine workshop
(model.pth, mean.npy, std.npy, raw_std.npy, thresholds.npy), MIT-0 licence.
cloud_tools/edged_cloud/convert_reference.py converted them into model.onnx, golden.npz and
manifest.json. The graph in model.onnx is the exported network with its transposed
convolutions rewritten as convolutions (cloud_tools/edged_cloud/graph_rewrite.py): the
same weights, swapped and flipped, and the same maths. golden.npz holds PyTorch's outputs
of the original network.
"""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        default=DEFAULT_SOURCE,
        help="folder with model.pth and the .npy statistics",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder to write the converted model into"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch = _torch()
    model = load_model(args.source / "model.pth")
    stats = load_statistics(args.source)
    model_bytes = export_onnx(model).SerializeToString()
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])

    print(f"ONNX Runtime {ort.__version__} vs torch {torch.__version__}, CPU")
    worst = report(verify(model, session))
    if worst > TOLERANCE:
        print(
            f"FAILED: abs diff / max(1, window's largest |output|) = {worst:.3e} > {TOLERANCE:g}",
            file=sys.stderr,
        )
        return 1
    print(
        f"OK: abs diff <= {TOLERANCE:g} * max(1, window's largest |output|) "
        f"(worst ratio {worst:.3e})"
    )

    inputs = golden_windows()
    golden = npz_bytes({"inputs": inputs, "outputs": torch_outputs(model, inputs)})
    files = {"model.onnx": model_bytes, "golden.npz": golden}
    manifest = build_manifest(stats, files)

    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (args.out / name).write_bytes(data)
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (args.out / "ATTRIBUTION.md").write_text(ATTRIBUTION)
    for name in (*files, "manifest.json", "ATTRIBUTION.md"):
        print(f"wrote {args.out / name} ({(args.out / name).stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
