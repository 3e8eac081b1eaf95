"""Hot swap: a new model into a running pipeline, between two decisions.

Two steps. ``prepare_swap`` stages into a new slot, loads it and runs its golden pairs:
a ``Candidate``, not serving. ``commit_swap`` makes it the store's current slot, then
replaces the pipeline's (preprocessor, backend) pair in one assignment; rounds already
running finish on the old model, and the old backend is closed after them. Between the
two the caller may run the candidate in shadow (``edged.model.shadow``) and discard
it (``Candidate.close``). Any failure before the commit leaves the pipeline and the
store's current slot untouched. ``swap_model`` is the two in one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from edged.base.errors import GoldenError
from edged.model import golden
from edged.model.errors import SwapError
from edged.model.store import ModelStore, Slot
from edged.plugin.components import BuildContext, InferenceBackend, Preprocessor, SwappableBackend
from edged.plugin.events import ModelRef
from edged.runtime.pipeline import Pipeline

log = structlog.get_logger("edged.model")

#: Builds the preprocessor for a new model from its manifest (a dict), with the
#: pipeline's configured options (the plugin's factory, bound by ``preprocessor_factory``).
BuildPreprocessor = Callable[[dict[str, Any]], Preprocessor]


@dataclass(frozen=True)
class SwapResult:
    slot: Slot
    old: ModelRef
    new: ModelRef
    preprocessor_rebuilt: bool


def check_golden(backend: Any) -> int:
    """Run the manifest's golden pairs through a loaded backend; raise SwapError if they
    do not reproduce under :mod:`edged.model.golden`'s rule. Returns the pairs run (0
    without golden data). Blocking."""
    name = backend.manifest.get("golden")
    if not name:
        return 0
    try:
        return golden.check(backend.directory / name, backend.predict)
    except GoldenError as exc:
        raise SwapError(f"{backend.directory}: golden pairs do not reproduce: "
                        f"{exc.detail}") from None


def preprocessor_factory(registry: Any, config: Any, pipeline: str,
                         state_dir: Path) -> BuildPreprocessor:
    """The factory a running graph's pipeline uses, with its configured options."""
    cfg = config.pipelines[pipeline].preprocessor
    ctype = registry.component("preprocessor", cfg.type)
    ctx = BuildContext(name=pipeline, device_id=config.raw.device.id, state_dir=state_dir)
    return lambda manifest: ctype.build(cfg, ctx, manifest=manifest)


def _compatible(old: Preprocessor, new: Preprocessor) -> None:
    # The ring buffers were sized by the old preprocessor and hold its row features.
    for key in ("inputs", "features", "history"):
        if getattr(old, key) != getattr(new, key):
            raise SwapError(f"the new model's preprocessing changes {key!r}: that needs a "
                            "reload (SIGHUP), not a hot swap")


@dataclass
class Candidate:
    """A model staged in a slot, loaded and golden-checked, not yet serving.

    ``commit_swap`` makes it serve; ``close`` discards it. ``preprocessor`` is None when
    the pipeline's current preprocessor fits the new model (same ``preprocessing``).
    """

    slot: Slot
    backend: SwappableBackend
    preprocessor: Preprocessor | None
    #: The backend the pipeline served when the candidate was checked against it.
    basis: InferenceBackend | None = field(default=None, repr=False, compare=False)
    state: Literal["staged", "committed", "discarded"] = field(default="staged",
                                                               compare=False)

    def preprocessor_for(self, pipeline: Pipeline) -> Preprocessor:
        """The preprocessor the candidate runs with in ``pipeline`` (for a shadow trial)."""
        return self.preprocessor or pipeline.preprocessor

    async def close(self) -> None:
        """Discard the candidate: close its backend. The slot stays installed, unused
        (``ModelStore.remove_unused`` collects it). A no-op once committed or closed."""
        if self.state != "staged":
            return
        self.state = "discarded"
        await self.backend.__aexit__(None, None, None)
        log.info("model_candidate_discarded", slot=self.slot.name,
                 version=self.backend.model.version)


async def prepare_swap(pipeline: Pipeline, model_dir: Path, store: ModelStore, *,
                       build_preprocessor: BuildPreprocessor | None = None) -> Candidate:
    """Install ``model_dir`` (extracted and verified) into a new slot of ``store``, load
    it and run its golden pairs; build a new preprocessor if its ``preprocessing``
    differs from the serving model's. Nothing serves it yet and the store's current slot
    is unchanged; on failure the loaded backend is closed (the slot stays, unused)."""
    old_pre, old_backend = pipeline.preprocessor, pipeline.backend
    if not isinstance(old_backend, SwappableBackend):
        raise SwapError(f"pipeline {pipeline.name!r} does not run a backend that can swap "
                        "models (the onnx backend can)")
    slot = await asyncio.to_thread(store.install, Path(model_dir))
    new_backend = await asyncio.to_thread(old_backend.for_model, slot.path)  # hashes files
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
    log.info("model_candidate_ready", pipeline=pipeline.name, slot=slot.name,
             version=new_backend.model.version, preprocessor_rebuilt=new_pre is not None)
    return Candidate(slot, new_backend, new_pre, basis=old_backend)


async def commit_swap(pipeline: Pipeline, candidate: Candidate,
                      store: ModelStore) -> SwapResult:
    """Make ``candidate`` serve: activate its slot in ``store`` (the old current becomes
    previous, last-known-good), swap it into ``pipeline`` between two rounds, then close
    the old backend once no round uses it. Refused (SwapError, nothing changed) if the
    candidate was committed or discarded already, or the pipeline serves another model
    than the one it was prepared against."""
    if candidate.state != "staged":
        raise SwapError(f"candidate {candidate.slot.name} was {candidate.state} already")
    old_backend = pipeline.backend
    if candidate.basis is not None and old_backend is not candidate.basis:
        raise SwapError(f"pipeline {pipeline.name!r} swapped models since candidate "
                        f"{candidate.slot.name} was prepared")
    await asyncio.to_thread(store.activate, candidate.slot)  # on disk first: a crash now
    candidate.state = "committed"  # serves it, and the pipeline does from the next line on
    _, retired = await pipeline.swap_model(candidate.backend, candidate.preprocessor)
    await retired.__aexit__(None, None, None)
    result = SwapResult(candidate.slot, old_backend.model, candidate.backend.model,
                        candidate.preprocessor is not None)
    log.info("model_swapped", pipeline=pipeline.name, slot=candidate.slot.name,
             version=result.new.version, previous_version=result.old.version,
             preprocessor_rebuilt=result.preprocessor_rebuilt)
    return result


async def swap_model(pipeline: Pipeline, model_dir: Path, store: ModelStore, *,
                     build_preprocessor: BuildPreprocessor | None = None) -> SwapResult:
    """Install ``model_dir`` (extracted and verified) into ``store`` and swap it into
    ``pipeline``: ``prepare_swap`` then ``commit_swap``. The previous slot stays as
    last-known-good."""
    candidate = await prepare_swap(pipeline, model_dir, store,
                                   build_preprocessor=build_preprocessor)
    try:
        return await commit_swap(pipeline, candidate, store)
    except BaseException:
        await candidate.close()  # a no-op once the pipeline serves it
        raise
