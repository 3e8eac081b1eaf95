"""Hot swap: a new model into a running pipeline, between two decisions.

Stage into a new slot, load it, run its golden pairs, commit it as the store's current
slot, then replace the pipeline's (preprocessor, backend) pair in one assignment. Rounds
already running finish on the old model; the old backend is closed after them. Any
failure before the commit leaves the pipeline and the store's current slot untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from edged.components import Preprocessor
from edged.events import ModelRef
from edged.modelstore.errors import SwapError
from edged.modelstore.store import ModelStore, Slot
from edged.runtime.pipeline import Pipeline

log = structlog.get_logger("edged.modelstore")

#: Builds the preprocessor for a new model from its manifest (a dict).
PreprocessorFactory = Callable[[dict[str, Any]], Preprocessor]


@dataclass(frozen=True)
class SwapResult:
    slot: Slot
    old: ModelRef
    new: ModelRef
    preprocessor_rebuilt: bool


def check_golden(backend: Any) -> int:
    """Run the manifest's golden pairs through a loaded backend; raise SwapError if an
    output is off by more than float32 summation order explains. Returns the pairs run
    (0 without golden data). Blocking."""
    name = backend.manifest.get("golden")
    if not name:
        return 0
    with np.load(backend.directory / name, allow_pickle=False) as golden:
        x, y = golden["inputs"], golden["outputs"]
    out = np.asarray(backend.predict(x))
    if out.shape != y.shape:
        raise SwapError(f"{backend.directory}: golden output shape {out.shape}, "
                        f"expected {y.shape}")
    # A few ulps of each sample's largest value: another summation order, not another model.
    scale = np.maximum(np.abs(y).reshape(len(y), -1).max(axis=1), 1.0)
    error = np.abs(out - y).reshape(len(y), -1).max(axis=1)
    if (error > 1e-4 * scale).any():
        raise SwapError(f"{backend.directory}: golden pairs do not reproduce (worst error "
                        f"{float(error.max()):.3g})")
    return len(x)


def preprocessor_factory(registry: Any, config: Any, pipeline: str,
                         state_dir: Path) -> PreprocessorFactory:
    """The factory a running graph's pipeline uses, with its configured options."""
    from edged.components import BuildContext

    cfg = config.pipelines[pipeline].preprocessor
    factory = registry.component("preprocessor", cfg.type).factory
    ctx = BuildContext(name=pipeline, device_id=config.raw.device.id, state_dir=state_dir)
    return lambda manifest: factory(cfg, ctx, manifest)


def _compatible(old: Preprocessor, new: Preprocessor) -> None:
    # The ring buffers were sized by the old preprocessor and hold its row features.
    for key in ("inputs", "features", "history"):
        if getattr(old, key) != getattr(new, key):
            raise SwapError(f"the new model's preprocessing changes {key!r}: that needs a "
                            "reload (SIGHUP), not a hot swap")


async def swap_model(pipeline: Pipeline, model_dir: Path, store: ModelStore, *,
                     build_preprocessor: PreprocessorFactory | None = None) -> SwapResult:
    """Install ``model_dir`` (extracted and verified) into ``store`` and swap it into
    ``pipeline``. The previous slot stays as last-known-good."""
    from edged.builtin.onnx import OnnxBackend  # the swap builds ONNX backends

    old_pre, old_backend = pipeline.preprocessor, pipeline.backend
    if not isinstance(old_backend, OnnxBackend):
        raise SwapError(f"pipeline {pipeline.name!r} does not run an onnx backend")
    slot = await asyncio.to_thread(store.install, Path(model_dir))
    config = old_backend.config.model_copy(update={"model": str(slot.path)})
    new_backend = await asyncio.to_thread(OnnxBackend, config)  # hashes the files
    try:
        await asyncio.to_thread(new_backend.load)
        await asyncio.to_thread(check_golden, new_backend)
        new_pre = None
        if new_backend.manifest.get("preprocessing") != old_backend.manifest.get(
                "preprocessing"):
            if build_preprocessor is None:
                raise SwapError("the new model's preprocessing differs and no "
                                "preprocessor factory was given")
            new_pre = build_preprocessor(new_backend.manifest)
            _compatible(old_pre, new_pre)
    except BaseException:
        await new_backend.__aexit__(None, None, None)
        raise
    await asyncio.to_thread(store.activate, slot)  # on disk first: a crash now serves it
    _, retired = await pipeline.swap_model(new_backend, new_pre)
    await retired.__aexit__(None, None, None)
    result = SwapResult(slot, old_backend.model, new_backend.model, new_pre is not None)
    log.info("model_swapped", pipeline=pipeline.name, slot=slot.name,
             version=result.new.version, previous_version=result.old.version,
             preprocessor_rebuilt=result.preprocessor_rebuilt)
    return result
