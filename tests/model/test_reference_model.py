"""The committed default model (windturbine v1) against its manifest and golden data.

Needs only onnxruntime, onnx and numpy: the device side never installs torch.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO_ROOT / "edged" / "model" / "builtin" / "windturbine-v1"
ORIGINAL_DIR = REPO_ROOT.parent / "shared" / "reference" / "windturbine" / "original"
STATISTICS = ("mean", "std", "raw_std", "thresholds")

# The oldest ONNX Runtime edged supports (1.18) reads IR versions up to 10 and opsets up to 21.
MAX_IR_VERSION = 10
MAX_OPSET = 21


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def session(manifest: dict) -> ort.InferenceSession:
    return ort.InferenceSession(
        str(MODEL_DIR / manifest["model"]), providers=["CPUExecutionProvider"]
    )


@pytest.fixture(scope="module")
def golden(manifest: dict) -> dict[str, np.ndarray]:
    with np.load(MODEL_DIR / manifest["golden"], allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def assert_close(actual: np.ndarray, expected: np.ndarray, tolerance: float) -> None:
    """Absolute tolerance for windows of unit scale, relative for larger windows.

    Different summation orders put float32 results a few ulps of the window's largest
    value apart, so a large (anomalous) window gets a proportionally larger bound.
    """
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype == np.float32
    axes = tuple(range(1, expected.ndim))
    diff = np.abs(actual.astype(np.float64) - expected).max(axis=axes)
    scale = np.maximum(np.abs(expected.astype(np.float64)).max(axis=axes), 1.0)
    worst = int(np.argmax(diff / scale))
    assert diff[worst] <= tolerance * scale[worst], (
        f"window {worst}: max abs diff {diff[worst]:.3e}, largest |output| {scale[worst]:.3e}"
    )


def test_golden_data_is_a_real_batch(golden: dict[str, np.ndarray]) -> None:
    inputs, outputs = golden["inputs"], golden["outputs"]
    assert inputs.dtype == outputs.dtype == np.float32
    assert inputs.shape == outputs.shape
    assert inputs.shape[0] >= 16 and inputs.shape[1:] == (6, 10, 10)
    # Distinct windows, both healthy-sized and anomaly-sized, or the other tests prove little.
    assert len(np.unique(inputs.reshape(len(inputs), -1), axis=0)) == len(inputs)
    assert np.abs(inputs).max() > 50.0
    assert np.all(np.isfinite(outputs))


def test_model_reproduces_golden_outputs(
    session: ort.InferenceSession, golden: dict[str, np.ndarray]
) -> None:
    outputs = session.run(["output"], {"input": golden["inputs"]})[0]
    assert_close(outputs, golden["outputs"], 1e-5)


def test_batch_gives_the_same_results_as_one_by_one(
    session: ort.InferenceSession, golden: dict[str, np.ndarray]
) -> None:
    inputs = golden["inputs"]
    batched = session.run(["output"], {"input": inputs})[0]
    single = np.concatenate([session.run(["output"], {"input": w[None]})[0] for w in inputs])
    assert_close(single, batched, 1e-6)


def test_manifest_hashes_match_the_files(manifest: dict) -> None:
    assert {manifest["model"], manifest["golden"]} <= set(manifest["files"])
    for name, expected in manifest["files"].items():
        digest = hashlib.sha256((MODEL_DIR / name).read_bytes()).hexdigest()
        assert digest == expected, name


def test_manifest_identifies_the_model(manifest: dict) -> None:
    assert (manifest["name"], manifest["version"], manifest["format"]) == (
        "windturbine",
        1,
        "onnx",
    )
    assert manifest["preprocessing"]["features"] == [
        "roll",
        "pitch",
        "yaw",
        "wind_speed_rps",
        "rps",
        "voltage",
    ]


@pytest.mark.parametrize("kind", ["inputs", "outputs"])
def test_model_io_matches_manifest(
    session: ort.InferenceSession, manifest: dict, kind: str
) -> None:
    actual = session.get_inputs() if kind == "inputs" else session.get_outputs()
    declared = manifest[kind]
    assert [a.name for a in actual] == [d["name"] for d in declared]
    for arg, spec in zip(actual, declared, strict=True):
        assert spec["dtype"] == "float32" and arg.type == "tensor(float)"
        # A symbolic or missing first dimension is what makes batching possible.
        assert spec["shape"][0] is None and not isinstance(arg.shape[0], int)
        assert spec["shape"][1:] == [6, 10, 10] == list(arg.shape[1:])


def test_model_file_is_self_contained_and_valid(manifest: dict) -> None:
    path = MODEL_DIR / manifest["model"]
    model = onnx.load(str(path), load_external_data=False)
    external = [
        t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert external == []
    assert model.ir_version <= MAX_IR_VERSION
    assert {(o.domain or "ai.onnx") for o in model.opset_import} == {"ai.onnx"}
    assert all(o.version <= MAX_OPSET for o in model.opset_import)
    onnx.checker.check_model(model, full_check=True)


@pytest.mark.skipif(
    not ORIGINAL_DIR.is_dir(),
    reason=f"reference originals not present at {ORIGINAL_DIR}",
)
@pytest.mark.parametrize("name", STATISTICS)
def test_manifest_statistics_equal_the_originals(manifest: dict, name: str) -> None:
    original = np.load(ORIGINAL_DIR / f"{name}.npy", allow_pickle=False)
    assert original.dtype == np.float64
    # Exact equality: json round-trips float64 exactly, so any difference is a real change.
    assert manifest["preprocessing"][name] == original.tolist()
