"""A running daemon serves what its model stores say: ``edged model install`` and
``edged model rollback`` take effect at once, without a reload.

Those commands change a store on disk, and only by replacing its ``state.json`` (one
rename: the commit point of ``edged.model.store``). The supervisor runs one watch beside
each graph; every :data:`POLL_S` it stats the ``state.json`` of each store a pipeline
serves (``model: store:NAME``), and when one has changed it reads the store's current
slot and swaps it into every pipeline that serves another model, through
``edged.runtime.swap``, the path IoT Jobs updates take: installed, loaded, golden pairs
run, then swapped between two decisions. A swap refused there (the golden pairs do not
reproduce, a preprocessing change needs new buffers, ...) leaves the pipeline on the
model it had; it is logged (``model_swap_refused``), counted, recorded, and not tried
again until the store changes again or a reload builds the graph anew.

What every pipeline serves, and any refusal, is written to ``<state_dir>/serving.json``
(``edged.model.serving``) when the graph starts and after every change, for ``edged
model`` to confirm what the daemon did.

An IoT job commits the store and swaps its pipelines itself, right after; the watch
waits :data:`SETTLE_S` after seeing a change before it acts, and a pipeline found
serving the current slot then (or after a failed attempt) needs nothing from it.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from edged.base.log import RateLimit
from edged.base.metrics import Counters
from edged.config import EdgedConfig, store_model
from edged.model.serving import write_serving
from edged.model.store import STATE, ModelStore, Slot, slot_id
from edged.runtime.pipeline import Pipeline
from edged.runtime.swap import BuildPreprocessor, commit_swap, prepare_swap

log = structlog.get_logger("edged.model")

#: How often each store's state.json is looked at (one stat).
POLL_S = 1.0
#: Wait after a change is seen, so that an IoT job's own swap lands first.
SETTLE_S = 0.3


class StoreWatch:
    """Keeps each ``store:NAME`` pipeline of one graph on its store's current slot."""

    def __init__(self, config: EdgedConfig, pipelines: dict[str, Pipeline],
                 preprocessors: Callable[[str], BuildPreprocessor], counters: Counters, *,
                 poll_s: float = POLL_S, settle_s: float = SETTLE_S) -> None:
        self.state_dir = config.state_dir
        self.pipelines = pipelines
        self.stores = {name: store for name in pipelines
                       if (store := store_model(config.pipelines[name])) is not None}
        self.preprocessors = preprocessors  # a pipeline's name -> its preprocessor factory
        self.counters = counters
        self.poll_s, self.settle_s = poll_s, settle_s
        self._seen: dict[str, tuple[int, int, int] | None] = {}  # store -> state.json stat
        self._ids: dict[Path, str] = {}  # a model directory -> the slot id it serves
        self._refused: dict[str, dict[str, Any]] = {}  # pipeline -> its last refusal
        self._written: dict[str, Any] | None = None
        self._failures = RateLimit()

    @property
    def needed(self) -> bool:
        """Whether any pipeline serves a store model."""
        return bool(self.stores)

    async def run(self) -> None:
        """Look every ``poll_s`` until cancelled; nothing here may stop the daemon."""
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a watch that fails must not
                # end the supervisor's task group: log it (rate-limited), try again.
                suppressed = self._failures.allow(type(exc).__name__)
                if suppressed is not None:
                    log.error("model_store_watch_failed", error=repr(exc),
                              suppressed_since_last=suppressed)
            await asyncio.sleep(self.poll_s)

    async def check(self) -> None:
        """One look at every store; swap, record and write serving.json as needed."""
        for store_name in sorted(set(self.stores.values())):
            root = self.state_dir / "models" / store_name
            seen = await asyncio.to_thread(_stat, root / STATE)
            if store_name in self._seen and seen == self._seen[store_name]:
                continue
            self._seen[store_name] = seen
            store = await asyncio.to_thread(ModelStore.for_model, self.state_dir, store_name)
            current = await asyncio.to_thread(store.current)
            if current is None:
                continue  # an empty store (seeding failed): nothing to follow
            for name in sorted(n for n, s in self.stores.items() if s == store_name):
                await self._follow(self.pipelines[name], store, current)
        serving = await asyncio.to_thread(self._serving)
        if serving != self._written:
            await asyncio.to_thread(write_serving, self.state_dir, serving)
            self._written = serving

    async def _follow(self, pipeline: Pipeline, store: ModelStore, current: Slot) -> None:
        """Serve ``current`` in ``pipeline``, unless it does already."""
        if await self._serves(pipeline, current):
            self._refused.pop(pipeline.name, None)
            return
        log.info("model_store_changed", pipeline=pipeline.name, store=store.name,
                 slot=current.name, version=current.version)
        await asyncio.sleep(self.settle_s)
        if await self._serves(pipeline, current):
            self._refused.pop(pipeline.name, None)
            return  # an IoT job's own swap
        try:
            candidate = await prepare_swap(pipeline, current.path, store,
                                           build_preprocessor=self.preprocessors(
                                               pipeline.name))
            try:
                now = await asyncio.to_thread(store.current)
                if now is None or now.name != current.name:
                    # Changed again meanwhile: committing would undo that change.
                    await candidate.close()
                    self._seen.pop(store.name, None)  # look again next time
                    return
                await commit_swap(pipeline, candidate, store)
            except BaseException:
                await candidate.close()  # a no-op once it serves
                raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every refusal keeps the old model
            if await self._serves(pipeline, current):
                return  # an IoT job swapped it meanwhile
            self.counters.inc("model_swaps_refused", pipeline=pipeline.name)
            self._refused[pipeline.name] = {"slot": current.name, "version": current.version,
                                            "reason": str(exc) or repr(exc),
                                            "at": time.time()}
            log.error("model_swap_refused", pipeline=pipeline.name, slot=current.name,
                      version=current.version, reason=str(exc) or repr(exc),
                      serving=self._slot_of(pipeline), serving_version=
                      pipeline.backend.model.version)
            return
        self._refused.pop(pipeline.name, None)
        self.counters.inc("model_swaps", pipeline=pipeline.name)

    async def _serves(self, pipeline: Pipeline, slot: Slot) -> bool:
        return await asyncio.to_thread(self._slot_of, pipeline) == slot.name

    def _slot_of(self, pipeline: Pipeline) -> str | None:
        """The name of the slot a pipeline's model is (``<version>-<id>``), whether it
        was loaded from the slot or from the built-in model the store was seeded with;
        None for a backend without a model directory. Blocking (hashes a manifest once)."""
        backend = pipeline.backend
        directory = getattr(backend, "directory", None)
        if directory is None:
            return None
        if directory not in self._ids:
            try:
                self._ids[directory] = slot_id(directory)
            except OSError:
                return None
        return f"{backend.model.version}-{self._ids[directory]}"

    def _serving(self) -> dict[str, Any]:
        """serving.json's ``pipelines``: what each pipeline serves. Blocking."""
        return {name: {"store": self.stores.get(name), "model": p.backend.model.name,
                       "version": p.backend.model.version,
                       "slot": self._slot_of(p) if name in self.stores else None,
                       "refused": self._refused.get(name)}
                for name, p in sorted(self.pipelines.items())}


def _stat(path: Path) -> tuple[int, int, int] | None:
    """What changes whenever ``state.json`` is replaced: (inode, mtime, size)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size
