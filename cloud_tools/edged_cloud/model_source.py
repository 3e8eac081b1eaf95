"""What ``optimize`` and ``package`` read: a training output, an optimise output or a model
directory, as one ``ModelSource``.

- a training output (docs/cloud.md, "train"): ``model.onnx``, ``preprocessing.json``,
  ``golden.npz`` and ``validation.npz`` (held-out windows), ``report.json`` (name, version);
- an optimise output: the same layout, the model optimised, plus ``optimize.json``;
- a model directory (``manifest.json`` + the model, e.g. ``builtin:windturbine-v1`` or a
  store slot): its manifest gives name, version, schema and preprocessing, its golden
  inputs serve as held-out windows.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged_cloud.errors import BadInput, NotFound

MODEL = "model.onnx"
PREPROCESSING = "preprocessing.json"
GOLDEN = "golden.npz"
VALIDATION = "validation.npz"
REPORT = "report.json"
OPTIMIZE_REPORT = "optimize.json"
#: The JSON files read whole here are a few kilobytes; a training report with per-epoch
#: losses of thousands of epochs stays well under this.
MAX_JSON_BYTES = 4 << 20
#: Windows unpacked from one .npz (each array is inflated whole by numpy).
MAX_WINDOWS_BYTES = 1 << 30


@dataclass
class ModelSource:
    directory: Path
    name: str
    version: int | None
    model: Path
    preprocessing: dict[str, Any]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    #: Held-out windows (model inputs), for golden pairs: golden.npz's inputs.
    golden_inputs: np.ndarray | None = None
    #: Held-out decisions for the quality gate: validation.npz's inputs and labels.
    validation: np.ndarray | None = None
    labels: np.ndarray | None = None
    #: Manifest fields carried over from a model directory (shadow, source, ...).
    extra: dict[str, Any] = field(default_factory=dict)

    def held_out(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Windows the model did not train on, and their labels where known."""
        if self.validation is not None:
            return self.validation, self.labels
        if self.golden_inputs is not None:
            return self.golden_inputs, None
        raise BadInput(f"{self.directory}: no held-out windows ({VALIDATION} or {GOLDEN})")


def read_json(path: Path) -> Any:
    from edged.base.durable import read_at_most
    from edged.base.strict_json import JsonError, loads

    try:
        return loads(read_at_most(path, MAX_JSON_BYTES), max_bytes=MAX_JSON_BYTES)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except (OSError, JsonError) as exc:
        raise BadInput(f"{path}: cannot read: {exc}") from None


def read_arrays(path: Path, *names: str, optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Arrays ``names`` (required) and ``optional`` from an .npz, unpacked size bounded
    before numpy inflates them, never unpickling."""
    try:
        with zipfile.ZipFile(path) as archive:
            if sum(i.file_size for i in archive.infolist()) > MAX_WINDOWS_BYTES:
                raise BadInput(f"{path}: unpacks to more than {MAX_WINDOWS_BYTES} bytes")
        with np.load(path, allow_pickle=False) as data:
            missing = [n for n in names if n not in data.files]
            if missing:
                raise BadInput(f"{path}: no array {missing[0]!r} (has {', '.join(data.files)})")
            return {n: data[n] for n in (*names, *optional) if n in data.files}
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise BadInput(f"{path}: not a numpy .npz archive: {exc}") from None


def windows_of(path: Path, array: np.ndarray, shape: list[int | None]) -> np.ndarray:
    """``array`` as model inputs of the model's input ``shape`` (batch first), finite."""
    want = tuple(shape[1:])
    if array.ndim != len(shape) or tuple(array.shape[1:]) != want:
        raise BadInput(f"{path}: windows of shape {array.shape}, the model takes "
                       f"(n, {', '.join(map(str, want))})")
    if not np.issubdtype(array.dtype, np.floating) or not np.isfinite(array).all():
        raise BadInput(f"{path}: windows must be finite floating-point numbers")
    if len(array) == 0:
        raise BadInput(f"{path}: no windows")
    return array


def _specs(model: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The manifest's tensor specs of an ONNX model file: a named dimension (the batch)
    is dynamic (null)."""
    from edged.model.session import open_session

    try:
        session = open_session(model)
    except Exception as exc:  # onnxruntime's errors are untyped
        raise BadInput(f"{model}: ONNX Runtime cannot load it: {exc}") from None
    dtypes = {"tensor(float)": "float32", "tensor(double)": "float64",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}

    def spec(arg: Any) -> dict[str, Any]:
        if arg.type not in dtypes:
            raise BadInput(f"{model}: tensor {arg.name!r} has type {arg.type}")
        return {"name": arg.name, "dtype": dtypes[arg.type],
                "shape": [d if isinstance(d, int) else None for d in arg.shape]}

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def read_source(directory: Path) -> ModelSource:
    """The model in ``directory`` (one of the three layouts above, ``builtin:NAME`` too)."""
    from edged.base.errors import ModelError
    from edged.model.package import MANIFEST, parse_manifest, resolve_model_path

    try:
        directory = resolve_model_path(str(directory))
    except ModelError as exc:
        raise NotFound(str(exc)) from None
    if not directory.is_dir():
        raise NotFound(f"{directory}: no such directory")
    if (directory / MANIFEST).is_file():
        try:
            manifest = parse_manifest(directory / MANIFEST)
        except ModelError as exc:
            raise BadInput(str(exc)) from None
        data = manifest.model_dump(mode="json", exclude_none=True)
        source = ModelSource(
            directory, manifest.name, manifest.version, directory / manifest.model,
            dict(manifest.preprocessing), data["inputs"], data["outputs"],
            extra={k: v for k, v in data.items() if k not in {
                "name", "version", "format", "model", "inputs", "outputs",
                "preprocessing", "golden", "files"}})
        if manifest.golden is not None:
            source.golden_inputs = read_arrays(directory / manifest.golden, "inputs")["inputs"]
    elif (directory / PREPROCESSING).is_file():
        preprocessing = read_json(directory / PREPROCESSING)
        if not isinstance(preprocessing, dict):
            raise BadInput(f"{directory / PREPROCESSING}: not a JSON object")
        about: dict[str, Any] = {}
        for name in (REPORT, OPTIMIZE_REPORT):
            if (directory / name).is_file():
                found = read_json(directory / name)
                about = found.get("model", found) if isinstance(found, dict) else {}
                break
        version = about.get("version")
        model = directory / MODEL
        if not model.is_file():
            raise NotFound(f"{directory}: no {MODEL}")
        inputs, outputs = _specs(model)
        source = ModelSource(directory, str(about.get("name") or "windturbine"),
                             version if isinstance(version, int) else None, model,
                             preprocessing, inputs, outputs)
        if (directory / GOLDEN).is_file():
            source.golden_inputs = read_arrays(directory / GOLDEN, "inputs")["inputs"]
        if (directory / VALIDATION).is_file():
            found = read_arrays(directory / VALIDATION, "inputs", optional=("labels",))
            source.validation, source.labels = found["inputs"], found.get("labels")
    else:
        raise BadInput(f"{directory}: neither a training output ({PREPROCESSING}, {MODEL}) "
                       f"nor a model directory ({MANIFEST})")
    if not source.model.is_file():
        raise NotFound(f"{source.model}: the model file is missing")
    shape = source.inputs[0]["shape"]
    if source.golden_inputs is not None:
        source.golden_inputs = windows_of(directory / GOLDEN, source.golden_inputs, shape)
    if source.validation is not None:
        source.validation = windows_of(directory / VALIDATION, source.validation, shape)
        if source.labels is not None and source.labels.shape != (len(source.validation),):
            raise BadInput(f"{directory / VALIDATION}: {len(source.validation)} windows but "
                           f"labels of shape {source.labels.shape}")
    return source


def predict(model: Path, windows: np.ndarray, *, dtype: str = "float32", batch: int = 16,
            threads: int = 1) -> np.ndarray:
    """The model's first output for ``windows``, as the device's ``onnx`` backend computes
    it: the device's session factory, inputs cast to the manifest's dtype, ``batch``
    windows per call."""
    from edged.model.session import open_session

    session = open_session(model, threads=threads)
    name = session.get_inputs()[0].name
    x = np.ascontiguousarray(windows, dtype=np.dtype(dtype))
    return np.concatenate([session.run(None, {name: x[i:i + batch]})[0]
                           for i in range(0, len(x), batch)])
