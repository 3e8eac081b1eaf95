"""Config validation: every class of mistake is reported with file, line, key and cause."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Literal

import pytest

from edged import hookimpl
from edged.base.errors import ConfigError
from edged.config import EdgedConfig, load_config, parse_config
from edged.plugin.config import ActuatorConfig, EnvSecret
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import ComponentType, Registry

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.yaml"
FILE = "edged.yaml"

# A valid pipeline block, appended where a test's mistake lies elsewhere.
PIPELINE = """\
pipelines:
  turbines:
    inputs: [farm]
    preprocessor:
      type: windturbine
    inference:
      type: onnx
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_plugin_manager()[1]


def y(text: str) -> str:
    return textwrap.dedent(text)


def problems(text: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, FILE, registry)
    assert info.value.problems, "ConfigError without problems"
    return info.value.problems


def only(text: str, registry: Registry) -> str:
    found = problems(text, registry)
    assert len(found) == 1, found
    return found[0]


def located(key: str, line: int) -> str:
    return f"Invalid config for '{key}' at {FILE}, line {line}: "


# -- YAML itself ----------------------------------------------------------------------------


def test_yaml_syntax_error_names_file_and_line(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
            seed: a: b
        """),
        registry,
    )
    assert message.startswith(f"Invalid YAML at {FILE}, line 4: "), message
    assert "mapping values are not allowed" in message


def test_duplicate_key_names_path_and_both_lines(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
            seed: 1
            seed: 2
        """) + PIPELINE,
        registry,
    )
    assert message == (
        f"Invalid YAML at {FILE}, line 5: duplicate key 'sources.farm.seed' (first on line 4)"
    )


def test_duplicate_component_name_is_an_error(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
          farm:
            type: replay
        """) + PIPELINE,
        registry,
    )
    assert f"{FILE}, line 4" in message
    assert "duplicate key 'sources.farm' (first on line 2)" in message


def test_top_level_must_be_a_mapping(registry):
    message = only("- sources\n- pipelines\n", registry)
    assert message.startswith(located("(top level)", 1)), message
    assert "must hold a mapping" in message


# -- the top level and component keys ------------------------------------------------------


def test_unknown_top_level_key(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        """) + PIPELINE + "soruces: {}\n",
        registry,
    )
    assert message == located("soruces", 11) + (
        "unknown key 'soruces' (did you mean 'sources'?)")


def test_unknown_key_inside_a_component(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
            turbine: 5
        """) + PIPELINE,
        registry,
    )
    assert message == located("sources.farm.turbine", 4) + (
        "unknown key 'turbine' (did you mean 'turbines'?)")


def test_unknown_key_inside_a_pipeline_spec(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        """) + PIPELINE + "    intervall_s: 1\n",
        registry,
    )
    assert message == located("pipelines.turbines.intervall_s", 11) + (
        "unknown key 'intervall_s' (did you mean 'interval_s'?)")


def test_missing_required_key(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: [farm]
            preprocessor:
              type: windturbine
        """),
        registry,
    )
    # A missing key has no line of its own: the error points at its parent.
    assert message == (
        located("pipelines.turbines.inference", 5) + "required key 'inference' is missing"
    )


def test_missing_top_level_section(registry):
    message = only(
        y("""\
        device:
          id: gw-1
        sources:
          farm:
            type: simulator
        """),
        registry,
    )
    assert message.startswith(f"Invalid config for 'pipelines' at {FILE}"), message
    assert "required key 'pipelines' is missing" in message


@pytest.mark.parametrize(
    ("body", "key", "line", "says"),
    [
        ("    turbines: 0\n", "sources.farm.turbines", 4, "greater than or equal to 1 (got 0)"),
        ("    rate_hz: -1\n", "sources.farm.rate_hz", 4, "greater than 0 (got -1)"),
        ("    seed: lots\n", "sources.farm.seed", 4, "valid integer"),
        # A model-level check points at the component.
        ("    faults: '9:vibration@1-2'\n", "sources.farm", 2, "only 5 (0..4)"),
    ],
)
def test_wrong_value_in_a_component(registry, body, key, line, says):
    message = only("sources:\n  farm:\n    type: simulator\n" + body + PIPELINE, registry)
    assert message.startswith(located(key, line)), message
    assert says in message


def test_wrong_type_in_a_pipeline_spec(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        """) + PIPELINE + "    interval_s: fast\n",
        registry,
    )
    assert message.startswith(located("pipelines.turbines.interval_s", 11)), message
    assert "valid number" in message
    assert "(got 'fast')" in message


def test_wrong_value_in_an_actuator(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        """) + PIPELINE + y("""\
        actuators:
          alarms:
            type: log
            inputs: [turbines]
            level: loud
        """),
        registry,
    )
    assert message.startswith(located("actuators.alarms.level", 15)), message
    assert "'info', 'warning' or 'error'" in message


# -- component types ------------------------------------------------------------------------


def test_unknown_component_type_lists_known_types(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: modbus
        """) + PIPELINE,
        registry,
    )
    known = registry.names("source")
    assert {"replay", "simulator"} <= set(known)
    assert message == located("sources.farm.type", 3) + (
        f"unknown source type 'modbus'; known: {', '.join(known)}"
    )


def test_unknown_preprocessor_type(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: [farm]
            preprocessor:
              type: fft
            inference:
              type: onnx
        """),
        registry,
    )
    known = registry.names("preprocessor")
    assert "windturbine" in known
    assert message == located("pipelines.turbines.preprocessor.type", 8) + (
        f"unknown preprocessor type 'fft'; known: {', '.join(known)}"
    )


def test_missing_component_type(registry):
    message = only(
        y("""\
        sources:
          farm:
            turbines: 3
        """) + PIPELINE,
        registry,
    )
    known = registry.names("source")
    assert "simulator" in known
    assert message == located("sources.farm.type", 2) + (
        f"required key 'type' is missing (one of: {', '.join(known)})"
    )


def test_component_that_is_not_a_mapping(registry):
    message = only("sources:\n  farm: simulator\n" + PIPELINE, registry)
    assert message.startswith(located("sources.farm", 2)), message
    assert "valid dictionary (got 'simulator')" in message


def test_blocked_plugins_type_is_named_as_blocked():
    _, registry = make_plugin_manager(blocked=["replay"])
    message = only(
        y("""\
        sources:
          farm:
            type: replay
            path: turbines.csv
        """) + PIPELINE,
        registry,
    )
    known = registry.names("source")
    assert "replay" not in known
    assert "simulator" in known
    assert message == located("sources.farm.type", 3) + (
        f"unknown source type 'replay' (blocked); known: {', '.join(known)}"
    )


# -- wiring ---------------------------------------------------------------------------------


def test_pipeline_input_naming_no_source(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs:
              - farm
              - farn
            preprocessor: {type: windturbine}
            inference: {type: onnx}
        """),
        registry,
    )
    assert message == located("pipelines.turbines.inputs.1", 8) + (
        "no source named 'farn' (sources: farm)"
    )


def test_actuator_input_naming_no_pipeline(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        """) + PIPELINE + y("""\
        actuators:
          alarms:
            type: log
            inputs:
              - turbine
        """),
        registry,
    )
    assert message == located("actuators.alarms.inputs.0", 15) + (
        "no pipeline named 'turbine' (pipelines: turbines)"
    )


def test_duplicate_input(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: [farm, farm]
            preprocessor: {type: windturbine}
            inference: {type: onnx}
        """),
        registry,
    )
    assert message == located("pipelines.turbines.inputs", 6) + "lists a source more than once"


def test_empty_inputs(registry):
    message = only(
        y("""\
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: []
            preprocessor: {type: windturbine}
            inference: {type: onnx}
        """),
        registry,
    )
    assert message.startswith(located("pipelines.turbines.inputs", 6)), message
    assert "at least 1 item" in message


@pytest.mark.parametrize("name", ["Farm", "1farm", "farm.east", "f" * 64])
def test_invalid_component_name(registry, name):
    message, wiring = problems(f"sources:\n  '{name}':\n    type: simulator\n" + PIPELINE,
                               registry)
    assert message.startswith(located(f"sources.{name}", 2)), message
    # Reported in the same run: the pipeline's input names no source as written.
    assert wiring.startswith(located("pipelines.turbines.inputs.0", 6)), wiring
    assert "should match pattern '^[a-z][a-z0-9_-]{0,62}$'" in message
    assert f"(got '{name[:40]}" in message


# -- several mistakes, and warnings ---------------------------------------------------------


def test_every_component_mistake_is_reported(registry):
    found = problems(
        y("""\
        sources:
          farm:
            type: simulator
            turbine: 5
            turbines: 0
          east:
            type: modbus
          west:
            rate_hz: 3
        pipelines:
          turbines:
            inputs: [farm, nowhere]
            preprocessor: {type: windturbine}
            inference: {type: onnx, threads: 0}
        actuators:
          alarms:
            type: log
            inputs: [turbine]
          pager:
            type: sms
            inputs: [turbines]
        """),
        registry,
    )
    expected = {
        ("sources.farm.turbine", 4): "unknown key",
        ("sources.farm.turbines", 5): "greater than or equal to 1",
        ("sources.east.type", 7): "unknown source type 'modbus'",
        ("sources.west.type", 8): "required key 'type' is missing",
        ("pipelines.turbines.inference.threads", 14): "greater than or equal to 1",
        ("pipelines.turbines.inputs.1", 12): "no source named 'nowhere'",
        ("actuators.alarms.inputs.0", 18): "no pipeline named 'turbine'",
        ("actuators.pager.type", 20): "unknown actuator type 'sms'",
    }
    for (key, line), says in expected.items():
        matches = [p for p in found if p.startswith(located(key, line))]
        assert len(matches) == 1, (key, line, found)
        assert says in matches[0], matches[0]
    assert len(found) == len(expected), found


def test_every_top_level_mistake_is_reported(registry):
    found = problems(
        y("""\
        log:
          level: chatty
        sources:
          farm:
            type: simulator
        pipelines:
          turbines:
            inputs: [farm]
            preprocessor: {type: windturbine}
            interval_s: 0
        extra: 1
        """),
        registry,
    )
    keys = sorted(p.split("'")[1] for p in found)
    assert keys == [
        "extra",
        "log.level",
        "pipelines.turbines.inference",
        "pipelines.turbines.interval_s",
    ], found
    assert all(f"at {FILE}, line " in p for p in found), found


def test_source_feeding_no_pipeline_is_a_warning(registry):
    config = parse_config(
        "sources:\n  farm:\n    type: simulator\n  spare:\n    type: simulator\n" + PIPELINE,
        FILE,
        registry,
    )
    assert config.warnings == ["source 'spare' feeds no pipeline"]
    assert set(config.sources) == {"farm", "spare"}


# -- secrets --------------------------------------------------------------------------------


class TokenActuatorConfig(ActuatorConfig):
    type: Literal["token-test"]
    token: EnvSecret


class _TokenPlugin:
    @hookimpl
    def edged_component_types(self) -> list[ComponentType]:
        return [ComponentType("actuator", "token-test", TokenActuatorConfig, object)]


@pytest.fixture(scope="module")
def token_registry() -> Registry:
    return make_plugin_manager(extra=[("token-test", _TokenPlugin())])[1]


def with_token(value: str) -> str:
    return (
        "sources:\n  farm:\n    type: simulator\n" + PIPELINE
        + "actuators:\n  pager:\n    type: token-test\n    inputs: [turbines]\n"
        + f"    token: {value}\n"
    )


def test_secret_is_read_from_the_environment(token_registry, monkeypatch):
    monkeypatch.setenv("EDGED_TEST_TOKEN", "s3cret-value")
    config = parse_config(with_token("${EDGED_TEST_TOKEN}"), FILE, token_registry)
    token = config.actuators["pager"].token
    assert token.get_secret_value() == "s3cret-value"
    assert "s3cret-value" not in repr(config.actuators["pager"])


def test_secret_written_in_the_file_is_rejected_without_echoing_it(token_registry):
    message = only(with_token("hunter2-literal"), token_registry)
    assert message.startswith(located("actuators.pager.token", 15)), message
    assert "must reference an environment variable, like ${EDGED_TOKEN}" in message
    assert "hunter2-literal" not in message


def test_secret_from_an_unset_variable_is_named(token_registry, monkeypatch):
    monkeypatch.delenv("EDGED_TEST_MISSING", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    message = only(with_token("${EDGED_TEST_MISSING}"), token_registry)
    assert message == located("actuators.pager.token", 15) + (
        "environment variable EDGED_TEST_MISSING is not set (nor a systemd credential: "
        "no $CREDENTIALS_DIRECTORY)"
    )


def test_secret_model_alone(monkeypatch):
    monkeypatch.setenv("EDGED_TEST_TOKEN", "abc")
    config = TokenActuatorConfig.model_validate(
        {"type": "token-test", "inputs": ["p"], "token": "${EDGED_TEST_TOKEN}"}
    )
    assert config.token.get_secret_value() == "abc"
    with pytest.raises(ValueError, match="environment variable"):
        TokenActuatorConfig.model_validate(
            {"type": "token-test", "inputs": ["p"], "token": "prefix-${EDGED_TEST_TOKEN}"}
        )


# -- the shipped configs --------------------------------------------------------------------


def test_demo_config_is_valid(registry):
    config = load_config(DEMO, registry)
    assert isinstance(config, EdgedConfig)
    assert config.warnings == []
    assert list(config.sources) == ["farm"]
    assert list(config.pipelines) == ["turbines"]
    assert list(config.actuators) == ["operator-log"]
    assert config.actuators["operator-log"].inputs == ["turbines"]
    assert config.raw.device.id == "demo-gateway"


def test_packaged_demo_config_is_a_link_to_the_same_file():
    packaged = ROOT / "edged" / "demo.yaml"
    assert packaged.is_symlink()
    assert not Path(os.readlink(packaged)).is_absolute(), "link must be relative"
    assert packaged.resolve() == DEMO.resolve()


def test_unreadable_file_is_a_config_error(registry, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml", registry)
    assert info.value.problems == [
        f"Cannot read config {tmp_path / 'missing.yaml'}: No such file or directory"
    ]


def test_errors_name_the_real_file(registry, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("sources:\n  farm:\n    type: simulator\n    turbine: 5\n" + PIPELINE)
    with pytest.raises(ConfigError) as info:
        load_config(path, registry)
    assert info.value.problems == [
        f"Invalid config for 'sources.farm.turbine' at {path}, line 4: unknown key 'turbine'"
        " (did you mean 'turbines'?)"
    ]


def uncomment(text: str, key: str) -> str:
    """``text`` with the commented-out block ``# key:`` (and its ``#   `` lines) turned
    on, the comments inside it left out."""
    out, indent = [], None
    for line in text.splitlines():
        if indent is not None:
            if line.startswith(f"{indent}#   #"):
                continue
            if line.startswith(f"{indent}#   "):
                out.append(f"{indent}  {line[len(indent) + 4:]}")
                continue
            indent = None
        found = re.match(rf"^(\s*)# {key}:", line)
        if found:
            indent = found.group(1)
            out.append(f"{indent}{key}:{line[found.end():]}")
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def test_device_config_blocks_are_valid_once_uncommented(registry, tmp_path):
    """configs/edged.yaml offers capture, the cloud link and the metrics endpoint as
    commented blocks: each must be a valid config as soon as it is uncommented."""
    text = (ROOT / "configs" / "edged.yaml").read_text()
    for key in ("capture", "cloud", "metrics"):
        assert f"# {key}:" in text
        text = uncomment(text, key)
    path = tmp_path / FILE
    path.write_text(text)
    config = load_config(path, registry)
    capture = config.raw.pipelines["turbines"].capture
    assert capture is not None and capture.rate.every == 100
    assert capture.destination.type == "s3"
    assert config.cloud is not None and config.cloud.data_budget.daily_mb == 50
    assert config.raw.metrics.listen == "127.0.0.1:9464"
