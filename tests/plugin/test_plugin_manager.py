"""The plugin manager factory: entry points, blocking, attribution, clashes, hook docs."""

from __future__ import annotations

import argparse
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest
from pydantic import Field

from edged import hookimpl
from edged.base.errors import PluginError
from edged.plugin import hookspecs
from edged.plugin.config import SourceConfig
from edged.plugin.manager import BLOCK_ENV, CORE_COMMANDS, ENTRY_POINT_GROUP, make_plugin_manager
from edged.plugin.registry import CliCommand, ComponentType

ROOT = Path(__file__).resolve().parents[2]

BUILTINS = {
    "simulator": ("edged.builtin.simulator", ["source:simulator"]),
    "replay": ("edged.builtin.replay", ["source:replay"]),
    "windturbine": ("edged.builtin.windturbine", ["preprocessor:windturbine"]),
    "onnx": ("edged.builtin.onnx", ["inference:onnx"]),
    "log": ("edged.builtin.log_actuator", ["actuator:log"]),
}


@pytest.fixture(autouse=True)
def _no_env_blocks(monkeypatch):
    monkeypatch.delenv(BLOCK_ENV, raising=False)


class EchoConfig(SourceConfig):
    type: str = Field("echo", description="Always echo.")


def _noop_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--times", type=int, default=1)


def _command(name: str) -> CliCommand:
    return CliCommand(name, f"the {name} command", _noop_arguments, lambda args: 0)


class EchoPlugin:
    """An in-process plugin registering one source type and one command."""

    @hookimpl
    def edged_component_types(self) -> list[ComponentType]:
        return [ComponentType("source", "echo", EchoConfig, lambda config, ctx: None)]

    @hookimpl
    def edged_cli_commands(self) -> list[CliCommand]:
        return [_command("echo")]


def plugin(**hooks) -> SimpleNamespace:
    """A plugin object whose attributes are ``hookimpl``-marked functions."""
    return SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


# -- built-ins come through the entry-point group --------------------------------------------


def test_builtins_are_loaded_from_the_entry_point_group():
    from importlib.metadata import entry_points

    ours = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)
            if ep.dist is not None and ep.dist.metadata["Name"] == "edged"}
    for name, (module, _) in BUILTINS.items():
        assert ours.get(name) == module, (name, ours)


def test_builtins_are_listed_with_distribution_and_registers():
    pm, registry = make_plugin_manager()
    infos = {info.name: info for info in registry.plugins}
    for name, (module, registers) in BUILTINS.items():
        info = infos[name]
        assert info.distribution == "edged", info
        assert info.module == module
        assert list(info.registers) == registers
        assert info.version not in ("", "?", "-")
        assert pm.get_plugin(name) is sys.modules[module]
    assert {"replay", "simulator"} <= set(registry.names("source"))
    assert "windturbine" in registry.names("preprocessor")
    assert "onnx" in registry.names("inference")
    assert "log" in registry.names("actuator")
    assert [info.name for info in registry.plugins] == sorted(infos)


def test_example_plugin_is_a_separate_distribution():
    _, registry = make_plugin_manager()
    info = next(info for info in registry.plugins if info.name == "jsonl")
    assert info.distribution == "edged-example"
    assert info.module == "edged_example"
    assert "actuator:jsonl" in info.registers


# -- blocking -----------------------------------------------------------------------------


def test_blocking_by_argument_removes_what_the_plugin_registers():
    pm, registry = make_plugin_manager(blocked=["replay", "log"])
    assert registry.component("source", "replay") is None
    assert registry.component("actuator", "log") is None
    assert registry.component("source", "simulator") is not None
    names = {info.name for info in registry.plugins}
    assert "replay" not in names and "log" not in names
    assert pm.is_blocked("replay")
    assert registry.blocked == ("replay", "log")


def test_blocking_by_environment(monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, " onnx , windturbine,")
    _, registry = make_plugin_manager(blocked=["replay"])
    assert "onnx" not in registry.names("inference")
    assert "windturbine" not in registry.names("preprocessor")
    assert "replay" not in registry.names("source")
    assert "simulator" in registry.names("source")
    assert registry.blocked == ("replay", "onnx", "windturbine")


def test_blocking_an_extra_plugin():
    _, registry = make_plugin_manager(blocked=["echo"], extra=[("echo", EchoPlugin())])
    assert registry.component("source", "echo") is None
    assert "echo" not in registry.commands


# -- in-process plugins -------------------------------------------------------------------


def test_extra_plugin_is_registered_and_attributed():
    echo = EchoPlugin()
    pm, registry = make_plugin_manager(extra=[("myplugin", echo)])
    assert pm.get_plugin("myplugin") is echo
    assert registry.component("source", "echo").config is EchoConfig
    assert registry.commands["echo"].help == "the echo command"
    info = next(info for info in registry.plugins if info.name == "myplugin")
    assert info.registers == ("source:echo", "command:echo")
    # Nothing registered by the extra plugin is attributed to another.
    for other in registry.plugins:
        if other.name != "myplugin":
            assert "source:echo" not in other.registers


def test_module_like_plugin_object():
    extra = plugin(edged_component_types=lambda: [
        ComponentType("source", "echo2", EchoConfig, lambda config, ctx: None)])
    _, registry = make_plugin_manager(extra=[("ns", extra)])
    assert registry.component("source", "echo2") is not None


# -- clashes and mistakes -----------------------------------------------------------------


def test_two_plugins_registering_the_same_type_name_both():
    clash = plugin(edged_component_types=lambda: [
        ComponentType("source", "simulator", EchoConfig, lambda config, ctx: None)])
    with pytest.raises(PluginError) as info:
        make_plugin_manager(extra=[("impostor", clash)])
    message = str(info.value)
    assert "source type 'simulator'" in message
    assert "'impostor'" in message
    assert "'simulator'" in message.split("by both", 1)[1]


def test_two_extra_plugins_clash():
    with pytest.raises(PluginError, match=r"registered by both '(one|two)' and '(one|two)'"):
        make_plugin_manager(extra=[("one", EchoPlugin()), ("two", EchoPlugin())])


def test_unknown_kind_is_rejected():
    odd = plugin(edged_component_types=lambda: [
        ComponentType("sink", "void", EchoConfig, lambda config, ctx: None)])  # type: ignore[arg-type]
    with pytest.raises(PluginError, match=r"'odd' registers 'void' of unknown kind 'sink'"):
        make_plugin_manager(extra=[("odd", odd)])


def test_only_a_backend_may_declare_hot_swap():
    odd = plugin(edged_component_types=lambda: [
        ComponentType("source", "swapper", EchoConfig, lambda config, ctx: None,
                      hot_swap=True)])
    with pytest.raises(PluginError, match=r"'odd' declares source 'swapper' hot_swap: only "
                       "a backend swaps models"):
        make_plugin_manager(extra=[("odd", odd)])


def test_typed_constructors_name_the_kind():
    def build(config, ctx, *, manifest):
        return manifest

    made = ComponentType.preprocessor("echo", EchoConfig, build, "says its manifest")
    assert (made.kind, made.name, made.factory, made.hot_swap) == ("preprocessor", "echo",
                                                                   build, False)
    assert ComponentType.inference("b", EchoConfig, build, hot_swap=True).hot_swap
    assert made.build(EchoConfig(), None, manifest={"a": 1}) == {"a": 1}
    with pytest.raises(TypeError, match="built for a model: pass manifest="):
        made.build(EchoConfig(), None)


@pytest.mark.parametrize("name", sorted(CORE_COMMANDS))
def test_command_clashing_with_a_core_command(name):
    rogue = plugin(edged_cli_commands=lambda: [_command(name)])
    with pytest.raises(PluginError) as info:
        make_plugin_manager(extra=[("rogue", rogue)])
    assert str(info.value) == (
        f"command {name!r} from plugin 'rogue' is already provided by 'edged'"
    )


def test_core_commands_are_the_clis():
    from edged.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(CORE_COMMANDS)


def test_misspelled_hook_is_rejected():
    typo = plugin(edged_component_typs=lambda: [])
    with pytest.raises(pluggy.PluginValidationError, match="edged_component_typs"):
        make_plugin_manager(extra=[("typo", typo)])


def test_hookimpl_with_wrong_arguments_is_rejected():
    wrong = plugin(edged_stopping=lambda graph, reason, extra: None)
    with pytest.raises(pluggy.PluginValidationError):
        make_plugin_manager(extra=[("wrong", wrong)])


# -- a factory, nothing at import time ----------------------------------------------------


def test_each_call_builds_an_independent_manager():
    pm1, reg1 = make_plugin_manager(extra=[("myplugin", EchoPlugin())])
    pm2, reg2 = make_plugin_manager(blocked=["replay"])
    assert pm1 is not pm2
    assert reg1.components is not reg2.components
    assert reg1.component("source", "echo") is not None
    assert reg2.component("source", "echo") is None
    assert reg1.component("source", "replay") is not None
    assert reg2.component("source", "replay") is None
    assert pm2.get_plugin("myplugin") is None
    assert reg1.blocked == ()


def test_importing_edged_loads_no_plugin_and_builds_no_manager(tmp_path):
    code = (
        "import gc, sys, pluggy\n"
        "import edged, edged.plugin.manager, edged.config, edged.app.cli, edged.plugin.hookspecs\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('edged.builtin', "
        "'edged_example')))\n"
        "managers = [o for o in gc.get_objects() if isinstance(o, pluggy.PluginManager)]\n"
        "print(loaded, len(managers))\n"
    )
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[] 0", result.stdout + result.stderr


# -- the hook reference is kept in sync with the code -------------------------------------


def _hookspecs() -> dict[str, object]:
    return {name: function for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
            if hasattr(function, "edged_spec")}


def test_hookspecs_exist():
    names = set(_hookspecs())
    assert {"edged_component_types", "edged_cli_commands", "edged_started",
            "edged_stopping"} <= names


def test_every_function_in_hookspecs_is_a_hookspec():
    functions = {name for name, function in inspect.getmembers(hookspecs, inspect.isfunction)
                 if function.__module__ == hookspecs.__name__}
    assert functions == set(_hookspecs())


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hook_is_named_and_documented(name):
    assert name.startswith("edged_")
    doc = inspect.getdoc(_hookspecs()[name]) or ""
    assert len(doc) > 80, f"{name}: docstring too short"
    assert re.search(r"\b(called|fires)\b", doc, re.IGNORECASE), (
        f"{name}: docstring must say when the hook fires")


@pytest.mark.parametrize("name", sorted(_hookspecs()))
def test_hook_is_in_the_plugin_guide(name):
    guide = ROOT / "docs" / "plugins.md"
    assert guide.is_file(), "docs/plugins.md (the hook reference) is missing"
    assert re.search(rf"`{name}\b", guide.read_text(encoding="utf-8")), (
        f"hook {name} is not documented in docs/plugins.md")


def test_plugin_guide_names_no_hook_that_does_not_exist():
    guide = ROOT / "docs" / "plugins.md"
    assert guide.is_file(), "docs/plugins.md (the hook reference) is missing"
    mentioned = set(re.findall(r"`(edged_[a-z_]+)\(", guide.read_text(encoding="utf-8")))
    assert mentioned, "docs/plugins.md mentions no hook"
    assert mentioned <= set(_hookspecs()), mentioned - set(_hookspecs())


def _traced(*args: str, trace: str | None = "1") -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EDGED_TRACE_HOOKS", BLOCK_ENV)}
    if trace is not None:
        env["EDGED_TRACE_HOOKS"] = trace
    done = subprocess.run([sys.executable, "-m", "edged", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return [line for line in done.stderr.splitlines() if "hook_trace" in line]


def test_hook_tracing_shows_the_registration_hooks_too():
    # Registration hooks are called one plugin at a time (for attribution), through the
    # manager's executor: EDGED_TRACE_HOOKS must show them, as it shows every other hook,
    # and at the default log level (info): no --log-level needed.
    traced = _traced("--log-format", "json", "plugins", "--json")
    assert any("edged_component_types" in line and "simulator" in line for line in traced)
    assert any("edged_cli_commands" in line for line in traced)
    assert all('"level": "info"' in line for line in traced), traced[:3]


def test_hook_tracing_at_the_default_level_in_check_config():
    traced = _traced("check-config", "configs/demo.yaml")
    assert any("edged_component_types" in line for line in traced), traced[:3]
    assert any("finish edged_component_types" in line for line in traced)


@pytest.mark.parametrize("trace", [None, "0"])
def test_no_hook_trace_unless_asked(trace):
    assert _traced("check-config", "configs/demo.yaml", trace=trace) == []
