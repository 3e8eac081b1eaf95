"""Property-based fuzzing of the config loader (YAML text -> validated config): for any
text, bytes or YAML-shaped structure, ``parse_config`` / ``load_config`` return an
EdgedConfig or raise ConfigError, never anything else, within bounded time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from edged.base.errors import ConfigError
from edged.config import EdgedConfig, load_config, parse_config
from edged.plugin.manager import make_plugin_manager

ROOT = Path(__file__).resolve().parents[2]
DEMO = (ROOT / "configs" / "demo.yaml").read_text()
REGISTRY = make_plugin_manager()[1]
#: Per input: the bounds make every file cheap; this only catches a runaway.
SECONDS = 5.0

# Words the loader and the validators react to, so generated files go past the YAML
# layer into validation and wiring.
WORDS = ["device", "id", "log", "level", "plugins", "block", "state_dir", "shutdown",
         "reload", "timeout_s", "sources", "farm", "type", "simulator", "replay", "mqtt",
         "turbines", "rate_hz", "seed", "faults", "pipelines", "inputs", "preprocessor",
         "windturbine", "inference", "onnx", "model", "builtin:windturbine-v1",
         "interval_s", "queue", "size", "overflow", "capture", "rate", "every",
         "destination", "disk", "path", "actuators", "log", "debounce", "cloud",
         "metrics", "listen", "${EDGED_TOKEN}", "on_start_failure", "policy"]
# Pieces of YAML syntax, anchors and aliases included, for text that is nearly YAML.
TOKENS = WORDS + [": ", "\n", "\n  ", "\n    ", "- ", "[", "]", "{", "}", ", ", "&a ",
                  "*a", "&b ", "*b", "<<: ", "? ", "!!binary ", "!!set ", "!!str ",
                  "!!python/object ", "'", '"', "#", "---\n", "...\n", "|\n", ">\n", "%YAML",
                  "0", "-1", "1e309", ".nan", "9" * 5000, "2024-13-45", "~", "\t", "\x00",
                  "\ufeff", "\ud800", "é"]


def _check(call) -> None:
    started = time.monotonic()
    try:
        result = call()
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)
    else:
        assert isinstance(result, EdgedConfig)
    assert time.monotonic() - started < SECONDS


scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(),
                    st.text(max_size=20), st.sampled_from(WORDS))
keys = st.one_of(st.sampled_from(WORDS), st.text(max_size=10), st.integers())
structures = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=5),
                                     st.dictionaries(keys, inner, max_size=6)),
    max_leaves=40)


@pytest.mark.fuzz
@given(st.text(max_size=2000))
def test_any_text(text):
    _check(lambda: parse_config(text, "fuzz.yaml", REGISTRY))


@pytest.mark.fuzz
@given(st.lists(st.sampled_from(TOKENS), max_size=80).map("".join))
def test_text_that_is_nearly_yaml(text):
    _check(lambda: parse_config(text, "fuzz.yaml", REGISTRY))


@pytest.mark.fuzz
@given(st.dictionaries(st.sampled_from(WORDS), structures, max_size=8))
def test_yaml_shaped_structures(data):
    text = yaml.safe_dump(data, allow_unicode=True)
    _check(lambda: parse_config(text, "fuzz.yaml", REGISTRY))


@pytest.mark.fuzz
@given(st.integers(0, len(DEMO)), st.integers(0, 40), st.lists(st.sampled_from(TOKENS),
                                                                max_size=6).map("".join))
def test_a_valid_config_with_a_piece_replaced(at, cut, piece):
    text = DEMO[:at] + piece + DEMO[at + cut:]
    _check(lambda: parse_config(text, "fuzz.yaml", REGISTRY))


@pytest.mark.fuzz
@given(st.binary(max_size=2000))
def test_any_bytes_in_a_file(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "edged.yaml"
    path.write_bytes(data)
    _check(lambda: load_config(path, REGISTRY))
