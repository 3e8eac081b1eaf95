"""What plugins register: component types, services and CLI commands, and who
registered them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

import pydantic

from edged.base.errors import PluginError
from edged.plugin.components import Actuator, BuildContext, InferenceBackend, Preprocessor, Source

Kind = Literal["source", "preprocessor", "inference", "actuator"]
KINDS: tuple[Kind, ...] = ("source", "preprocessor", "inference", "actuator")

#: A kind's config model; a factory takes its own (``SourceFactory[MyConfig]``).
ConfigT_contra = TypeVar("ConfigT_contra", bound=pydantic.BaseModel, contravariant=True)

# What each kind's factory is called with and returns. A factory builds and must not start
# anything: starting happens when the runtime enters the component (async with).
SourceFactory = Callable[[ConfigT_contra, BuildContext], Source]
InferenceFactory = Callable[[ConfigT_contra, BuildContext], InferenceBackend]
ActuatorFactory = Callable[[ConfigT_contra, BuildContext], Actuator]


class PreprocessorFactory(Protocol[ConfigT_contra]):
    """A preprocessor's factory: its parameters come from the model it serves, so it is
    handed that model's manifest (a dict) as the keyword ``manifest``."""

    def __call__(self, config: ConfigT_contra, ctx: BuildContext, /, *,
                 manifest: dict[str, Any]) -> Preprocessor: ...


Factory = (SourceFactory[Any] | PreprocessorFactory[Any] | InferenceFactory[Any]
           | ActuatorFactory[Any])


@dataclass(frozen=True)
class ComponentType:
    """A component type a plugin offers, selected in YAML by ``type: <name>``.

    ``factory`` is called with the validated config (an instance of ``config``) and a
    :class:`BuildContext`, and a preprocessor's also with ``manifest=`` (see the kind's
    ``*Factory`` alias); it must not start anything. ``hot_swap`` (inference only): the
    backend is a :class:`~edged.plugin.components.SwappableBackend`, so IoT Jobs may
    replace its ``store:`` model in a running pipeline. The constructors named after the
    kinds (``ComponentType.source(...)``) type the factory for its kind.
    """

    kind: Kind
    name: str
    config: type[pydantic.BaseModel]
    factory: Factory
    description: str = ""
    hot_swap: bool = False

    def build(self, config: pydantic.BaseModel, ctx: BuildContext, *,
              manifest: dict[str, Any] | None = None) -> Any:
        """The component, from ``factory`` called as its kind's alias says: a preprocessor
        is built for a model (``manifest`` required), the other kinds without one."""
        if self.kind != "preprocessor":
            return self.factory(config, ctx)  # type: ignore[call-arg]
        if manifest is None:
            raise TypeError(f"preprocessor {self.name!r} is built for a model: pass manifest=")
        return self.factory(config, ctx, manifest=manifest)  # type: ignore[call-arg]

    @classmethod
    def source(cls, name: str, config: type[pydantic.BaseModel],
               factory: SourceFactory[Any], description: str = "") -> ComponentType:
        return cls("source", name, config, factory, description)

    @classmethod
    def preprocessor(cls, name: str, config: type[pydantic.BaseModel],
                     factory: PreprocessorFactory[Any], description: str = "") -> ComponentType:
        return cls("preprocessor", name, config, factory, description)

    @classmethod
    def inference(cls, name: str, config: type[pydantic.BaseModel],
                  factory: InferenceFactory[Any], description: str = "", *,
                  hot_swap: bool = False) -> ComponentType:
        return cls("inference", name, config, factory, description, hot_swap)

    @classmethod
    def actuator(cls, name: str, config: type[pydantic.BaseModel],
                 factory: ActuatorFactory[Any], description: str = "") -> ComponentType:
        return cls("actuator", name, config, factory, description)


#: A service's factory: the validated config (``edged.config.EdgedConfig``) and the
#: graph it runs with (``edged.runtime.graph.Graph``; both typed Any below the engine).
ServiceFactory = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class ServiceType:
    """A service a plugin offers: something that runs beside the pipelines for as long
    as a graph does (the dashboard), reading what the graph's pipelines, sources and
    actuators do.

    ``build(config, graph)`` returns the service, an async context manager the runtime
    enters as the graph starts (after its pipelines and actuators, before its sources,
    so it sees the first decision) and leaves as it stops (after the sources), or None
    when ``config`` does not ask for it; it must not start anything. Whatever it
    subscribes to (pipelines' ``subscribers``, actuator bindings' ``observers``) it
    subscribes to there. A build that raises is a config error, like a component's.
    """

    name: str
    build: ServiceFactory
    description: str = ""


@dataclass(frozen=True)
class CliCommand:
    """A sub-command of ``edged``: ``run(args)`` returns the process exit status."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class PluginInfo:
    """One plugin, as `edged plugins` shows it; ``error`` says what went wrong with a
    broken one (left out: it registers nothing)."""

    name: str
    version: str
    distribution: str
    module: str
    registers: tuple[str, ...] = ()
    error: str = ""

    def describe(self) -> str:
        """``'NAME' from DISTRIBUTION VERSION``, for messages."""
        return f"{self.name!r} from {self.distribution} {self.version}"


def how_to_block(name: str) -> str:
    """What an operator writes to leave plugin ``name`` out, for error messages."""
    return (f"block it with `edged -p no:{name} ...`, EDGED_BLOCK_PLUGINS={name} or "
            f"`plugins: {{block: [{name}]}}` in the config")


@dataclass
class Registry:
    """Everything registered by the loaded plugins; built once per plugin manager."""

    components: dict[tuple[Kind, str], ComponentType] = field(default_factory=dict)
    services: dict[str, ServiceType] = field(default_factory=dict)
    commands: dict[str, CliCommand] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    blocked: tuple[str, ...] = ()
    #: Plugins that failed to import, whose registration hook raised or registered
    #: something no plugin may: left out, each with its ``error``.
    broken: list[PluginInfo] = field(default_factory=list)
    _owner: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def check_component(plugin: str, component: object) -> None:
        """PluginError unless ``component`` is one a plugin may register (whoever else
        registers what)."""
        if not isinstance(component, ComponentType):
            raise PluginError(f"plugin {plugin!r} registers {component!r}, not a "
                              f"ComponentType")
        if component.kind not in KINDS:
            raise PluginError(
                f"plugin {plugin!r} registers {component.name!r} of unknown kind "
                f"{component.kind!r} (known: {', '.join(KINDS)})"
            )
        if component.hot_swap and component.kind != "inference":
            raise PluginError(f"plugin {plugin!r} declares {component.kind} "
                              f"{component.name!r} hot_swap: only a backend swaps models")

    @staticmethod
    def check_command(plugin: str, command: object, reserved: set[str]) -> None:
        """PluginError unless ``command`` is one a plugin may register: not a name of
        edged's own (``reserved``)."""
        if not isinstance(command, CliCommand):
            raise PluginError(f"plugin {plugin!r} registers {command!r}, not a CliCommand")
        if command.name in reserved:
            raise PluginError(f"command {command.name!r} from plugin {plugin!r} is already "
                              f"provided by 'edged'")

    @staticmethod
    def check_service(plugin: str, service: object) -> None:
        if not isinstance(service, ServiceType):
            raise PluginError(f"plugin {plugin!r} registers {service!r}, not a ServiceType")

    def add_service(self, plugin: str, service: ServiceType) -> None:
        self.check_service(plugin, service)
        if service.name in self.services:
            raise PluginError(
                f"service {service.name!r} is registered by both "
                f"{self._owner[f'service:{service.name}']!r} and {plugin!r}: "
                f"{how_to_block(plugin)}")
        self.services[service.name] = service
        self._owner[f"service:{service.name}"] = plugin

    def add_component(self, plugin: str, component: ComponentType) -> None:
        self.check_component(plugin, component)
        key = (component.kind, component.name)
        if key in self.components:
            raise PluginError(
                f"{component.kind} type {component.name!r} is registered by both "
                f"{self._owner[f'{key}']!r} and {plugin!r}: {how_to_block(plugin)}"
            )
        self.components[key] = component
        self._owner[f"{key}"] = plugin

    def add_command(self, plugin: str, command: CliCommand, reserved: set[str]) -> None:
        self.check_command(plugin, command, reserved)
        if command.name in self.commands:
            raise PluginError(
                f"command {command.name!r} from plugin {plugin!r} is already provided by "
                f"{self._owner[f'cli:{command.name}']!r}: {how_to_block(plugin)}"
            )
        self.commands[command.name] = command
        self._owner[f"cli:{command.name}"] = plugin

    def unavailable(self, kind: Kind | Literal["service"], name: str) -> str:
        """Why no ``kind`` type (or service) ``name`` is registered, for the config's
        error: it is blocked, or a broken plugin may be the one that provides it; "" if
        neither."""
        if name in self.blocked:
            return " (blocked)"
        # A plugin that failed to import registered nothing, so which types it offers is
        # unknown: its entry point's name is the usual guess (jsonl registers jsonl).
        suspects = [p for p in self.broken if p.name == name] or self.broken
        if not suspects:
            return ""
        return " (" + "; ".join(f"plugin {p.describe()}, which may provide it, is broken: "
                                f"{p.error}" for p in suspects) + ")"

    def component(self, kind: Kind, name: str) -> ComponentType | None:
        return self.components.get((kind, name))

    def names(self, kind: Kind) -> list[str]:
        return sorted(name for (k, name) in self.components if k == kind)
