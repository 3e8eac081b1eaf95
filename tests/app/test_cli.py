"""The real ``edged`` command line, run as a subprocess."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EX_CONFIG = 78
BUILTINS = {
    "simulator": ["source:simulator"],
    "replay": ["source:replay"],
    "windturbine": ["preprocessor:windturbine"],
    "onnx": ["inference:onnx"],
    "log": ["actuator:log"],
}

BROKEN = """\
sources:
  farm:
    type: simulator
    turbine: 5
    rate_hz: -1
pipelines:
  turbines:
    inputs: [farm, nowhere]
    preprocessor:
      type: windturbine
    inference:
      type: onnx
actuators:
  alarms:
    type: pager
    inputs: [turbines]
"""


def edged(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGED_BLOCK_PLUGINS"}
    return subprocess.run([sys.executable, "-m", "edged", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_check_config_accepts_the_demo():
    result = edged("check-config", "configs/demo.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "configs/demo.yaml: OK (1 source(s), 1 pipeline(s), 1 actuator(s))"
    )
    assert "warning" not in result.stderr


def test_check_config_reports_every_error_with_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    result = edged("check-config", str(path))
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    expected = [
        ("sources.farm.turbine", 4),
        ("sources.farm.rate_hz", 5),
        ("pipelines.turbines.inputs.1", 8),
        ("actuators.alarms.type", 15),
    ]
    for key, line in expected:
        prefix = f"Invalid config for '{key}' at {path}, line {line}: "
        assert sum(problem.startswith(prefix) for problem in lines) == 1, (prefix, lines)
    assert lines[-1] == f"{len(expected)} error(s); nothing was started."
    assert len(lines) == len(expected) + 1


def test_check_config_yaml_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sources:\n  farm:\n    type: simulator\n    seed: a: b\n")
    result = edged("check-config", str(path))
    assert result.returncode == EX_CONFIG
    assert f"Invalid YAML at {path}, line 4: " in result.stderr


def test_check_config_missing_model_is_a_config_error(tmp_path):
    path = tmp_path / "model.yaml"
    path.write_text((ROOT / "configs" / "demo.yaml").read_text().replace(
        "model: builtin:windturbine-v1", "model: /nonexistent"))
    result = edged("check-config", str(path))
    assert result.returncode == EX_CONFIG
    assert "pipelines.turbines.inference" in result.stderr
    assert str(path) in result.stderr
    assert "/nonexistent" in result.stderr
    assert "OK" not in result.stdout


def test_check_config_missing_file(tmp_path):
    path = tmp_path / "nowhere.yaml"
    result = edged("check-config", str(path))
    assert result.returncode == EX_CONFIG
    assert f"Cannot read config {path}" in result.stderr


def test_check_config_several_files_fails_if_any_does(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BROKEN)
    result = edged("check-config", "configs/demo.yaml", str(bad))
    assert result.returncode == EX_CONFIG
    assert "configs/demo.yaml: OK" in result.stdout
    assert str(bad) in result.stderr


def test_check_config_prints_warnings(tmp_path):
    path = tmp_path / "spare.yaml"
    text = (ROOT / "configs" / "demo.yaml").read_text()
    path.write_text(text.replace("pipelines:", "  spare:\n    type: simulator\n\npipelines:", 1))
    result = edged("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert f"warning: {path}: source 'spare' feeds no pipeline" in result.stderr


def test_config_can_block_a_plugin(tmp_path):
    path = tmp_path / "blocked.yaml"
    path.write_text("plugins:\n  block: [log]\n" + (ROOT / "configs" / "demo.yaml").read_text())
    result = edged("check-config", str(path))
    assert result.returncode == EX_CONFIG
    assert "unknown actuator type 'log' (blocked)" in result.stderr


def _table(stdout: str) -> dict[str, list[str]]:
    lines = stdout.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == [
        "NAME", "VERSION", "DISTRIBUTION", "REGISTERS"]
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        name, ver, dist, registers = re.split(r"\s{2,}", line.strip(), maxsplit=3)
        rows[name] = [ver, dist, registers]
    return rows


def test_plugins_lists_builtins_and_the_example():
    result = edged("plugins")
    assert result.returncode == 0, result.stderr
    rows = _table(result.stdout)
    for name, registers in BUILTINS.items():
        assert rows[name] == [version("edged"), "edged", ", ".join(registers)], rows[name]
    ver, dist, registers = rows["jsonl"]
    assert (ver, dist) == (version("edged-example"), "edged-example")
    assert "actuator:jsonl" in registers
    assert "blocked:" not in result.stdout


def test_plugins_json():
    result = edged("plugins", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["blocked"] == []
    rows = {row["name"]: row for row in data["plugins"]}
    for name, registers in BUILTINS.items():
        row = rows[name]
        assert set(row) == {"name", "version", "distribution", "module", "registers"}
        assert row["distribution"] == "edged"
        assert row["version"] == version("edged")
        assert row["registers"] == registers
        assert row["module"].startswith("edged.builtin.")
    assert rows["jsonl"]["distribution"] == "edged-example"
    assert rows["jsonl"]["version"] == version("edged-example")
    assert rows["jsonl"]["module"] == "edged_example"
    assert "actuator:jsonl" in rows["jsonl"]["registers"]


def test_plugins_hides_a_blocked_plugin():
    result = edged("-p", "no:replay", "plugins")
    assert result.returncode == 0, result.stderr
    rows = _table(result.stdout)
    assert "replay" not in rows
    assert "simulator" in rows
    assert result.stdout.rstrip().endswith("blocked: replay")

    data = json.loads(edged("-p", "no:replay", "plugins", "--json").stdout)
    assert "replay" not in {row["name"] for row in data["plugins"]}
    assert data["blocked"] == ["replay"]


def test_plugins_blocked_by_environment():
    env = {**os.environ, "EDGED_BLOCK_PLUGINS": "onnx"}
    result = subprocess.run([sys.executable, "-m", "edged", "plugins", "--json"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "onnx" not in {row["name"] for row in data["plugins"]}
    assert data["blocked"] == ["onnx"]


def test_version():
    result = edged("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edged {version('edged')}"


def test_installed_script_matches(tmp_path):
    script = Path(sys.executable).parent / "edged"
    if not script.exists():
        pytest.skip("no edged console script beside this interpreter")
    result = subprocess.run([str(script), "--version"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.stdout.strip() == f"edged {version('edged')}"


def test_run_with_a_bad_config_starts_nothing(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN)
    state = tmp_path / "state"
    env = {**os.environ, "STATE_DIRECTORY": str(state)}
    env.pop("EDGED_BLOCK_PLUGINS", None)
    # A started daemon would run until stopped: the timeout makes that a failure.
    result = subprocess.run([sys.executable, "-m", "edged", "run", "-c", str(path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == EX_CONFIG
    assert result.stdout == ""
    assert f"Invalid config for 'sources.farm.turbine' at {path}, line 4" in result.stderr
    assert result.stderr.strip().endswith("error(s); nothing was started.")
    assert not state.exists()


def test_run_with_a_missing_config(tmp_path):
    result = edged("run", "-c", str(tmp_path / "nowhere.yaml"))
    assert result.returncode == EX_CONFIG
    assert "Cannot read config" in result.stderr


def test_usage_error_without_a_command():
    result = edged()
    assert result.returncode == 2
    assert "usage: edged" in result.stderr
