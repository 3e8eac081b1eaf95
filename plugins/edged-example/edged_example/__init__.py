"""An example edged plugin, packaged as its own distribution.

It registers an actuator type ``jsonl`` that appends every event it receives to a
JSON-lines file, and a command ``edged alarms FILE`` that prints such a file as a table.
Copy this folder to start a plugin of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Literal

from pydantic import Field

from edged.plugin import (
    ActuatorConfig,
    BuildContext,
    CliCommand,
    Component,
    ComponentType,
    Event,
    hookimpl,
)


class JsonlConfig(ActuatorConfig):
    """Config of the ``jsonl`` actuator. Plugin configs subclass the kind's base
    (here ActuatorConfig, which brings inputs, debounce, cooldown and queue)."""

    type: Literal["jsonl"]
    path: Path = Field(description="File the events are appended to.")
    fsync: bool = Field(False, description="fsync after every event (survives power loss).")


class JsonlActuator(Component):
    def __init__(self, config: JsonlConfig, ctx: BuildContext) -> None:
        self.config = config
        self._file = None

    async def __aenter__(self) -> JsonlActuator:
        # Opening here, not in __init__: building a component must have no side effects.
        self.config.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.config.path.open("a", encoding="utf-8")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    async def handle(self, event: Event) -> None:
        line = json.dumps(event.to_dict(), default=_plain) + "\n"
        await asyncio.to_thread(self._append, line)

    def _append(self, line: str) -> None:
        self._file.write(line)
        self._file.flush()
        if self.config.fsync:
            import os

            os.fsync(self._file.fileno())


def _plain(value: object) -> object:
    return getattr(value, "__dict__", None) or str(value)


def _alarms_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="a file written by the jsonl actuator")


def _alarms(args: argparse.Namespace) -> int:
    try:
        lines = args.file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        print(f"edged alarms: {exc}")  # noqa: T201 - a command's output
        return 1
    for line in lines:
        event = json.loads(line)
        groups = ",".join(event.get("groups", [])) or "-"
        print(f"{event['time']:.1f}  {event['kind']:<16} {event['turbine']:<12} {groups}")  # noqa: T201
    return 0


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType.actuator("jsonl", JsonlConfig, JsonlActuator,
                                   "append events to a JSON-lines file")]


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("alarms", "print the events of a jsonl actuator's file",
                       _alarms_arguments, _alarms)]
