"""Plugin services (``edged_service_types``): built with each graph from the config and
the graph, run with it, refused by name when they cannot be built, and a config section
a service reads refused when no loaded plugin provides that service."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edged import hookimpl
from edged.app.assembly import build_graph
from edged.base.errors import ConfigError
from edged.config import load_config
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import ServiceType
from edged.testing import eventually, farm_config, running_graph

ROOT = Path(__file__).resolve().parents[2]


class Recorder:
    """A service counting the decisions of every pipeline while it runs."""

    def __init__(self, graph) -> None:
        self.decisions = 0
        self.states: list[str] = []
        for pipeline in graph.pipelines.values():
            pipeline.subscribers.append(self)

    def on_round(self, round) -> None:
        self.decisions += len(round.decisions) if self.states == ["entered"] else 0

    def on_event(self, event) -> None:
        pass

    async def __aenter__(self) -> Recorder:
        self.states.append("entered")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.states.append("left")


def registry_with(build):
    service = SimpleNamespace(edged_service_types=hookimpl(
        lambda: [ServiceType("recorder", build, "counts decisions")]))
    return make_plugin_manager(extra=[("recorder", service)])[1]


def config(tmp_path: Path) -> Path:
    path = tmp_path / "edged.yaml"
    path.write_text(farm_config("svc-gw", tmp_path / "state", turbines=2))
    return path


async def test_a_plugin_service_runs_with_the_graph_and_sees_its_decisions(tmp_path):
    built = []
    registry = registry_with(lambda cfg, graph: built.append(Recorder(graph)) or built[-1])
    async with running_graph(config(tmp_path), registry) as graph:
        [recorder] = built
        assert graph.services["recorder"] is recorder
        assert recorder.states == ["entered"]
        await eventually(lambda: recorder.decisions >= 4, 30)
    assert recorder.states == ["entered", "left"]


def test_a_service_the_config_does_not_ask_for_is_left_out(tmp_path):
    registry = registry_with(lambda cfg, graph: None)
    graph = build_graph(load_config(config(tmp_path), registry), registry)
    assert "recorder" not in graph.services
    assert "dashboard" not in graph.services  # no dashboard: section either


def test_a_service_that_cannot_be_built_is_a_config_error_naming_it(tmp_path):
    def broken(cfg, graph):
        raise ValueError("no port to listen on")

    registry = registry_with(broken)
    with pytest.raises(ConfigError) as refused:
        build_graph(load_config(config(tmp_path), registry), registry)
    assert refused.value.problems == [
        f"Cannot build service 'recorder' from {tmp_path / 'edged.yaml'}: "
        "no port to listen on"]


def test_a_dashboard_section_without_the_dashboard_plugin_is_refused(tmp_path):
    path = tmp_path / "edged.yaml"
    path.write_text(farm_config("svc-gw", tmp_path / "state", turbines=2,
                                extra='dashboard: {listen: "127.0.0.1:0"}'))
    command = [sys.executable, "-m", "edged", "check-config", str(path)]
    subprocess.run(command, capture_output=True, cwd=ROOT, check=True)
    blocked = subprocess.run([*command[:3], "-p", "no:dashboard", *command[3:]],
                             capture_output=True, text=True, cwd=ROOT, check=False)
    assert blocked.returncode == 78
    assert "no loaded plugin provides the 'dashboard' service (blocked)" in blocked.stderr
