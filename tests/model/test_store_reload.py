"""A running daemon serving ``store:NAME`` serves the current slot after a reload, and
follows ``edged model rollback`` without one."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

from edged.app.assembly import build_graph
from edged.config import load_config
from edged.model.package import resolve_model_path
from edged.model.store import ModelStore
from edged.plugin.manager import make_plugin_manager
from edged.runtime.supervisor import Supervisor

BUILTIN = resolve_model_path("builtin:windturbine-v1")


async def until(condition, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s")
        await asyncio.sleep(0.02)


async def test_reload_serves_the_rolled_back_slot(tmp_path, make_model):
    state = tmp_path / "state"
    config_file = tmp_path / "edged.yaml"
    config_file.write_text(f"""\
state_dir: {state}
sources:
  farm: {{type: simulator, turbines: 2}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:windturbine"}}
""")
    pm, registry = make_plugin_manager()
    config = load_config(config_file, registry)
    stop, reload = asyncio.Event(), asyncio.Event()
    supervisor = Supervisor(config, registry, pm, stop=stop, reload=reload, build=build_graph)
    task = asyncio.create_task(supervisor.run())
    try:
        def version() -> int:
            return supervisor.graph.pipelines["turbines"].backend.model.version

        await until(lambda: supervisor.graph.pipelines["turbines"].backend._session)
        assert version() == 1  # seeded with the built-in model on start
        store = ModelStore.for_model(state, "windturbine")
        assert store.current().version == 1
        store.activate(store.install(make_model(2)))
        reload.set()
        await until(lambda: supervisor.reloads == 1)
        assert version() == 2

        done = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "edged", "model", "rollback",
                             "windturbine", "-c", str(config_file)],
            capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        # The running daemon follows the store without a reload (runtime.store_watch):
        # the command returns once it serves the rolled-back slot.
        assert "now serves windturbine slot 1-" in done.stdout, done.stdout
        assert version() == 1 and supervisor.reloads == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
