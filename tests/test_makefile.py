"""The Makefile's two install sets: `make demo` installs the device package alone,
`make test` (and `make venv`) the development set on top; each set is rebuilt when its
inputs change and only then. Checked with `make -n` on a copy of the Makefile in a
scratch tree (what make would run, without running it); docs say that `make demo`
really runs without the dev extras (the lead's scratch clone check)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INPUTS = ("pyproject.toml", "plugins/edged-example/pyproject.toml",
          "cloud_tools/pyproject.toml", "Makefile")
DEVICE = "pip install --quiet -e ."
DEV = "pip install --quiet -e '.[dev]' -e plugins/edged-example"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make")


@pytest.fixture
def tree(tmp_path) -> Path:
    for name in INPUTS:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
        os.utime(tmp_path / name, (1_000_000, 1_000_000))
    return tmp_path


def would_run(tree: Path, target: str) -> str:
    # Run as from a shell even under `make test`: a parent make's MAKELEVEL adds
    # "Entering directory" lines and its MAKEFLAGS would pass its variables down.
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS", "DEMO_ARGS")}
    done = subprocess.run(["make", "--no-print-directory", "-n", target], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout


def stamp(tree: Path, name: str, at: float = 2_000_000) -> None:
    path = tree / ".venv" / name
    path.parent.mkdir(exist_ok=True)
    path.touch()
    os.utime(path, (at, at))


def test_demo_installs_the_device_package_alone(tree):
    plan = would_run(tree, "demo")
    assert DEVICE in plan
    assert "[dev]" not in plan and "edged-example" not in plan and "cloud_tools" not in plan
    assert plan.rstrip().splitlines()[-1].endswith("edged demo -c configs/demo.yaml "
                                                   "--duration 60")


@pytest.mark.parametrize("target", ["test", "venv", "lint", "fuzz"])
def test_test_and_venv_install_the_development_set(tree, target):
    plan = would_run(tree, target)
    assert DEVICE in plan and DEV in plan and "-e 'cloud_tools[train]'" in plan
    assert plan.index(DEVICE) < plan.index(DEV)
    if target == "venv":
        assert "pytest" not in plan and "ruff check" not in plan  # builds, runs nothing


def test_fresh_stamps_install_nothing(tree):
    stamp(tree, ".installed-device")
    stamp(tree, ".installed-dev")
    assert "pip" not in would_run(tree, "demo")
    assert "pip" not in would_run(tree, "test")


def test_an_example_plugin_change_rebuilds_only_the_development_set(tree):
    stamp(tree, ".installed-device")
    stamp(tree, ".installed-dev")
    os.utime(tree / "plugins/edged-example/pyproject.toml", (3_000_000, 3_000_000))
    assert "pip" not in would_run(tree, "demo")
    plan = would_run(tree, "test")
    assert DEV in plan and DEVICE not in plan


def test_a_device_package_change_rebuilds_both(tree):
    stamp(tree, ".installed-device")
    stamp(tree, ".installed-dev")
    os.utime(tree / "pyproject.toml", (3_000_000, 3_000_000))
    assert DEVICE in would_run(tree, "demo")
    plan = would_run(tree, "test")
    assert DEVICE in plan and DEV in plan


def test_after_the_demo_the_tests_add_only_the_development_set(tree):
    stamp(tree, ".installed-device")
    plan = would_run(tree, "test")
    assert DEV in plan and DEVICE not in plan


def test_the_dashboard_demo_adds_only_the_dashboard_extra(tree):
    plan = would_run(tree, "dashboard-demo")
    assert DEVICE in plan and "pip install --quiet -e '.[dashboard]'" in plan
    assert "[dev]" not in plan and "cloud_tools" not in plan
    assert plan.rstrip().splitlines()[-1].endswith(
        "edged demo -c configs/demo.yaml --dashboard 127.0.0.1:8088")
