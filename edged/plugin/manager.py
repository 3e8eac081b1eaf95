"""Builds the plugin manager and the registry from the ``edged.plugins`` entry points.

Nothing is loaded at import time: callers build a manager with
:func:`make_plugin_manager` (the CLI once per process, tests once per test). Built-in
components come in through the same entry-point group as third-party plugins, so any
of them can be blocked by name.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy
import structlog

from edged.base.errors import PluginError
from edged.plugin import hookspecs
from edged.plugin.registry import PluginInfo, Registry

ENTRY_POINT_GROUP = "edged.plugins"
# Comma-separated plugin names to block, added to what the config and CLI block.
BLOCK_ENV = "EDGED_BLOCK_PLUGINS"
# Set to 1 to log every hook call (pluggy's tracing), as datasette does.
TRACE_ENV = "EDGED_TRACE_HOOKS"
# The names of the CLI's own commands, which plugins may not take.
CORE_COMMANDS = frozenset({"run", "check-config", "plugins", "demo"})

log = structlog.get_logger("edged.plugins")


def blocked_from_env() -> tuple[str, ...]:
    raw = os.environ.get(BLOCK_ENV, "")
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def make_plugin_manager(
    blocked: Iterable[str] = (), extra: Iterable[tuple[str, object]] = ()
) -> tuple[pluggy.PluginManager, Registry]:
    """Load every ``edged.plugins`` entry point not blocked, plus ``extra`` (name,
    plugin) pairs (tests register in-process plugins this way), and collect what they
    register."""
    blocked_names = tuple(dict.fromkeys([*blocked, *blocked_from_env()]))
    pm = pluggy.PluginManager("edged")
    pm.add_hookspecs(hookspecs)
    for name in blocked_names:
        pm.set_blocked(name)

    infos: dict[str, PluginInfo] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if pm.is_blocked(ep.name):
            continue
        try:
            plugin = ep.load()
        except Exception as exc:
            raise PluginError(f"plugin {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
        pm.register(plugin, name=ep.name)
        dist = ep.dist
        infos[ep.name] = PluginInfo(
            name=ep.name,
            version=dist.version if dist else "?",
            distribution=dist.metadata["Name"] if dist else "?",
            module=ep.value,
        )
    for name, plugin in extra:
        if pm.is_blocked(name):
            continue
        pm.register(plugin, name=name)
        infos[name] = PluginInfo(name=name, version="-", distribution="-", module=repr(plugin))
    pm.check_pending()

    if os.environ.get(TRACE_ENV) == "1":
        pm.trace.root.setwriter(lambda message: log.info("hook_trace", message=message.rstrip()))
        pm.enable_tracing()

    return pm, _collect(pm, infos, blocked_names)


def _collect(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], blocked) -> Registry:
    """Call the registration hooks one plugin at a time, so that everything registered
    is attributed to the plugin that registered it."""
    registry = Registry(blocked=tuple(blocked))
    registers: dict[str, list[str]] = {name: [] for name in infos}
    for impl, components in _per_plugin(pm, pm.hook.edged_component_types):
        for component in components:
            registry.add_component(impl.plugin_name, component)
            registers[impl.plugin_name].append(f"{component.kind}:{component.name}")
    for impl, commands in _per_plugin(pm, pm.hook.edged_cli_commands):
        for command in commands:
            registry.add_command(impl.plugin_name, command, set(CORE_COMMANDS))
            registers[impl.plugin_name].append(f"command:{command.name}")
    registry.plugins = [
        PluginInfo(**{**info.__dict__, "registers": tuple(registers[name])})
        for name, info in sorted(infos.items())
    ]
    return registry


def _per_plugin(pm: pluggy.PluginManager, hook: pluggy.HookCaller):
    """(implementation, what it returned) for each plugin's implementation of ``hook``.
    Each call goes through the manager's hook executor, not the bare function, so hook
    tracing (EDGED_TRACE_HOOKS) shows the registration hooks too; pluggy has no public
    call of one implementation (subset_hook_caller needs hashable plugins)."""
    for impl in hook.get_hookimpls():
        results = pm._hookexec(hook.name, [impl], {}, False)
        yield impl, results[0] if results and results[0] else ()
