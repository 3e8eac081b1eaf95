"""The agent's loaded models: LoadModel/UnLoadModel/ListModels/DescribeModel and the
ONNX Runtime session each Predict runs.

A model is a directory under one of the configured model roots, in one of two layouts:

- edged's model package (``manifest.json`` + the model file, see :mod:`edged.model.package`);
  the manifest's SHA-256 of every file is checked when ``verify_models`` is on;
- a directory holding exactly one ``*.onnx`` file and no manifest.

Tensor metadata (name, data type, shape with -1 for a dynamic dimension) is read from
the ONNX session in both cases: it is what the model really takes.

Loading runs in a worker thread (hashing and session creation take time); the registry
is guarded by a lock, and a name is reserved while its model loads, so two LoadModel
calls for one name cannot both succeed. An unloaded model's session stays alive until
the Predict calls already running on it finish (they hold a reference).
"""

from __future__ import annotations

import errno
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edged.agent.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from edged.agent.memory import FALLBACK, Footprint, measure_footprint
from edged.base.errors import ModelError
from edged.model.package import MANIFEST, read_manifest
from edged.model.session import open_session

NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
MAX_NAME = 255
#: Longest model url: Linux's PATH_MAX (a longer one names no directory, and the calls
#: that look it up fail with ENAMETOOLONG).
MAX_URL = 4096

#: The API's DataType enum values, by numpy dtype name (FLOAT16 included).
DATA_TYPES: dict[str, int] = {"uint8": 0, "int16": 1, "int32": 2, "int64": 3,
                              "float16": 4, "float32": 5, "float64": 6}
DTYPE_OF: dict[int, np.dtype] = {v: np.dtype(k) for k, v in DATA_TYPES.items()}
#: ONNX Runtime's type strings for the same types.
_ORT_TYPES: dict[str, str] = {"tensor(uint8)": "uint8", "tensor(int16)": "int16",
                              "tensor(int32)": "int32", "tensor(int64)": "int64",
                              "tensor(float16)": "float16", "tensor(float)": "float32",
                              "tensor(double)": "float64"}
_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the API describes it."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @property
    def data_type(self) -> int:
        return DATA_TYPES[self.dtype.name]


@dataclass(frozen=True)
class LoadedModel:
    name: str
    url: str  # as the client sent it: ListModels gives it back unchanged
    directory: Path
    file: Path
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    session: Any  # onnxruntime.InferenceSession; its run() is thread-safe
    #: Working memory per input byte, measured when loaded (edged.agent.memory).
    footprint: Footprint = FALLBACK

    def run(self, feeds: dict[str, np.ndarray], options: Any = None) -> list[np.ndarray]:
        """Run the model (blocking; call from a worker thread)."""
        return self.session.run([o.name for o in self.outputs], feeds, options)


def check_name(name: str) -> None:
    if not name:
        raise InvalidArgument("model name is empty")
    if len(name) > MAX_NAME or not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid model name {name[:80]!r}: it must match ^[a-zA-Z0-9](-*[a-zA-Z0-9])*$ "
            f"(letters, digits and inner hyphens, at most {MAX_NAME} characters)")


class ModelRegistry:
    """The models loaded by name; every method is thread-safe."""

    def __init__(self, roots: list[Path], *, max_models: int = 16, session_threads: int = 1,
                 verify: bool = True) -> None:
        self.roots = [Path(os.path.realpath(root)) for root in roots]
        self.max_models = max_models
        self.session_threads = session_threads
        self.verify = verify
        self._lock = threading.Lock()
        self._models: dict[str, LoadedModel] = {}
        self._loading: set[str] = set()

    # -- paths ------------------------------------------------------------------------------

    def resolve(self, url: str) -> Path:
        """The model directory ``url`` names, which must lie under a model root.

        A relative url resolves against the first root; ``file://`` is accepted. Any
        ``..`` is refused outright, and so is a path that leaves every root once
        symbolic links are followed.
        """
        raw = url.removeprefix("file://")
        if not raw.strip():
            raise InvalidArgument("model url is empty")
        if len(raw) > MAX_URL:
            raise InvalidArgument(f"model url of {len(raw)} characters is longer than a "
                                  f"path may be ({MAX_URL})")
        if "\0" in raw:
            raise InvalidArgument("model url contains a NUL byte")
        if ".." in PurePosixPath(raw).parts:
            raise InvalidArgument(f"model url {url!r}: '..' is not allowed")
        path = Path(raw) if raw.startswith("/") else self.roots[0] / raw
        real = self._inside_roots(path, f"model url {url!r}")
        try:
            os.stat(real)
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                # A name over NAME_MAX, a directory the agent may not search, ...
                raise InvalidArgument(f"model url {url[:200]!r}: cannot look up {real}: "
                                      f"{exc.strerror}") from None
        if not real.is_dir():
            # The published agent.proto answers "model doesn't exist at the url" NOT_FOUND.
            raise NotFound(f"model url {url!r}: no such directory {real}"
                           + ("" if raw.startswith("/") else
                              f" (a relative url is looked up under the first model "
                              f"root, {self.roots[0]})"), reason="no_model_at_url")
        self._check_entries(real)
        return real

    def _inside_roots(self, path: Path, what: str) -> Path:
        """``path`` with every link followed, which must lie under a model root."""
        real = Path(os.path.realpath(path))
        if not any(real == root or real.is_relative_to(root) for root in self.roots):
            roots = ", ".join(str(root) for root in self.roots)
            raise InvalidArgument(f"{what} leads to {real}, which is not under a model root "
                                  f"({roots})", reason="outside_model_roots")
        return real

    def _check_entries(self, directory: Path) -> None:
        """Every file the agent may open from a model directory (the manifest, the files
        it lists, the model) is an entry of it: a link among them must not lead out of
        the roots, or LoadModel would read (and run) any file the agent can."""
        try:
            entries = [Path(entry.path) for entry in os.scandir(directory)
                       if entry.is_symlink()]
        except OSError as exc:
            raise InvalidArgument(f"cannot list model directory {directory}: "
                                  f"{exc.strerror}") from None
        for link in entries:
            self._inside_roots(link, f"{link} (a symbolic link in the model directory)")

    # -- loading ----------------------------------------------------------------------------

    def load(self, url: str, name: str, *, shown_url: str | None = None) -> LoadedModel:
        """Load the model at ``url`` as ``name`` (blocking: call from a worker thread).
        ``shown_url``: the url ListModels gives back, if not ``url`` (a model restored
        from its directory keeps the url its client sent)."""
        check_name(name)
        with self._lock:
            if name in self._models or name in self._loading:
                raise AlreadyExists(f"a model named {name!r} is already loaded")
            if len(self._models) + len(self._loading) >= self.max_models:
                raise ResourceExhausted(
                    f"{self.max_models} models are loaded (max_loaded_models); unload one "
                    "first")
            self._loading.add(name)
        try:
            model = self._load(url, name, shown_url or url)
            with self._lock:
                self._models[name] = model
            return model
        finally:
            with self._lock:
                self._loading.discard(name)

    def _load(self, url: str, name: str, shown_url: str) -> LoadedModel:
        directory = self.resolve(url)
        file, declared = self._model_file(directory)
        file = self._inside_roots(file, f"model file {file}")  # as ONNX Runtime will open it
        try:
            session = open_session(file, threads=self.session_threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise FailedPrecondition(
                f"model {url!r}: ONNX Runtime cannot load {file.name}: "
                f"{_first_line(exc)}") from exc
        inputs = tuple(_info(arg, "input", url) for arg in session.get_inputs())
        outputs = tuple(_info(arg, "output", url) for arg in session.get_outputs())
        if declared is not None:
            names = [spec.name for spec in declared]
            if names != [i.name for i in inputs]:
                raise FailedPrecondition(
                    f"model {url!r}: the manifest's inputs {names} do not match the "
                    f"model's {[i.name for i in inputs]}")
        footprint = measure_footprint(file, inputs, self.session_threads)
        return LoadedModel(name, shown_url, directory, file, inputs, outputs, session,
                           footprint)

    def _model_file(self, directory: Path) -> tuple[Path, list | None]:
        if (directory / MANIFEST).is_file():
            try:
                manifest = read_manifest(directory, verify=self.verify)
            except ModelError as exc:
                raise FailedPrecondition(f"model package is broken: {exc}") from None
            return directory / manifest.model, manifest.inputs
        candidates = sorted(p for p in directory.glob("*.onnx") if p.is_file())
        if len(candidates) == 1:
            return candidates[0], None
        if not candidates:
            raise NotFound(f"{directory} holds no model: neither {MANIFEST} nor an "
                           "*.onnx file", reason="no_model_at_url")
        raise InvalidArgument(f"{directory} holds {len(candidates)} *.onnx files and no "
                              f"{MANIFEST} to say which is the model")

    # -- the rest ---------------------------------------------------------------------------

    def unload(self, name: str) -> None:
        with self._lock:
            if self._models.pop(name, None) is None:
                raise NotFound(f"no model named {name!r} is loaded")

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise NotFound(f"no model named {name!r} is loaded")
        return model

    def list(self) -> list[LoadedModel]:
        with self._lock:
            return sorted(self._models.values(), key=lambda m: m.name)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


def _info(arg: Any, role: str, url: str) -> TensorInfo:
    dtype = _ORT_TYPES.get(arg.type)
    if dtype is None:
        raise FailedPrecondition(
            f"model {url!r}: {role} {arg.name!r} has type {arg.type}, which the Edge Agent "
            f"API cannot carry (it has {', '.join(DATA_TYPES)})")
    shape = tuple(d if isinstance(d, int) and 0 <= d <= _INT32_MAX else -1
                  for d in (arg.shape or ()))
    return TensorInfo(arg.name, np.dtype(dtype), shape)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:500] if text else type(exc).__name__
