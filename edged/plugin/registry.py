"""What plugins register: component types and CLI commands, and who registered them."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic

from edged.base.errors import PluginError

Kind = Literal["source", "preprocessor", "inference", "actuator"]
KINDS: tuple[Kind, ...] = ("source", "preprocessor", "inference", "actuator")


@dataclass(frozen=True)
class ComponentType:
    """A component type a plugin offers, selected in YAML by ``type: <name>``.

    ``factory`` is called with the validated config (an instance of ``config``) and a
    :class:`BuildContext`; it must not start anything: starting happens when the runtime
    enters the component as an async context manager.
    """

    kind: Kind
    name: str
    config: type[pydantic.BaseModel]
    factory: Callable[..., Any]
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
    """One loaded plugin, as `edged plugins` shows it."""

    name: str
    version: str
    distribution: str
    module: str
    registers: tuple[str, ...] = ()


@dataclass
class Registry:
    """Everything registered by the loaded plugins; built once per plugin manager."""

    components: dict[tuple[Kind, str], ComponentType] = field(default_factory=dict)
    commands: dict[str, CliCommand] = field(default_factory=dict)
    plugins: list[PluginInfo] = field(default_factory=list)
    blocked: tuple[str, ...] = ()
    _owner: dict[str, str] = field(default_factory=dict)

    def add_component(self, plugin: str, component: ComponentType) -> None:
        if component.kind not in KINDS:
            raise PluginError(
                f"plugin {plugin!r} registers {component.name!r} of unknown kind "
                f"{component.kind!r} (known: {', '.join(KINDS)})"
            )
        key = (component.kind, component.name)
        if key in self.components:
            raise PluginError(
                f"{component.kind} type {component.name!r} is registered by both "
                f"{self._owner[f'{key}']!r} and {plugin!r}"
            )
        self.components[key] = component
        self._owner[f"{key}"] = plugin

    def add_command(self, plugin: str, command: CliCommand, reserved: set[str]) -> None:
        if command.name in reserved or command.name in self.commands:
            owner = self._owner.get(f"cli:{command.name}", "edged")
            raise PluginError(
                f"command {command.name!r} from plugin {plugin!r} is already provided by "
                f"{owner!r}"
            )
        self.commands[command.name] = command
        self._owner[f"cli:{command.name}"] = plugin

    def component(self, kind: Kind, name: str) -> ComponentType | None:
        return self.components.get((kind, name))

    def names(self, kind: Kind) -> list[str]:
        return sorted(name for (k, name) in self.components if k == kind)
