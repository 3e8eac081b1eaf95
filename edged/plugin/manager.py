"""Builds the plugin manager and the registry from the ``edged.plugins`` entry points.

Nothing is loaded at import time: callers build a manager with
:func:`make_plugin_manager` (the CLI once per process, tests once per test). Built-in
components come in through the same entry-point group as third-party plugins, so any
of them can be blocked by name.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy
import structlog

from edged.base.errors import PluginError
from edged.plugin import hookspecs
from edged.plugin.registry import (
    CliCommand,
    ComponentType,
    PluginInfo,
    Registry,
    ServiceType,
    how_to_block,
)

ENTRY_POINT_GROUP = "edged.plugins"
# Comma-separated plugin names to block, added to what the config and CLI block.
BLOCK_ENV = "EDGED_BLOCK_PLUGINS"
# Set to 1 to log every hook call (pluggy's tracing), as datasette does.
TRACE_ENV = "EDGED_TRACE_HOOKS"
#: What a registration hook may return an item of.
Offered = ComponentType | ServiceType | CliCommand
# The names of the CLI's own commands, which plugins may not take.
CORE_COMMANDS = frozenset({"run", "check-config", "plugins", "demo"})
# The distribution of the built-in plugins: in a clash, a built-in keeps its name.
BUILTIN_DISTRIBUTION = "edged"

log = structlog.get_logger("edged.plugins")


def blocked_from_env() -> tuple[str, ...]:
    raw = os.environ.get(BLOCK_ENV, "")
    return tuple(name.strip() for name in raw.split(",") if name.strip())


def make_plugin_manager(
    blocked: Iterable[str] = (), extra: Iterable[tuple[str, object]] = (), *,
    warn_broken: bool = True,
) -> tuple[pluggy.PluginManager, Registry]:
    """Load every ``edged.plugins`` entry point not blocked, plus ``extra`` (name,
    plugin) pairs (tests register in-process plugins this way), and collect what they
    register.

    A broken plugin (its import fails, it implements a hook that does not exist or with
    the wrong arguments, a registration hook raises or registers what no plugin may) is
    left out and listed in ``registry.broken`` with what went wrong, logged as
    ``plugin_broken`` unless ``warn_broken`` is false: the commands that do not need it
    still run. So are plugins that register a name another one registers, except a
    built-in, which keeps it.
    """
    blocked_names = tuple(dict.fromkeys([*blocked, *blocked_from_env()]))
    pm = pluggy.PluginManager("edged")
    pm.add_hookspecs(hookspecs)
    for name in blocked_names:
        pm.set_blocked(name)

    infos: dict[str, PluginInfo] = {}
    broken: dict[str, str] = {}
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        if pm.is_blocked(ep.name):
            continue
        dist = ep.dist
        infos[ep.name] = PluginInfo(
            name=ep.name,
            version=dist.version if dist else "?",
            distribution=dist.metadata["Name"] if dist else "?",
            module=ep.value,
        )
        try:
            plugin = ep.load()
        except Exception as exc:
            broken[ep.name] = f"failed to import {ep.value}: {_what(exc)}"
            continue
        _register(pm, ep.name, plugin, broken)
    for name, plugin in extra:
        if pm.is_blocked(name):
            continue
        infos[name] = PluginInfo(name=name, version="-", distribution="-", module=repr(plugin))
        _register(pm, name, plugin, broken)
    pm.check_pending()  # holds after _register: each plugin was checked alone

    if os.environ.get(TRACE_ENV) == "1":
        pm.trace.root.setwriter(lambda message: log.info("hook_trace", message=message.rstrip()))
        pm.enable_tracing()

    registry = _collect(pm, infos, blocked_names, broken)
    if warn_broken:
        for info in registry.broken:
            log.warning("plugin_broken", plugin=info.name, distribution=info.distribution,
                        version=info.version, error=info.error, fix=how_to_block(info.name))
    return pm, registry


def _what(exc: BaseException) -> str:
    """An exception for a message: its type, text and the line that raised it."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _register(pm: pluggy.PluginManager, name: str, plugin: object,
              broken: dict[str, str]) -> None:
    """Register ``plugin``, or record in ``broken`` why it cannot be: a hook with the
    wrong arguments (pluggy refuses it), or one that does not exist (a typo that would
    otherwise never be called: ``check_pending``, one plugin at a time)."""
    try:
        pm.register(plugin, name=name)
    except (pluggy.PluginValidationError, ValueError) as exc:  # ValueError: a name taken
        broken[name] = str(exc)
        return
    unknown = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()
                     if not caller.has_spec() and any(
                         impl.plugin is plugin and not impl.optionalhook
                         for impl in caller.get_hookimpls()))
    if unknown:
        pm.unregister(plugin, name=name)
        broken[name] = (f"implements {', '.join(unknown)}, which edged does not call "
                        f"(a misspelled hook?)")


def _collect(pm: pluggy.PluginManager, infos: dict[str, PluginInfo], blocked,
             broken: dict[str, str]) -> Registry:
    """Call the registration hooks one plugin at a time, so that everything registered
    is attributed to the plugin that registered it, and a plugin whose hook raises or
    registers what it may not is left out whole (nothing of it half registered)."""
    offered: dict[str, list[Offered]] = {}
    # Each hook's items checked as what that hook registers (whoever else registers what).
    checks = ((pm.hook.edged_component_types, Registry.check_component),
              (pm.hook.edged_service_types, Registry.check_service),
              (pm.hook.edged_cli_commands,
               lambda name, item: Registry.check_command(name, item, set(CORE_COMMANDS))))
    for hook, check in checks:
        for name, results in _per_plugin(pm, hook, broken):
            try:
                for item in results:
                    check(name, item)
            except PluginError as exc:
                broken[name] = str(exc)
            offered.setdefault(name, []).extend(results)
    _leave_out_clashes(offered, infos, broken)
    for name in broken:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)  # no lifecycle hook of a left-out plugin runs

    registry = Registry(blocked=tuple(blocked))
    registers: dict[str, list[str]] = {name: [] for name in infos}
    for name, items in offered.items():
        if name in broken:
            continue
        for item in items:
            if isinstance(item, CliCommand):
                registry.add_command(name, item, set(CORE_COMMANDS))
            elif isinstance(item, ServiceType):
                registry.add_service(name, item)
            else:
                registry.add_component(name, item)
            registers[name].append(_label(item))
    registry.plugins = [
        PluginInfo(**{**info.__dict__, "registers": tuple(registers[name])})
        for name, info in sorted(infos.items()) if name not in broken
    ]
    registry.broken = [PluginInfo(**{**info.__dict__, "error": broken[name]})
                       for name, info in sorted(infos.items()) if name in broken]
    return registry


def _label(item: Offered) -> str:
    if isinstance(item, CliCommand):
        return f"command:{item.name}"
    if isinstance(item, ServiceType):
        return f"service:{item.name}"
    return f"{item.kind}:{item.name}"


def _leave_out_clashes(offered: dict[str, list[Offered]],
                       infos: dict[str, PluginInfo], broken: dict[str, str]) -> None:
    """A name (a kind's type, a command) that several plugins register: a built-in keeps
    it and the others are left out; without a built-in among them, all of them are, as
    edged cannot tell which one the operator meant."""
    claims: dict[str, list[str]] = {}
    for name, items in offered.items():
        if name not in broken:
            for item in items:
                claims.setdefault(_label(item), []).append(name)
    for label, names in claims.items():
        if len(names) < 2:
            continue
        builtin = [name for name in names if infos[name].distribution == BUILTIN_DISTRIBUTION]
        keep = builtin if len(builtin) == 1 else []
        for name in names:
            if name in keep or name in broken:
                continue
            if keep:
                broken[name] = (f"registers {label}, which the built-in plugin {keep[0]!r} "
                                f"registers (a built-in keeps its names)")
            else:
                others = [repr(other) for other in names if other != name]
                broken[name] = (f"registers {label}, which {', '.join(others)} also "
                                f"register{'s' if len(others) == 1 else ''}: all of them "
                                f"are left out")


def _per_plugin(pm: pluggy.PluginManager, hook: pluggy.HookCaller, broken: dict[str, str]):
    """(plugin name, what it returned) for each plugin's implementation of ``hook``; a
    plugin whose implementation raises goes into ``broken`` instead. Each call goes
    through the manager's hook executor, not the bare function, so hook tracing
    (EDGED_TRACE_HOOKS) shows the registration hooks too; pluggy has no public call of
    one implementation (subset_hook_caller needs hashable plugins)."""
    for impl in hook.get_hookimpls():
        name = impl.plugin_name
        if name in broken:
            continue
        try:
            results = pm._hookexec(hook.name, [impl], {}, False)
            items = list(results[0]) if results and results[0] else []
        except Exception as exc:
            broken[name] = f"{hook.name}() raised {_what(exc)}"
            continue
        yield name, items
