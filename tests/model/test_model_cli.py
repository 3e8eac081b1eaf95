"""``edged model list`` and ``edged model rollback``, as an operator runs them."""

from __future__ import annotations

import json
import subprocess
import sys

from edged.model.package import resolve_model_path
from edged.model.store import ModelStore

BUILTIN = resolve_model_path("builtin:windturbine-v1")


def edged(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_list_and_rollback(tmp_path, make_model):
    state = tmp_path / "state"
    store = ModelStore.for_model(state, "windturbine")
    v1 = store.seed(BUILTIN)
    v2 = store.activate(store.install(make_model(2)))

    done = edged("model", "list", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["MODEL", "SLOT", "VERSION", "STATE", "INSTALLED"]
    assert lines[1].split()[:4] == ["windturbine", v2.name, "2", "current"]
    assert lines[2].split()[:4] == ["windturbine", v1.name, "1", "previous"]

    done = edged("model", "rollback", "windturbine", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    assert v1.name in done.stdout and "no running daemon serves" in done.stdout
    assert ModelStore.for_model(state, "windturbine").current() == v1

    done = edged("model", "list", "--json", "--state-dir", str(state))
    rows = json.loads(done.stdout)["slots"]
    assert [(r["slot"], r["state"]) for r in rows] == [(v2.name, ""), (v1.name, "current")]

    done = edged("model", "rollback", "windturbine", "--state-dir", str(state))
    assert done.returncode == 1 and "no previous slot" in done.stderr
    done = edged("model", "rollback", "pumps", "--state-dir", str(state))
    assert done.returncode == 1 and "no model 'pumps'" in done.stderr


def test_the_config_names_the_state_dir(tmp_path):
    state = tmp_path / "var"
    ModelStore.for_model(state, "windturbine").seed(BUILTIN)
    config = tmp_path / "edged.yaml"
    config.write_text(f"""\
state_dir: {state}
sources:
  farm: {{type: simulator}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:windturbine"}}
""")
    done = edged("model", "list", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    assert [r["state"] for r in json.loads(done.stdout)["slots"]] == ["current"]
    config.write_text("state_dir: [1]\n")
    assert edged("model", "list", "-c", str(config)).returncode == 78
