"""Hot swap into a running pipeline (the real one, with the wind-turbine preprocessor and
the ONNX backend), and the onnx backend's ``store:NAME`` models."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import numpy as np
import pytest

from edged.base.errors import ModelError
from edged.base.metrics import Counters
from edged.builtin.onnx import OnnxBackend, OnnxConfig
from edged.builtin.windturbine import WindTurbineConfig, WindTurbineStage, params_for
from edged.config import PipelineSpec
from edged.model.errors import SwapError
from edged.model.package import resolve_model_path
from edged.model.store import ModelStore
from edged.plugin.components import BuildContext, Readings
from edged.plugin.events import Round
from edged.runtime.pipeline import Pipeline
from edged.runtime.swap import swap_model
from edged.windturbine import layout
from edged.windturbine.simulator import WindFarm

BUILTIN = resolve_model_path("builtin:windturbine-v1")
COLUMNS = np.array([layout.DATASET_COLUMNS.index(c) for c in layout.INPUTS])
INTERVAL = 0.2
TURBINES = 3


def stage_for(manifest: dict) -> WindTurbineStage:
    return WindTurbineStage(params_for(WindTurbineConfig(type="windturbine"), manifest))


def store_backend(state_dir) -> OnnxBackend:
    ctx = BuildContext(name="turbines", device_id="test", state_dir=state_dir)
    return OnnxBackend(OnnxConfig(type="onnx", model="store:windturbine"), ctx)


class Recorder:
    """Every round as the subscribers see it: (time, turbines, versions, thresholds)."""

    def __init__(self) -> None:
        self.rounds: list[tuple[float, list[str], set[int], tuple[float, ...]]] = []

    def on_round(self, round: Round) -> None:
        self.rounds.append((time.monotonic(), [d.turbine for d in round.decisions],
                            {d.model.version for d in round.decisions},
                            tuple(round.thresholds)))

    def on_event(self, event) -> None:
        pass


async def feed(pipeline: Pipeline, farm: WindFarm) -> None:
    ids = tuple(farm.turbine_ids)
    rows = farm.ticks(500)[:, :, COLUMNS]
    pipeline.ingest([Readings(ids * len(rows), rows.reshape(-1, len(COLUMNS)))])
    while True:
        await asyncio.sleep(0.02)
        rows = farm.ticks(1)[:, :, COLUMNS]
        pipeline.ingest([Readings(ids, rows.reshape(-1, len(COLUMNS)))])


@pytest.fixture
def store(tmp_path):
    store = ModelStore.for_model(tmp_path / "state", "windturbine")
    store.seed(BUILTIN)
    return store


async def test_store_model_resolves_to_the_current_slot(tmp_path, store, make_model):
    backend = store_backend(tmp_path / "state")
    assert backend.directory == store.current().path
    assert backend.model.version == 1
    store.activate(store.install(make_model(2)))
    backend = store_backend(tmp_path / "state")
    assert backend.directory == store.current().path and backend.model.version == 2
    async with backend:
        assert backend.predict(np.zeros((1, 6, 10, 10), np.float32)).shape == (1, 6, 10, 10)


async def test_an_empty_store_serves_the_builtin_and_is_seeded_on_start(tmp_path):
    state = tmp_path / "empty"
    backend = store_backend(state)
    assert backend.directory == BUILTIN  # building writes nothing
    assert not (state / "models" / "windturbine" / "state.json").exists()
    async with backend:
        current = ModelStore.for_model(state, "windturbine").current()
        assert current is not None and current.version == 1


def test_a_store_model_without_a_builtin_to_seed_is_an_error(tmp_path):
    ctx = BuildContext(name="p", device_id="test", state_dir=tmp_path)
    with pytest.raises(ModelError, match="empty"):
        OnnxBackend(OnnxConfig(type="onnx", model="store:pumps"), ctx)


async def test_swap_while_deciding_misses_no_turbine_and_mixes_no_models(
        tmp_path, store, make_model):
    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"}, interval_s=INTERVAL)
    old_thresholds = tuple(backend.manifest["preprocessing"]["thresholds"])
    new_thresholds = [t * 2 for t in old_thresholds]
    v2 = make_model(2, thresholds=new_thresholds)
    recorder = Recorder()
    async with backend:
        pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend,
                            Counters())
        pipeline.subscribers.append(recorder)
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(feed(pipeline, WindFarm(turbines=TURBINES, seed=3))),
                     tg.create_task(pipeline.decide_loop())]
            await asyncio.sleep(1.0)
            swapped_at = time.monotonic()
            result = await swap_model(pipeline, v2, store, build_preprocessor=stage_for)
            done_at = time.monotonic()
            await asyncio.sleep(1.0)
            for task in tasks:
                task.cancel()

    assert (result.old.version, result.new.version) == (1, 2)
    assert result.preprocessor_rebuilt
    assert pipeline.backend.model.version == 2 and pipeline.backend is not backend
    assert backend._session is None, "the old backend is closed"
    assert (store.current().version, store.previous().version) == (2, 1)

    versions = [r[2] for r in recorder.rounds]
    assert all(len(v) == 1 for v in versions), "a round mixed models"
    order = [v.pop() for v in versions]
    assert order == sorted(order) and order[0] == 1 and order[-1] == 2
    for _, _, _, thresholds in (r for r, v in zip(recorder.rounds, order, strict=True)
                                if v == 1):
        assert thresholds == pytest.approx(old_thresholds)
    for _, _, _, thresholds in (r for r, v in zip(recorder.rounds, order, strict=True)
                                if v == 2):
        assert thresholds == pytest.approx(new_thresholds), "new model, old preprocessor"
    # Rounds before the swap began ran the old model; rounds after it ended, the new.
    assert all(v == 1 for (t, *_), v in zip(recorder.rounds, order, strict=True)
               if t < swapped_at)
    assert all(v == 2 for (t, *_), v in zip(recorder.rounds, order, strict=True)
               if t > done_at + INTERVAL)
    # Every turbine kept being decided: no gap longer than an interval plus slack.
    for turbine in (f"turbine-{i}" for i in range(TURBINES)):
        times = [t for t, turbines, *_ in recorder.rounds if turbine in turbines]
        assert len(times) >= 6, turbine
        gaps = np.diff(times)
        assert gaps.max() < INTERVAL + 0.35, (turbine, gaps.max())


async def test_same_preprocessing_keeps_the_preprocessor(tmp_path, store, make_model):
    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"})
    async with backend:
        stage = stage_for(backend.manifest)
        pipeline = Pipeline("turbines", spec, stage, backend, Counters())
        result = await swap_model(pipeline, make_model(2), store)
    assert not result.preprocessor_rebuilt and pipeline.preprocessor is stage
    assert pipeline.backend.model.version == 2


async def test_a_model_failing_its_golden_pairs_is_not_swapped_in(tmp_path, store,
                                                                  make_model):
    bad = make_model(2)
    with np.load(bad / "golden.npz") as golden:
        arrays = dict(golden)
    arrays["outputs"] = arrays["outputs"] + 1.0
    np.savez(bad / "golden.npz", **arrays)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["golden.npz"] = hashlib.sha256(
        (bad / "golden.npz").read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(manifest))

    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"})
    async with backend:
        pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend,
                            Counters())
        with pytest.raises(SwapError, match="golden"):
            await swap_model(pipeline, bad, store)
        assert pipeline.backend is backend and backend._session is not None
    assert store.current().version == 1 and store.previous() is None


async def test_a_backend_that_cannot_stage_another_model_is_refused(tmp_path, store,
                                                                     make_model):
    """The swap stages through the serving backend's ``for_model``: one without it (any
    backend but onnx today) is refused before anything is installed."""
    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"})
    async with backend:
        pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend,
                            Counters())
        pipeline.backend = type("Plain", (), {"model": backend.model,
                                             "manifest": backend.manifest,
                                             "predict": backend.predict})()
        with pytest.raises(SwapError, match="does not run a backend that can swap models"):
            await swap_model(pipeline, make_model(2), store)
    assert store.current().version == 1 and store.previous() is None


async def test_a_preprocessing_change_needing_new_buffers_is_refused(tmp_path, store,
                                                                      make_model):
    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"})
    async with backend:
        pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend,
                            Counters())
        with pytest.raises(SwapError, match="history"):
            await swap_model(pipeline, make_model(2, buffer=600), store,
                             build_preprocessor=stage_for)
        with pytest.raises(SwapError, match="no preprocessor factory"):
            await swap_model(pipeline, make_model(3, buffer=600), store)
        assert pipeline.backend is backend
    assert store.current().version == 1


async def test_swap_waits_for_the_round_in_flight(tmp_path, store, make_model):
    """The old backend is closed only after the round that uses it has finished."""
    backend = store_backend(tmp_path / "state")
    spec = PipelineSpec(inputs=["farm"], preprocessor={"type": "windturbine"},
                        inference={"type": "onnx"})
    async with backend:
        pipeline = Pipeline("turbines", spec, stage_for(backend.manifest), backend,
                            Counters())
        farm = WindFarm(turbines=TURBINES, seed=5)
        rows = farm.ticks(500)[:, :, COLUMNS]
        pipeline.ingest([Readings(tuple(farm.turbine_ids) * 500,
                                  rows.reshape(-1, len(COLUMNS)))])
        slow = backend.predict

        def predict(x):
            time.sleep(0.3)
            return slow(x)

        backend.predict = predict
        round_task = asyncio.create_task(pipeline.decide_once())
        await asyncio.sleep(0.05)  # the round is in its thread now
        result = await swap_model(pipeline, make_model(2), store)
        decisions = await round_task
    assert {d.model.version for d in decisions} == {1}
    assert result.new.version == 2


def test_preprocessor_factory_uses_the_pipelines_configured_options(tmp_path):
    from edged.config import parse_config
    from edged.plugin.manager import make_plugin_manager
    from edged.runtime.swap import preprocessor_factory

    registry = make_plugin_manager()[1]
    config = parse_config("""\
sources:
  farm: {type: simulator}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine, thresholds: [1, 2, 3, 4, 5, 6]}
    inference: {type: onnx}
""", "edged.yaml", registry)
    build = preprocessor_factory(registry, config, "turbines", tmp_path)
    manifest = OnnxBackend(OnnxConfig(type="onnx")).manifest
    stage = build(manifest)
    assert isinstance(stage, WindTurbineStage)
    assert stage.params.thresholds.tolist() == [1, 2, 3, 4, 5, 6]
