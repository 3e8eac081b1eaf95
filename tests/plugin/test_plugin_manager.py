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

import pytest
import structlog
from pydantic import Field

from edged import hookimpl
from edged.plugin import hookspecs
from edged.plugin.config import SourceConfig
from edged.plugin.manager import BLOCK_ENV, CORE_COMMANDS, ENTRY_POINT_GROUP, make_plugin_manager
from edged.plugin.registry import CliCommand, ComponentType, ServiceType

ROOT = Path(__file__).resolve().parents[2]

BUILTINS = {
    "simulator": ("edged.builtin.simulator", ["source:simulator"]),
    "replay": ("edged.builtin.replay", ["source:replay"]),
    "windturbine": ("edged.builtin.windturbine", ["preprocessor:windturbine"]),
    "onnx": ("edged.builtin.onnx", ["inference:onnx"]),
    "log": ("edged.builtin.log_actuator", ["actuator:log"]),
    "dashboard": ("edged.builtin.dashboard", ["service:dashboard"]),
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


# -- clashes and mistakes: the plugin at fault is left out, the others load --------------


def _broken(registry, name: str) -> str:
    """The error of broken plugin ``name``, after checking it registers nothing."""
    (info,) = [info for info in registry.broken if info.name == name]
    assert name not in {p.name for p in registry.plugins}
    assert info.registers == ()
    return info.error


def test_a_plugin_taking_a_builtins_type_name_is_left_out():
    clash = plugin(edged_component_types=lambda: [
        ComponentType("source", "simulator", EchoConfig, lambda config, ctx: None),
        ComponentType("source", "echo", EchoConfig, lambda config, ctx: None)])
    pm, registry = make_plugin_manager(extra=[("impostor", clash)])
    assert _broken(registry, "impostor") == (
        "registers source:simulator, which the built-in plugin 'simulator' registers "
        "(a built-in keeps its names)")
    # The built-in keeps its type; nothing of the impostor is registered, not even echo.
    assert registry.component("source", "simulator").config is not EchoConfig
    assert registry.component("source", "echo") is None
    assert pm.get_plugin("impostor") is None


def test_two_extra_plugins_clash_and_both_are_left_out():
    _, registry = make_plugin_manager(extra=[("one", EchoPlugin()), ("two", EchoPlugin())])
    assert _broken(registry, "one").startswith("registers source:echo, which 'two' also "
                                               "registers: all of them are left out")
    assert "'one'" in _broken(registry, "two")
    assert registry.component("source", "echo") is None
    assert "echo" not in registry.commands
    assert registry.component("source", "simulator") is not None


def test_services_are_registered_attributed_and_clash_like_types():
    def nothing(config, graph):
        return None

    watcher = plugin(edged_service_types=lambda: [ServiceType("watcher", nothing)])
    _, registry = make_plugin_manager(extra=[("watcher", watcher)])
    assert registry.services["watcher"].build is nothing
    assert next(i for i in registry.plugins if i.name == "watcher").registers == (
        "service:watcher",)
    impostor = plugin(edged_service_types=lambda: [ServiceType("dashboard", nothing)])
    _, registry = make_plugin_manager(extra=[("impostor", impostor)])
    assert _broken(registry, "impostor") == (
        "registers service:dashboard, which the built-in plugin 'dashboard' registers "
        "(a built-in keeps its names)")
    assert registry.services["dashboard"].build is not nothing
    odd = plugin(edged_service_types=lambda: ["not a service"])
    _, registry = make_plugin_manager(extra=[("odd", odd)])
    assert _broken(registry, "odd") == "plugin 'odd' registers 'not a service', not a ServiceType"


def test_unknown_kind_is_rejected():
    odd = plugin(edged_component_types=lambda: [
        ComponentType("sink", "void", EchoConfig, lambda config, ctx: None)])  # type: ignore[arg-type]
    _, registry = make_plugin_manager(extra=[("odd", odd)])
    assert _broken(registry, "odd") == (
        "plugin 'odd' registers 'void' of unknown kind 'sink' (known: source, "
        "preprocessor, inference, actuator)")


def test_something_else_than_a_component_type_is_rejected():
    odd = plugin(edged_component_types=lambda: ["jsonl"])
    _, registry = make_plugin_manager(extra=[("odd", odd)])
    assert _broken(registry, "odd") == "plugin 'odd' registers 'jsonl', not a ComponentType"


def test_only_a_backend_may_declare_hot_swap():
    odd = plugin(edged_component_types=lambda: [
        ComponentType("source", "swapper", EchoConfig, lambda config, ctx: None,
                      hot_swap=True)])
    _, registry = make_plugin_manager(extra=[("odd", odd)])
    assert _broken(registry, "odd") == (
        "plugin 'odd' declares source 'swapper' hot_swap: only a backend swaps models")


def test_a_registration_hook_that_raises_leaves_its_plugin_out():
    def explode():
        raise RuntimeError("no config dir")

    bad = plugin(edged_component_types=explode, edged_cli_commands=lambda: [_command("bad")])
    _, registry = make_plugin_manager(extra=[("bad", bad), ("myplugin", EchoPlugin())])
    error = _broken(registry, "bad")
    assert error.startswith("edged_component_types() raised RuntimeError: no config dir (")
    assert __file__ in error  # where it raised
    # Its other hook's command is not registered either; the other plugin is.
    assert "bad" not in registry.commands
    assert registry.component("source", "echo") is not None


def test_a_broken_plugin_runs_no_lifecycle_hook():
    calls = []
    bad = plugin(edged_component_types=lambda: 1 / 0,
                 edged_stopping=lambda graph, reason: calls.append(reason))
    pm, registry = make_plugin_manager(extra=[("bad", bad)])
    assert "ZeroDivisionError" in _broken(registry, "bad")
    pm.hook.edged_stopping(graph=None, reason="shutdown")
    assert calls == []


def test_broken_plugins_are_logged_with_how_to_block_them():
    bad = plugin(edged_component_types=lambda: 1 / 0)
    with structlog.testing.capture_logs() as logged:
        make_plugin_manager(extra=[("bad", bad)])
    (entry,) = [e for e in logged if e["event"] == "plugin_broken"]
    assert entry["log_level"] == "warning"
    assert entry["plugin"] == "bad" and entry["distribution"] == "-"
    assert entry["error"].startswith("edged_component_types() raised ZeroDivisionError")
    assert entry["fix"] == ("block it with `edged -p no:bad ...`, EDGED_BLOCK_PLUGINS=bad or "
                            "`plugins: {block: [bad]}` in the config")
    with structlog.testing.capture_logs() as logged:
        make_plugin_manager(extra=[("bad", bad)], warn_broken=False)
    assert [e for e in logged if e["event"] == "plugin_broken"] == []


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
    rogue = plugin(edged_cli_commands=lambda: [_command(name), _command("fine")])
    _, registry = make_plugin_manager(extra=[("rogue", rogue)])
    assert _broken(registry, "rogue") == (
        f"command {name!r} from plugin 'rogue' is already provided by 'edged'")
    assert "fine" not in registry.commands


def test_command_clashing_with_a_builtin_plugins_command():
    rogue = plugin(edged_cli_commands=lambda: [_command("model")])
    _, registry = make_plugin_manager(extra=[("rogue", rogue)])
    assert _broken(registry, "rogue") == (
        "registers command:model, which the built-in plugin 'model' registers (a built-in "
        "keeps its names)")
    assert registry.commands["model"] is not None


def test_core_commands_are_the_clis():
    from edged.app.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == set(CORE_COMMANDS)


def test_misspelled_hook_is_rejected():
    typo = plugin(edged_component_typs=lambda: [])
    pm, registry = make_plugin_manager(extra=[("typo", typo)])
    assert _broken(registry, "typo") == (
        "implements edged_component_typs, which edged does not call (a misspelled hook?)")
    assert pm.get_plugin("typo") is None
    pm.check_pending()


def test_an_optional_hook_that_does_not_exist_is_allowed():
    later = SimpleNamespace(edged_future_hook=hookimpl(optionalhook=True)(lambda: None))
    _, registry = make_plugin_manager(extra=[("later", later)])
    assert "later" in {p.name for p in registry.plugins}
    assert registry.broken == []


def test_hookimpl_with_wrong_arguments_is_rejected():
    wrong = plugin(edged_stopping=lambda graph, reason, extra: None)
    _, registry = make_plugin_manager(extra=[("wrong", wrong)])
    assert "edged_stopping" in _broken(registry, "wrong")
    assert "extra" in _broken(registry, "wrong")


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
