"""Convert the wind-turbine workshop's PyTorch model into edged's default ONNX model.

Run from a source checkout (the default paths are relative to the repository root):

    python -m edged_cloud.convert_reference --source DIR --out DIR

Writes model.onnx, golden.npz, manifest.json and ATTRIBUTION.md into the output folder,
after checking ONNX Runtime against PyTorch on a few thousand windows.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort

if TYPE_CHECKING:
    import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "reference" / "windturbine" / "original"
DEFAULT_OUT = REPO_ROOT / "edged" / "model" / "builtin" / "windturbine-v1"

WINDOW_SHAPE = (6, 10, 10)
FEATURES = ["roll", "pitch", "yaw", "wind_speed_rps", "rps", "voltage"]
STATISTICS = ("mean", "std", "raw_std", "thresholds")

# Opset 18 is what torch's dynamo exporter emits natively, so no version converter runs
# over the graph; every ONNX Runtime since 1.14 implements it.
OPSET = 18
# torch stamps IR 10, which ONNX Runtime 1.17 and older refuse to load (checked with
# 1.17.3); the graph uses nothing newer than IR 8, the IR version of opset 18, so pinning
# it lets older device runtimes load the model too.
IR_VERSION = 8

# ONNX Runtime and PyTorch sum convolutions in different orders, so their float32 results
# differ by a few ulps of the window's largest output. A fixed absolute bound would fail
# for large (anomalous) windows without any real disagreement, so the bound is 1e-4 at
# unit scale and grows with the window's magnitude beyond that.
TOLERANCE = 1e-4
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
    work without it (the device install and edged-cloud without [torch] have none)."""
    try:
        import torch
    except ImportError as exc:
        raise SystemExit("convert_reference needs torch: pip install 'edged-cloud[torch]'"
                         ) from exc
    return torch


def load_model(path: Path) -> torch.nn.Module:
    # The workshop pickled the whole nn.Sequential, not a state_dict, so weights_only
    # loading cannot rebuild it; the file is a vetted local input.
    torch = _torch()
    model = torch.load(path, map_location="cpu", weights_only=False)
    return model.eval()  # Dropout must be the identity at inference


def export_onnx(model: torch.nn.Module) -> onnx.ModelProto:
    torch = _torch()
    example = torch.zeros((2, *WINDOW_SHAPE), dtype=torch.float32)
    program = torch.onnx.export(
        model,
        (example,),
        None,
        input_names=["input"],
        output_names=["output"],
        opset_version=OPSET,
        dynamo=True,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
        verbose=False,
    )
    proto = program.model_proto
    _make_portable(proto)
    return proto


def _make_portable(proto: onnx.ModelProto) -> None:
    """Strip exporter debug metadata and pin the IR version, in place."""
    # Node metadata carries stack traces with local paths: noise that changes the bytes
    # from one machine to the next, and a field older IR versions do not have.
    for node in proto.graph.node:
        del node.metadata_props[:]
    for value in (*proto.graph.input, *proto.graph.output, *proto.graph.value_info):
        del value.metadata_props[:]
    for tensor in proto.graph.initializer:
        del tensor.metadata_props[:]
        if tensor.data_location != onnx.TensorProto.DEFAULT:
            raise RuntimeError(f"initializer {tensor.name} is stored outside the model")
    del proto.metadata_props[:]
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto, full_check=True)


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


def torch_outputs(model: torch.nn.Module, windows: np.ndarray) -> np.ndarray:
    torch = _torch()
    with torch.inference_mode():
        return model(torch.from_numpy(np.ascontiguousarray(windows))).numpy()


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


def window_errors(expected: np.ndarray, actual: np.ndarray) -> np.ndarray:
    axes = tuple(range(1, expected.ndim))
    abs_diff = np.abs(actual.astype(np.float64) - expected).max(axis=axes)
    magnitude = np.abs(expected.astype(np.float64)).max(axis=axes)
    return np.stack([abs_diff, magnitude], axis=1)


def report(errors: dict[str, np.ndarray]) -> float:
    """Print the differences per distribution; return the worst scaled difference."""
    print(f"{'inputs':<14}{'windows':>8}{'max abs diff':>15}{'max rel diff':>15}")
    for kind, rows in (*errors.items(), ("all", np.concatenate(list(errors.values())))):
        abs_diff, magnitude = rows[:, 0], rows[:, 1]
        # Relative to the window's largest output: element-wise ratios blow up on the
        # outputs that happen to sit near zero and say nothing about precision.
        rel = abs_diff / np.maximum(magnitude, np.finfo(np.float32).tiny)
        print(f"{kind:<14}{len(rows):>8}{abs_diff.max():>15.3e}{rel.max():>15.3e}")
    rows = np.concatenate(list(errors.values()))
    return float((rows[:, 0] / np.maximum(rows[:, 1], 1.0)).max())


def golden_windows() -> np.ndarray:
    rng = np.random.default_rng(GOLDEN_SEED)
    return np.concatenate([sample_windows(rng, kind, n) for kind, n in GOLDEN_MIX])


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    # np.savez stamps the current time into the zip entries; a fixed timestamp keeps the
    # file, and so the manifest's hash, identical between runs.
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with archive.open(info, "w", force_zip64=True) as entry:
                np.lib.format.write_array(entry, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


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
manifest.json.
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
    # Without torchvision installed the exporter warns about its ops on every run; they
    # are irrelevant here and would bury the report.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
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
