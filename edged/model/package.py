"""Model packages: a directory holding a model file and its manifest.

The manifest says what the model is (name, a version that only goes up), what it takes
and gives (tensor schema), the preprocessing it expects with its parameters, golden
input/output pairs, and the SHA-256 of every file. The model store's slots and the
signed bundles of model updates hold exactly this layout.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edged.base.durable import read_at_most
from edged.base.errors import ModelError
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads

BUILTIN_PREFIX = "builtin:"
MANIFEST = "manifest.json"
#: Largest manifest read: it is parsed whole, and a real one is a few kilobytes.
MAX_MANIFEST_BYTES = 1 << 20


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    dtype: Literal["float32", "float64", "int64", "int32", "uint8"]
    shape: list[int | None]


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="allow")  # newer writers may add fields

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
    version: int = Field(ge=1)
    format: Literal["onnx"]
    model: str
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    golden: str | None = None
    files: dict[str, str] = Field(default_factory=dict)

    @field_validator("model", "golden")
    @classmethod
    def _plain_file_name(cls, value: str | None) -> str | None:
        # A manifest names files inside its own directory, never elsewhere.
        if value is not None and (Path(value).name != value or value in {".", ".."}):
            raise ValueError(f"must be a plain file name, got {value!r}")
        return value


def builtin_root() -> Path:
    """The folder of the models shipped with edged, package data: ``builtin:NAME`` is
    ``NAME`` here (a data folder beside the code that reads it, not a package)."""
    return Path(str(files("edged.model") / "builtin"))


def resolve_model_path(spec: str) -> Path:
    """``builtin:NAME`` -> the model shipped with edged; anything else is a path."""
    if spec.startswith(BUILTIN_PREFIX):
        name = spec.removeprefix(BUILTIN_PREFIX)
        root = builtin_root()
        path = root / name
        if not name or Path(name).name != name or not path.is_dir():
            shipped = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise ModelError(f"no built-in model {name!r} (built in: {', '.join(shipped)})")
        return path
    return Path(spec).expanduser()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_of(data: bytes) -> ModelManifest:
    """A manifest from its bytes (a file's, read with at most one byte over the cap):
    JsonError or ValidationError when it is not one."""
    return ModelManifest.model_validate(strict_loads(data, max_bytes=MAX_MANIFEST_BYTES))


def parse_manifest(path: Path) -> ModelManifest:
    """Read and validate one manifest file (no file checks). Repeated keys are refused:
    a manifest that lists a file twice must not mean whichever entry a reader keeps."""
    try:
        return manifest_of(read_at_most(path, MAX_MANIFEST_BYTES))
    except FileNotFoundError:
        raise ModelError(f"{path}: no such manifest") from None
    except (OSError, JsonError) as exc:
        raise ModelError(f"{path}: cannot read: {exc}") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ModelError(f"{path}: '{key}': {first['msg']}") from None


def read_manifest(directory: Path, verify: bool = True) -> ModelManifest:
    """Read and check ``directory``'s manifest; with ``verify``, every listed file's
    hash must match and the model file must be listed."""
    path = directory / MANIFEST
    if not path.is_file():
        raise ModelError(f"{directory}: no {MANIFEST} (not a model directory)")
    manifest = parse_manifest(path)
    if not (directory / manifest.model).is_file():
        raise ModelError(f"{directory}: model file {manifest.model!r} is missing")
    if verify:
        if manifest.model not in manifest.files:
            raise ModelError(f"{path}: 'files' has no hash for the model {manifest.model!r}")
        for name, expected in manifest.files.items():
            file = directory / name
            if Path(name).name != name or not file.is_file():
                raise ModelError(f"{path}: listed file {name!r} is missing")
            if sha256_file(file) != expected:
                raise ModelError(f"{directory / name}: SHA-256 does not match the manifest")
    return manifest
