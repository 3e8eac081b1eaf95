"""An example edged plugin, packaged as its own distribution.

It registers an actuator type ``jsonl`` that appends every event it receives to a
JSON-lines file, and a command ``edged alarms FILE`` that prints such a file as a table.
Copy this folder to start a plugin of your own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
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


#: A line longer than this is not one of the actuator's events (they are well under
#: 4 KiB): skipped unread rather than parsed.
MAX_LINE_CHARS = 64 * 1024


def event_line(line: str) -> str:
    """One event of the file as a table row: UTC time, kind, turbine, groups. ValueError
    says why a line is not an event (the file may be cut short by a power loss, or
    edited by hand)."""
    if len(line) > MAX_LINE_CHARS:
        raise ValueError(f"longer than {MAX_LINE_CHARS} characters")
    try:
        event = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an integer of more digits than int() takes
        raise ValueError(f"not JSON: {exc}") from None
    except RecursionError:
        raise ValueError("not JSON: nested too deep") from None
    if not isinstance(event, dict):
        raise ValueError("not a JSON object")
    kind, turbine, at = event.get("kind"), event.get("turbine"), event.get("time")
    groups = event.get("groups", [])
    if not (isinstance(kind, str) and isinstance(turbine, str)
            and isinstance(at, int | float) and not isinstance(at, bool)
            and isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise ValueError("not an event (kind, turbine, time, groups)")
    try:
        when = datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"time {at!r} is not a date") from None
    return f"{when}  {kind:<16} {turbine:<12} {','.join(groups) or '-'}"


def _alarms(args: argparse.Namespace) -> int:
    """Prints the file's events; a line that is not one is named on stderr and skipped,
    and the exit status is 1 if any was (0 otherwise)."""
    skipped = 0
    try:
        with args.file.open(encoding="utf-8", errors="replace") as file:
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                try:
                    row = event_line(line.rstrip("\r\n"))
                except ValueError as exc:
                    skipped += 1
                    print(f"edged alarms: {args.file}, line {number}: {exc}; skipped",  # noqa: T201
                          file=sys.stderr)
                    continue
                print(row)  # noqa: T201 - a command's output
    except OSError as exc:
        print(f"edged alarms: cannot read {args.file}: {exc.strerror}", file=sys.stderr)  # noqa: T201
        return 1
    if skipped:
        print(f"edged alarms: {skipped} line(s) skipped", file=sys.stderr)  # noqa: T201
    return 1 if skipped else 0


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType.actuator("jsonl", JsonlConfig, JsonlActuator,
                                   "append events to a JSON-lines file")]


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("alarms", "print the events of a jsonl actuator's file",
                       _alarms_arguments, _alarms)]
