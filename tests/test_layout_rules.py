"""Design rules of the layout: unique import names, no cloud code on the device, one hook
contract, built-in plugins where pyproject says they are."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edged"
CLOUD_NAMES = ("edged_cloud", "cloud_tools")


def _sources(*roots: Path) -> list[Path]:
    return sorted(path for root in roots for path in root.rglob("*.py")
                  if ".venv" not in path.parts and "build" not in path.parts)


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, statically or by a constant name through
    ``importlib.import_module`` / ``__import__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0]
            if called in ("import_module", "__import__") and isinstance(first, ast.Constant) \
                    and isinstance(first.value, str):
                names.add(first.value)
    return names


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_no_generic_top_level_import_names(tmp_path):
    # Isolated and outside the checkout: only what is installed counts, not folders that
    # happen to sit in the current directory.
    code = ("import importlib.util as u\n"
            "print([n for n in ('plugins', 'cloud_tools') if u.find_spec(n) is not None])")
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_installed_packages_have_unique_names(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('edged').origin)"
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    assert Path(result.stdout.strip()) == PACKAGE / "__init__.py"
    assert _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"] == ["edged*"]


def test_the_import_scanner_sees_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import edged_cloud.jobs\nfrom cloud_tools import x\n"
                      "import importlib\nimportlib.import_module('edged_cloud')\n")
    assert _imported_modules(sample) == {"edged_cloud.jobs", "cloud_tools", "importlib",
                                         "edged_cloud"}


@pytest.mark.parametrize("path", _sources(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_device_code_never_imports_cloud_code(path):
    offending = sorted(name for name in _imported_modules(path)
                       if name.split(".")[0] in CLOUD_NAMES)
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


@pytest.mark.parametrize("path", _sources(PACKAGE), ids=lambda p: str(p.relative_to(ROOT)))
def test_device_code_never_imports_the_test_rig(path):
    offending = sorted(name for name in _imported_modules(path)
                       if name.split(".")[0] == "tests")
    assert not offending, f"{path.relative_to(ROOT)} imports {offending}"


#: What the plugin-author kit must not bring into the device package: brokers, fake cloud
#: services, child processes and package installs live in tests/support.
RIG_MODULES = ("subprocess", "shutil", "socket", "http", "ssl", "threading", "moto", "boto3",
               "botocore", "aiomqtt", "paho", "cryptography")


def test_the_plugin_author_kit_is_small_and_starts_no_rig():
    kit = PACKAGE / "testing.py"
    offending = sorted(name for name in _imported_modules(kit)
                       if name.split(".")[0] in RIG_MODULES)
    assert not offending, f"edged/testing.py imports {offending}"
    assert len(kit.read_text(encoding="utf-8").splitlines()) <= 200


def test_the_package_has_sources():
    assert len(_sources(PACKAGE)) > 20


def test_hookspecs_module_is_the_only_hookspec_marker():
    roots = [PACKAGE, ROOT / "plugins", ROOT / "cloud_tools"]
    found = []
    for path in _sources(*(root for root in roots if root.is_dir())):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr == "HookspecMarker") or (
                    isinstance(node, ast.Name) and node.id == "HookspecMarker") or (
                    isinstance(node, ast.alias) and node.name == "HookspecMarker"):
                found.append(path.relative_to(ROOT).as_posix())
    assert sorted(set(found)) == ["edged/plugin/hookspecs.py"]


def test_hookimpl_marker_is_defined_once():
    from edged import hookimpl
    from edged.plugin import hookspecs

    assert hookimpl.project_name == hookspecs.hookspec.project_name == "edged"


BUILTIN_ENTRY_POINTS = _pyproject()["project"]["entry-points"]["edged.plugins"]


def test_pyproject_lists_the_builtins():
    assert {"simulator", "replay", "windturbine", "onnx", "log"} <= set(BUILTIN_ENTRY_POINTS)


@pytest.mark.parametrize(("name", "module"), sorted(BUILTIN_ENTRY_POINTS.items()))
def test_builtin_plugin_module_exists_and_registers(name, module):
    assert module.startswith("edged.builtin."), module
    base = ROOT / Path(*module.split("."))
    files = [base.with_suffix(".py"), base / "__init__.py"]
    assert any(f.is_file() for f in files), f"entry point {name} names {module}: no {base}.py"
    loaded = importlib.import_module(module)
    hooks = [getattr(loaded, name, None)
             for name in ("edged_component_types", "edged_service_types",
                          "edged_cli_commands")]
    hooks = [hook for hook in hooks if callable(hook)]
    assert hooks, f"{module} implements no registration hook"
    for hook in hooks:
        assert hasattr(hook, "edged_impl"), f"{module}.{hook.__name__} is not a hookimpl"
    assert any(hook() for hook in hooks), f"{module} registers nothing"


def test_installed_entry_points_match_pyproject():
    from importlib.metadata import entry_points

    installed = {ep.name: ep.value for ep in entry_points(group="edged.plugins")
                 if ep.dist is not None and ep.dist.metadata["Name"] == "edged"}
    assert installed == BUILTIN_ENTRY_POINTS, "stale install: run `pip install -e .`"


# -- floors: who may import whom (docs/architecture.md) ----------------------------------

#: The floors of the house, bottom first; a module imports only its own floor and below.
#: Imports inside functions and under TYPE_CHECKING count too: a lazy import is still an
#: arrow, and hiding one is how the old loops grew.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("edged.base", "edged")),
    ("plugin contract and domain", ("edged.plugin", "edged.windturbine")),
    ("shared infrastructure", ("edged.mqtt", "edged.model")),
    ("config", ("edged.config",)),
    ("engine", ("edged.runtime",)),
    ("services", ("edged.capture", "edged.health", "edged.watch", "edged.dashboard")),
    ("plugins and agent", ("edged.builtin", "edged.agent")),
    ("cloud link", ("edged.cloud",)),
    ("application", ("edged.app", "edged.testing", "edged.__main__")),
]


def floor_of(module: str) -> int:
    """The floor of ``module``: that of its longest listed prefix."""
    best, length = -1, -1
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = index, len(prefix)
    return best


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _edged_imports(path: Path) -> set[str]:
    """Every edged module (or module.name) ``path`` imports, wherever the import stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "edged" or name.startswith("edged.")}


DEVICE_MODULES = [p for p in _sources(PACKAGE) if "proto" not in p.parts]


@pytest.mark.parametrize("path", DEVICE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_module_imports_only_its_floor_and_below(path):
    module = _module_name(path)
    floor = floor_of(module)
    assert floor >= 0, f"{module} is on no floor: add its package to FLOORS"
    upward = sorted(f"{name} ({FLOORS[floor_of(name)][0]})" for name in _edged_imports(path)
                    if floor_of(name) > floor)
    assert not upward, f"{module} ({FLOORS[floor][0]}) imports up: {upward}"


def test_the_floor_check_sees_an_upward_import(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from edged.cloud.link import build_cloud\n")
    assert floor_of("edged.runtime.pipeline") < floor_of(
        next(iter(_edged_imports(probe))))


def test_few_modules_lie_loose_in_the_package():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "testing.py"], loose


def test_the_drawing_of_the_floors_is_current():
    # docs/floors.svg is drawn from the imports; a change that moves an arrow redraws it.
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "draw_floors.py"),
                             "--check"], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr


def test_a_device_without_cloud_or_metrics_does_not_load_them():
    # The assembly imports what a config asks for, no more: 12 MB of RSS on a device
    # that has no cloud section, no /metrics and no capture.
    code = ("import sys\n"
            "from edged.app.assembly import build_graph\n"
            "from edged.config import load_config\n"
            "from edged.plugin.manager import make_plugin_manager\n"
            "_, registry = make_plugin_manager()\n"
            "build_graph(load_config('configs/demo.yaml', registry), registry)\n"
            "print(sorted(m for m in ('cryptography', 'prometheus_client', 'edged.cloud.link',"
            " 'edged.capture.pipeline_capture') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120, check=True)
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
