"""docs/install.md states the platforms and Python versions edged supports: the Python
floor it names is pyproject's, and the README points at it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "docs" / "install.md"


def test_the_python_floor_is_pyprojects():
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    version = re.fullmatch(r">=(\d+\.\d+)", floor).group(1)
    text = INSTALL.read_text()
    assert f"**{version} or newer** (`requires-python = \"{floor}\"`)" in text
    assert f"Python **{version} or\nnewer**" in (ROOT / "README.md").read_text()


def test_the_platforms_are_named_where_an_operator_looks():
    text = " ".join(INSTALL.read_text().split())
    for platform in ("**x86_64**", "**aarch64**", "## 32-bit ARM (armv7l)"):
        assert platform in INSTALL.read_text(), platform
    assert "publishes no wheel for 32-bit ARM" in text
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "32-bit ARM (armv7l) is not" in readme and "(docs/install.md)" in readme


def test_the_armv7_hint_of_check_config_points_here():
    from edged.config.dependencies import ONNXRUNTIME

    assert "docs/install.md" in ONNXRUNTIME.note
