"""Actuator ``command``: runs a program for each event, the alarm payload
(:mod:`edged.plugin.alarm_payload`) on its standard input. For GPIO, relay or PLC tools.

The program runs without a shell (``argv`` as given), in its own process group, so that a
timeout kills it together with anything it started. Its output is captured, truncated to
``output_limit`` bytes per stream, and written to the log; a non-zero exit status, a
timeout or a program that cannot be started is logged and counted under
``command_failures``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import Literal

import structlog
from pydantic import Field

from edged import hookimpl
from edged.base.log import RateLimit
from edged.plugin.alarm_payload import alarm_payload, dumps
from edged.plugin.components import BuildContext, Component
from edged.plugin.config import ActuatorConfig
from edged.plugin.events import Event
from edged.plugin.registry import ComponentType

log = structlog.get_logger("edged.actuator.command")

_CHUNK = 65536
#: Why a run failed: command_failures{actuator,reason}.
FAILURE_REASONS = ("start", "timeout", "exit")


class CommandConfig(ActuatorConfig):
    type: Literal["command"]
    argv: list[str] = Field(
        min_length=1,
        description="The program and its arguments; run directly, no shell. A program "
        "without a slash is looked up on PATH.",
    )
    timeout_s: float = Field(
        10.0, gt=0, le=3600, description="The program is killed after this long.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Variables added to the daemon's environment.")
    cwd: Path | None = Field(None, description="Working directory (default: the daemon's).")
    output_limit: int = Field(
        2000, ge=0, le=1_000_000,
        description="Bytes of stdout and of stderr kept for the log (the last ones).")


class _Tail:
    """Keeps the last ``limit`` bytes of a stream and how many there were in all."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = b""
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(_CHUNK):
            self.total += len(chunk)
            self.data = (self.data + chunk)[-self.limit:] if self.limit else b""

    def text(self) -> str:
        text = self.data.decode("utf-8", errors="replace").strip()
        return f"...{text}" if self.total > len(self.data) else text


class CommandActuator(Component):
    def __init__(self, config: CommandConfig, ctx: BuildContext) -> None:
        self.config = config
        self.name = ctx.name
        self.device_id = ctx.device_id
        self.counters = ctx.counters
        ctx.counters.declare("command_failures", {"reason": FAILURE_REASONS},
                             actuator=ctx.name)
        self.log = log.bind(actuator=ctx.name, program=config.argv[0])
        self.rate_limit = RateLimit(interval=30.0)
        self._env = {**os.environ, **config.env} if config.env else None
        self._program: str | None = None

    async def __aenter__(self) -> CommandActuator:
        # Fail at start, where the start-up policy applies, not at the first alarm.
        program = self.config.argv[0]
        path = (self._env or os.environ).get("PATH")
        found = shutil.which(program, path=path) if "/" not in program else (
            program if os.access(self._resolve(program), os.X_OK) else None)
        if found is None:
            raise FileNotFoundError(f"program {program!r} not found or not executable")
        if self.config.cwd is not None and not self.config.cwd.is_dir():
            raise NotADirectoryError(f"working directory {self.config.cwd} does not exist")
        self._program = found
        return self

    def _resolve(self, program: str) -> Path:
        path = Path(program)
        return path if path.is_absolute() or self.config.cwd is None else self.config.cwd / path

    async def handle(self, event: Event) -> None:
        payload = dumps(alarm_payload(event, self.device_id)) + b"\n"
        try:
            process = await asyncio.create_subprocess_exec(
                *self.config.argv, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=self._env, cwd=self.config.cwd, start_new_session=True)
        except OSError as exc:
            self._failed(event, "start", error=f"{type(exc).__name__}: {exc}")
            return
        stdout, stderr = _Tail(self.config.output_limit), _Tail(self.config.output_limit)
        try:
            async with asyncio.timeout(self.config.timeout_s):
                await asyncio.gather(self._feed(process, payload),
                                     stdout.drain(process.stdout),
                                     stderr.drain(process.stderr))
                status = await process.wait()
        except TimeoutError:
            await self._kill(process)
            self._failed(event, "timeout", timeout_s=self.config.timeout_s,
                         stdout=stdout.text(), stderr=stderr.text())
            return
        except BaseException:
            # Cancelled (shutdown): the program must not outlive the daemon's wait for it.
            await self._kill(process)
            raise
        if status != 0:
            self._failed(event, "exit", status=status, stdout=stdout.text(),
                         stderr=stderr.text())
            return
        self.log.info("command_done", kind=event.kind, turbine=event.turbine,
                      stdout=stdout.text(), stderr=stderr.text())

    @staticmethod
    async def _feed(process: asyncio.subprocess.Process, payload: bytes) -> None:
        assert process.stdin is not None
        # A program that ignores its input may exit before reading it: not an error.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            process.stdin.write(payload)
            await process.stdin.drain()
        process.stdin.close()

    @staticmethod
    async def _kill(process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        await process.wait()

    def _failed(self, event: Event, reason: str, **fields: object) -> None:
        self.counters.inc("command_failures", actuator=self.name, reason=reason)
        suppressed = self.rate_limit.allow(reason)
        if suppressed is not None:
            self.log.error("command_failed", kind=event.kind, turbine=event.turbine,
                           reason=reason, suppressed=suppressed, **fields)


@hookimpl
def edged_component_types() -> list[ComponentType]:
    return [ComponentType("actuator", "command", CommandConfig, CommandActuator,
                          "run a program with the alarm JSON on stdin (GPIO, PLC tools)")]
