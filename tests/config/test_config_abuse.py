"""Hostile and broken config files (issue 13, items 2, 3 and 7): the real ``edged
check-config`` and ``edged run`` refuse each with exit 78, the file and the reason, in
bounded time and memory; one run reports every independent mistake, with suggestions."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.config.yamlfile import MAX_BYTES, ConfigFileError, read_config_text
from edged.testing import farm_config
from tests.support import hostile_configs, run_measured

ROOT = Path(__file__).resolve().parents[2]
EX_CONFIG = 78

#: What check-config says about each hostile file, beside its name.
SAYS = {
    "not_utf8": "not UTF-8 at line 1 (byte 5",
    "deep": "line 1: nested deeper than 64 levels",
    "alias_bomb": "over 100,000 nodes once aliases are expanded",
    "recursive_alias": "line 1: alias *a is used inside its own anchor",
    "huge_int": "cannot read this value: Exceeds the limit (4300 digits)",
    "many_nodes": "line 1: over 100,000 nodes once aliases are expanded",
    "large": f"over the limit of {MAX_BYTES:,} bytes",
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("hostile")
    return hostile_configs(directory, farm_config("abuse", directory / "state"))


@pytest.mark.parametrize("name", sorted(SAYS))
def test_check_config_refuses_a_hostile_file_quickly_and_in_little_memory(hostile, name):
    path, _ = hostile[name]
    done = run_measured(["edged", "check-config", str(path)], timeout=60, cwd=ROOT)
    assert done.returncode == EX_CONFIG, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    first = done.stderr.splitlines()[0]
    assert str(path) in first and SAYS[name] in first, first
    # Before: an alias bomb reached 2.85 GB in 20 s, a 100,000-level file a traceback.
    assert done.seconds < 10, done
    assert done.peak_rss_mb < 400, done


@pytest.mark.parametrize("name", ["not_utf8", "deep", "alias_bomb", "large"])
def test_run_refuses_a_hostile_file_with_exit_78(hostile, name):
    path, _ = hostile[name]
    done = run_measured(["edged", "run", "-c", str(path)], timeout=60, cwd=ROOT)
    assert done.returncode == EX_CONFIG, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert SAYS[name] in done.stderr, done.stderr[-3000:]


def test_each_file_is_refused_under_its_own_reason(hostile):
    from edged.config import load_config
    from edged.plugin.manager import make_plugin_manager

    _, registry = make_plugin_manager()
    for name, (path, reason) in hostile.items():
        with pytest.raises(ConfigFileError) as info:
            load_config(path, registry)
        assert info.value.reason == reason, (name, info.value.problems)


def test_a_device_file_is_read_only_up_to_the_bound(tmp_path):
    # /dev/zero never ends: the read stops one byte past the bound.
    with pytest.raises(ConfigFileError) as info:
        read_config_text("/dev/zero")
    assert info.value.reason == "too_large"
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(ConfigFileError) as info:
        read_config_text(directory)
    assert info.value.reason == "unreadable"
    assert info.value.problems == [f"Cannot read config {directory}: Is a directory"]


FIVE_MISTAKES = """\
devise: {id: gw-1}
log: {level: chatty}
sources:
  farm: {type: simulater, turbines: 4}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {type: windturbine}
    inference: {type: onnx, model: "builtin:windturbine-v1", thread: 2}
    interval_s: 0
actuators:
  operator-log: {type: log, inputs: [turbines], debonce: 3}
"""


def test_check_config_reports_five_independent_mistakes_in_one_run(tmp_path):
    """Before, this file took three runs: the top level first, then each component."""
    path = tmp_path / "edged.yaml"
    path.write_text(FIVE_MISTAKES)
    done = run_measured(["edged", "check-config", str(path)], timeout=60, cwd=ROOT)
    assert done.returncode == EX_CONFIG, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == "6 error(s); nothing was started.", done.stderr
    expected = [
        ("devise", 1, "unknown key 'devise' (did you mean 'device'?)"),
        ("log.level", 2, "Input should be 'debug', 'info', 'warning' or 'error'"),
        ("pipelines.turbines.interval_s", 10, "greater than 0"),
        ("sources.farm.type", 4, "unknown source type 'simulater' (did you mean "
                                 "'simulator'?); known: "),
        ("actuators.operator-log.debonce", 12, "unknown key 'debonce' (did you mean "
                                               "'debounce'?)"),
        ("pipelines.turbines.inference.thread", 9, "unknown key 'thread' (did you mean "
                                                   "'threads'?)"),
    ]
    for key, line, says in expected:
        prefix = f"Invalid config for '{key}' at {path}, line {line}: "
        assert any(problem.startswith(prefix) and says in problem for problem in lines), \
            (key, done.stderr)


def test_a_misspelt_key_deep_inside_a_union_gets_a_suggestion(tmp_path):
    text = farm_config("gw", tmp_path / "state").replace(
        "    interval_s: 0.3\n",
        "    interval_s: 0.3\n    capture:\n      rate: {every: 10}\n"
        "      destination: {type: disk, pth: /tmp/captures}\n")
    path = tmp_path / "edged.yaml"
    path.write_text(text)
    done = run_measured(["edged", "check-config", str(path)], timeout=60, cwd=ROOT)
    assert done.returncode == EX_CONFIG, done.stderr
    assert "unknown key 'pth' (did you mean 'path'?)" in done.stderr, done.stderr
