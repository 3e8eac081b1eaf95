"""The edged plugin contract: every hook a plugin may implement.

A plugin is a module (or object) registered under the ``edged.plugins`` entry-point
group. It implements any of the hooks below, decorated with ``edged.hookimpl``::

    from edged.plugin import ComponentType, hookimpl

    @hookimpl
    def edged_component_types():
        return [ComponentType.actuator("jsonl", JsonlConfig, JsonlActuator)]

Hooks *register* things (component types, services, CLI commands) and *observe* the
lifecycle.
No sensor reading, model input or decision ever flows through a hook: the per-reading
path is built from the registered factories and runs on plain objects.

Hooks are grouped by the phase in which they fire.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from edged.plugin.registry import CliCommand, ComponentType, ServiceType

hookspec = pluggy.HookspecMarker("edged")

# -------------------------------------------------------------------------------------
# Registration: called once when the plugin manager is built, before any config is read.
# -------------------------------------------------------------------------------------


@hookspec
def edged_component_types() -> list[ComponentType]:
    """Register component types: sensor sources, preprocessors, inference backends and
    actuators.

    Called once per plugin manager, before configuration is validated. Return a list of
    :class:`edged.plugin.registry.ComponentType`, each naming its ``kind`` (``"source"``,
    ``"preprocessor"``, ``"inference"`` or ``"actuator"``), its ``name`` (the ``type:``
    key that selects it in YAML), its pydantic config model and a factory that builds the
    component from a validated config, typed per kind (``SourceFactory``, a preprocessor's
    ``PreprocessorFactory`` with the model's ``manifest`` by keyword, ...); a backend
    that can hot-swap models declares ``hot_swap=True``. ``ComponentType.source(...)``
    and its siblings build one with the factory typed for its kind.

    All results are collected. A plugin whose implementation raises, or registers an
    unknown kind, ``hot_swap`` on another kind than inference, or a kind and name that
    another plugin registers too, is left out whole with a warning that says why (a
    built-in keeps its names; of two others, both are left out): docs/plugins.md,
    "Broken plugins".
    """


@hookspec
def edged_service_types() -> list[ServiceType]:
    """Register services: what runs beside the pipelines for as long as a graph does,
    built from the config and the graph (the built-in ``dashboard``).

    Called once per plugin manager, like ``edged_component_types``. Return a list of
    :class:`edged.plugin.registry.ServiceType`: a ``name`` (unique among services), and
    ``build(config, graph)``, which returns an async context manager to run with the
    graph, or None when the config does not ask for it. Each graph (at start and after
    every reload) builds every registered service anew.

    All results are collected; a plugin whose implementation raises or registers a
    service name another plugin registers too is left out whole, as for
    ``edged_component_types``.
    """


@hookspec
def edged_cli_commands() -> list[CliCommand]:
    """Register sub-commands of the ``edged`` command line.

    Called once when the CLI starts. Return a list of :class:`edged.plugin.registry.CliCommand`
    (name, help text, a function that adds arguments to an ``argparse`` parser and a
    function that runs the command and returns the exit status).

    All results are collected; a plugin registering a reserved name (edged's own
    commands, a built-in plugin's) or one another plugin registers too is left out, as
    for ``edged_component_types``.
    """


# -------------------------------------------------------------------------------------
# Runtime lifecycle: called by the supervisor of `edged run` / `edged demo`.
# -------------------------------------------------------------------------------------


@hookspec
def edged_started(graph: Any, config: Any) -> None:
    """Every component of a newly built graph has started and the daemon is ready.

    Fires after start-up and again after each successful reload (with the new graph).
    ``graph`` is the running :class:`edged.runtime.graph.Graph` (typed ``Any`` here: the
    contract sits below the engine); ``config`` the validated
    :class:`edged.config.EdgedConfig`. Return value ignored;
    all implementations are called. Must not block: schedule nothing and return fast.
    """


@hookspec
def edged_stopping(graph: Any, reason: str) -> None:
    """A graph is about to stop; ``reason`` is ``"shutdown"`` or ``"reload"``.

    Fires before components are stopped. Return value ignored; all implementations are
    called. Must not block.
    """
