"""Inference backend ``onnx``: ONNX Runtime on the CPU, one batched call per round."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Literal

import numpy as np
import structlog
from pydantic import Field

from edged import hookimpl
from edged.base.errors import ModelError
from edged.model.package import read_manifest, resolve_model_path
from edged.model.session import open_session
from edged.model.store import STORE_PREFIX, resolve_store_model
from edged.plugin.components import BuildContext
from edged.plugin.config import InferenceConfig
from edged.plugin.events import ModelRef
from edged.plugin.registry import ComponentType

log = structlog.get_logger("edged.onnx")


class OnnxConfig(InferenceConfig):
    type: Literal["onnx"]
    model: str = Field(
        "builtin:windturbine-v1",
        description="A model directory (manifest.json + model), builtin:NAME, or "
        "store:NAME (the model store's current slot, seeded with the built-in model of "
        "that name on first start).",
    )
    threads: int = Field(
        1, ge=1, le=64,
        description="ONNX Runtime intra-op threads; 1 leaves the other cores to the rest.",
    )
    max_batch: int = Field(
        8, ge=1,
        description="Windows per model call; bigger rounds are split. Small batches stay "
        "in the CPU cache: for the reference model 8 is as fast per window as 16 or 1000, "
        "and ONNX Runtime's arena keeps what the largest call needed (about 5 MB at 8, "
        "9 at 16).",
    )
    verify: bool = Field(True, description="Check every file's SHA-256 against the manifest.")


class OnnxBackend:
    """Loads the model when started; ``predict`` is thread-safe (ONNX Runtime sessions
    may be run from several threads)."""

    def __init__(self, config: OnnxConfig, ctx: BuildContext | None = None) -> None:
        self.config = config
        self._seed = None  # (store, built-in dir): seed the store when started
        if config.model.startswith(STORE_PREFIX):
            if ctx is None:
                raise ModelError(f"{config.model}: a store model needs the state directory")
            self.directory, store, builtin = resolve_store_model(config.model, ctx.state_dir)
            self._seed = (store, builtin) if builtin is not None else None
        else:
            self.directory = resolve_model_path(config.model)
        manifest = read_manifest(self.directory, verify=config.verify)
        self.manifest = manifest.model_dump()
        self.model = ModelRef(manifest.name, manifest.version)
        self._file = self.directory / manifest.model
        self._session = None
        self._input = manifest.inputs[0]

    async def __aenter__(self) -> OnnxBackend:
        if self._seed is not None:
            store, builtin = self._seed
            try:
                # Same files as what was built: loading from either is the same model.
                await asyncio.to_thread(store.seed, builtin)
            except (OSError, ModelError) as exc:  # a read-only disk must not stop inference
                log.warning("model_store_seed_failed", store=str(store.root), error=str(exc))
        self.load()
        log.info("model_loaded", model=self.model.name, version=self.model.version,
                 directory=str(self.directory))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._session = None

    def for_model(self, directory: Path) -> OnnxBackend:
        """A backend configured like this one for the model in ``directory``, not loaded:
        how the hot swap stages a new model. Hashes its files: call from a thread."""
        return OnnxBackend(self.config.model_copy(update={"model": str(directory)}))

    def load(self) -> None:
        try:
            session = open_session(self._file, threads=self.config.threads)
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"{self._file}: ONNX Runtime cannot load it: {exc}") from exc
        declared = session.get_inputs()[0]
        if declared.name != self._input.name or len(declared.shape) != len(self._input.shape):
            raise ModelError(f"{self._file}: model input {declared.name}{declared.shape} does "
                             f"not match the manifest's {self._input.name}{self._input.shape}")
        self._session = session
        self._input_name = declared.name
        self._dtype = np.dtype(self._input.dtype)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self._session is None:
            raise ModelError("model is not loaded (backend not started)")
        x = np.ascontiguousarray(x, dtype=self._dtype)
        step = self.config.max_batch
        if len(x) <= step:
            return self._session.run(None, {self._input_name: x})[0]
        return np.concatenate([self._session.run(None, {self._input_name: x[i:i + step]})[0]
                               for i in range(0, len(x), step)])


def _build(config: OnnxConfig, ctx: BuildContext) -> OnnxBackend:
    return OnnxBackend(config, ctx)


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType.inference("onnx", OnnxConfig, _build,
                                    "ONNX Runtime on the CPU, batching all turbines into one "
                                    "call", hot_swap=True)]
