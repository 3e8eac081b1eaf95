"""The supervisor's store watch beside a running graph: it follows the store, leaves an
IoT job's own swap alone, records what serves, and stops with the graph."""

from __future__ import annotations

import asyncio
import time

from edged.app.assembly import build_graph
from edged.config import load_config
from edged.model.serving import daemon_alive, read_serving
from edged.model.store import ModelStore
from edged.plugin.manager import make_plugin_manager
from edged.runtime.supervisor import Supervisor
from edged.runtime.swap import commit_swap, prepare_swap, preprocessor_factory
from tests.support.model_cli import relabelled_model, store_config


async def until(condition, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {within} s"
        await asyncio.sleep(0.02)


def slot_served(state) -> str | None:
    record = read_serving(state)
    return record and record["pipelines"]["turbines"]["slot"]


async def test_a_jobs_swap_is_left_to_the_job(tmp_path):
    """What an IoT job does (commit, then swap at once) needs nothing from the watch:
    one swap, none refused, and serving.json follows."""
    state = tmp_path / "state"
    config_file = tmp_path / "edged.yaml"
    config_file.write_text(store_config(state))
    pm, registry = make_plugin_manager()
    config = load_config(config_file, registry)
    stop = asyncio.Event()
    supervisor = Supervisor(config, registry, pm, stop=stop, reload=asyncio.Event(),
                            build=build_graph)
    task = asyncio.create_task(supervisor.run())
    try:
        store = ModelStore.for_model(state, "windturbine")
        await until(lambda: slot_served(state) is not None)
        record = read_serving(state)
        assert daemon_alive(record) and record["pipelines"]["turbines"]["version"] == 1

        pipeline = supervisor.graph.pipelines["turbines"]
        candidate = await prepare_swap(
            pipeline, relabelled_model(tmp_path / "v2", 2), store,
            build_preprocessor=preprocessor_factory(registry, config, "turbines", state))
        await commit_swap(pipeline, candidate, store)  # the executor's two steps
        await until(lambda: slot_served(state) == candidate.slot.name)
        await asyncio.sleep(1.5)  # a poll and a settle more: nothing else happens
        assert pipeline.backend is candidate.backend
        assert supervisor.counters.get("model_swaps", pipeline="turbines") == 0
        assert supervisor.counters.get("model_swaps_refused", pipeline="turbines") == 0

        # By hand (the command's commit alone), the watch swaps.
        store.rollback()
        await until(lambda: pipeline.backend.model.version == 1)
        assert supervisor.counters.get("model_swaps", pipeline="turbines") == 1
        await until(lambda: slot_served(state) == store.current().name)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert supervisor._watch is None  # stopped with its graph


async def test_no_store_model_no_watch(tmp_path):
    config_file = tmp_path / "edged.yaml"
    config_file.write_text(store_config(tmp_path / "state").replace(
        '"store:windturbine"', "builtin:windturbine-v1"))
    pm, registry = make_plugin_manager()
    stop = asyncio.Event()
    supervisor = Supervisor(load_config(config_file, registry), registry, pm, stop=stop,
                            reload=asyncio.Event(), build=build_graph)
    task = asyncio.create_task(supervisor.run())
    try:
        await until(lambda: supervisor.graph.pipelines["turbines"].backend._session)
        assert supervisor._watch is None
        assert read_serving(tmp_path / "state") is None
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
