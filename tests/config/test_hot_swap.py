"""Jobs replace a ``store:NAME`` model by hot-swapping it: check-config refuses such a
pipeline when its backend's type does not declare ``hot_swap``, and the build refuses a
backend that declares it without being a ``SwappableBackend``."""

from __future__ import annotations

import textwrap
from typing import Any, Literal

import pytest

from edged.app.assembly import build_graph
from edged.base.errors import ConfigError
from edged.config import parse_config
from edged.plugin import (
    BuildContext,
    Component,
    ComponentType,
    InferenceConfig,
    ModelRef,
    hookimpl,
)
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import Registry

FILE = "edged.yaml"


class FixedConfig(InferenceConfig):
    type: Literal["fixed", "boasting"]
    model: str


class FixedBackend(Component):
    """Serves one model and cannot stage another (no for_model, load, directory)."""

    def __init__(self, config: FixedConfig, ctx: BuildContext) -> None:
        self.model = ModelRef("fixed", 1)
        self.manifest: dict[str, Any] = {}

    def predict(self, x: Any) -> Any:
        return x


class _FixedPlugin:
    @hookimpl
    def edged_component_types(self) -> list[ComponentType]:
        return [ComponentType.inference("fixed", FixedConfig, FixedBackend),
                # Says it can swap; its backend cannot.
                ComponentType.inference("boasting", FixedConfig, FixedBackend,
                                        hot_swap=True)]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_plugin_manager(extra=[("fixed-test", _FixedPlugin())])[1]


def config(backend: str, jobs_pipelines: str = "") -> str:
    return textwrap.dedent(f"""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: [farm]
            preprocessor:
              type: windturbine
            inference:
              type: {backend}
              model: store:windturbine
        cloud:
          broker: {{host: 127.0.0.1, port: 1883}}
          jobs:
            trust: {{keys_dir: /nonexistent}}
        """) + jobs_pipelines


def only(text: str, registry: Registry) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE, registry)
    assert len(info.value.problems) == 1, info.value.problems
    return info.value.problems[0]


def test_a_store_model_jobs_update_needs_a_backend_that_hot_swaps(registry):
    message = only(config("fixed"), registry)
    assert message.startswith(
        f"Invalid config for 'pipelines.turbines.inference.model' at {FILE}, line 11: "
        "pipeline 'turbines' runs inference type 'fixed', which cannot hot-swap models, "
        "so a job cannot replace its store:windturbine model"), message


def test_a_listed_pipeline_is_refused_at_its_place_in_the_list(registry):
    message = only(config("fixed", "    pipelines: [turbines]\n"), registry)
    assert message.startswith(
        f"Invalid config for 'cloud.jobs.pipelines.0' at {FILE}, line 16: "
        "pipeline 'turbines' runs inference type 'fixed'"), message


def test_without_jobs_the_backend_may_serve_a_store_model(registry):
    text = config("fixed").replace("  jobs:\n", "  jobs:\n    enabled: false\n")
    assert parse_config(text, FILE, registry).pipelines["turbines"].inference.type == "fixed"


def test_the_onnx_backend_hot_swaps(registry):
    assert registry.component("inference", "onnx").hot_swap
    parse_config(config("onnx"), FILE, registry)


def test_a_backend_that_declares_hot_swap_must_be_swappable(registry, tmp_path):
    text = config("boasting").replace("cloud:", f"state_dir: {tmp_path}\ncloud:")
    checked = parse_config(text, FILE, registry)  # the declaration is taken at its word...
    with pytest.raises(ConfigError) as info:  # ...and held to it when the graph is built
        build_graph(checked, registry)
    assert (f"Cannot build 'pipelines.turbines.inference' from {FILE}: inference type "
            "'boasting' declares hot_swap, but its backend lacks for_model, load or "
            "directory") in info.value.problems
