"""Documentation that a test keeps honest: every built-in plugin has a page with a
sample config that validates, and the README's device config validates."""

import re
from pathlib import Path

import pytest
import yaml

from edged.config import parse_config
from edged.plugin.manager import make_plugin_manager

ROOT = Path(__file__).resolve().parents[1]
YAML_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def _agent_config(text: str, filename: str) -> None:
    from edged.agent.config import parse_agent_config

    assert parse_agent_config(text, filename).format == "yaml"


def _model_config(text: str, filename: str) -> None:
    # `edged model` reads the daemon's own config (for its state_dir): the sample is a
    # daemon config whose pipeline serves a model from the store.
    config = parse_config(text, filename, make_plugin_manager()[1])
    assert any(p.inference.model.startswith("store:") for p in config.pipelines.values())


def _watch_config(text: str, filename: str) -> None:
    # `edged watch` reads the daemon's config for its socket: the sample is a daemon
    # config that sets the watch socket.
    config = parse_config(text, filename, make_plugin_manager()[1])
    assert config.raw.watch.socket is not None


#: Built-in plugins that register a command, with the parser of its config file.
COMMAND_CONFIGS = {"agent": _agent_config, "model": _model_config, "watch": _watch_config}


@pytest.fixture(scope="module")
def registry():
    return make_plugin_manager()[1]


def builtin_plugins(registry):
    return [p for p in registry.plugins if p.distribution == "edged"]


def test_every_builtin_plugin_has_a_page(registry):
    names = {p.name for p in builtin_plugins(registry)}
    assert names == {"simulator", "replay", "windturbine", "onnx", "log", "mqtt", "webhook",
                     "command", "agent", "edge_agent", "model", "watch", "dashboard"}
    for name in names:
        assert (ROOT / "docs" / "plugins" / f"{name}.md").is_file(), name


@pytest.mark.parametrize("page", sorted((ROOT / "docs" / "plugins").glob("*.md")),
                         ids=lambda p: p.stem)
def test_plugin_page_sample_validates(page, registry):
    blocks = YAML_BLOCK.findall(page.read_text())
    assert blocks, f"{page} has no yaml sample"
    if page.stem in COMMAND_CONFIGS:
        # A plugin that registers a command: its sample is that command's config, checked
        # by the command's own parser rather than the daemon's.
        for block in blocks:
            COMMAND_CONFIGS[page.stem](block, str(page))
        return
    for block in blocks:
        config = parse_config(block, str(page), registry)
        types = {c.type for c in config.sources.values()} | {
            c.type for c in config.actuators.values()} | {
            p.preprocessor.type for p in config.pipelines.values()} | {
            p.inference.type for p in config.pipelines.values()}
        if page.stem in registry.services:  # a service: its sample has its section
            assert getattr(config.raw, page.stem) is not None, f"{page} has no {page.stem}:"
        else:
            assert page.stem in types, f"{page}'s sample does not use {page.stem}"


def test_readme_device_config_validates(registry):
    blocks = [b for b in YAML_BLOCK.findall((ROOT / "README.md").read_text())
              if "pipelines:" in b]
    assert blocks
    for block in blocks:
        config = parse_config(block, "README.md", registry)
        if "operator-log" in block:
            assert config.actuators["operator-log"].debounce == 2


def test_jobs_page_cloud_sample_validates():
    from edged.config.cloud import CloudConfig

    blocks = YAML_BLOCK.findall((ROOT / "docs" / "jobs.md").read_text())
    assert blocks
    cloud = CloudConfig.model_validate(yaml.safe_load(blocks[0])["cloud"])
    assert cloud.broker.persistent_session and cloud.jobs.trust.keys_dir is not None


def test_capture_page_presigned_sample_validates(registry):
    [block] = [b for b in YAML_BLOCK.findall((ROOT / "docs" / "capture.md").read_text())
               if "type: presigned" in b]
    config = parse_config(block, "docs/capture.md", registry)
    assert config.raw.pipelines["turbines"].capture.destination.type == "presigned"
