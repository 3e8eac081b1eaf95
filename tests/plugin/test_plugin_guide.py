"""docs/plugins.md kept honest: its source example runs as it stands, and its table of
reserved command names is the code's."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from edged.plugin.manager import BUILTIN_DISTRIBUTION, CORE_COMMANDS

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "plugins.md"


def section(title: str) -> str:
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_the_source_example_runs_as_written(tmp_path):
    module, test = re.findall(r"```python\n(.*?)```", section("Writing a source"), re.DOTALL)
    assert module.startswith("# edged_lines.py") and test.startswith("# test_edged_lines.py")
    (tmp_path / "edged_lines.py").write_text(module)
    (tmp_path / "test_edged_lines.py").write_text(test)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", os.devnull, "test_edged_lines.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 passed" in done.stdout


def builtin_commands() -> dict[str, str]:
    """command -> built-in plugin, from the entry points pyproject.toml declares (the
    source, not what happens to be installed)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["name"] == BUILTIN_DISTRIBUTION
    commands = {}
    for name, module in project["project"]["entry-points"]["edged.plugins"].items():
        hook = getattr(importlib.import_module(module), "edged_cli_commands", None)
        for command in hook() if hook else ():
            commands[command.name] = name
    return commands


def test_the_reserved_command_names_are_the_codes():
    rows = re.findall(r"^\| `([a-z-]+)` \| (.+?) \|$", section("Reserved command names"),
                      re.MULTILINE)
    documented = dict(rows)
    assert len(documented) == len(rows), "a command twice in the table"
    expected = {name: "edged" for name in CORE_COMMANDS}
    expected.update({name: f"built-in plugin `{plugin}`"
                     for name, plugin in builtin_commands().items()})
    assert set(documented) == set(expected)
    for name, owner in documented.items():
        assert owner == expected[name] or owner.startswith(expected[name] + " ("), (name, owner)
