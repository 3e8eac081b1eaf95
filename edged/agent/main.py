"""``edged agent -a SOCKET -c CONFIG``: load the config, serve until SIGTERM/SIGINT.

Exit status: 0 after a clean stop, 78 (EX_CONFIG) for a bad config with every mistake
located on stderr, 1 when the agent cannot start (socket taken, capture store broken).
systemd hears ``READY=1`` once the socket accepts calls, ``STOPPING=1`` when a signal
arrives, and ``WATCHDOG=1`` every half ``WatchdogSec`` from the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from contextlib import AsyncExitStack, suppress
from pathlib import Path

import structlog

from edged.agent.config import LoadedAgentConfig, load_agent_config
from edged.agent.server import AgentServer, CaptureSink
from edged.base.errors import ConfigError, EdgedError
from edged.base.log import configure_logging
from edged.base.sdnotify import Notifier

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78

log = structlog.get_logger("edged.agent")


def run(args: argparse.Namespace) -> int:
    try:
        # Absolute: every message about the file, a missing one included, names where
        # it was looked for.
        loaded = load_agent_config(Path(args.config).absolute())
    except ConfigError as exc:
        for problem in exc.problems:
            sys.stderr.write(problem + "\n")
        sys.stderr.write(f"{len(exc.problems)} error(s); the agent was not started.\n")
        return EX_CONFIG
    configure_logging(getattr(args, "log_level", None) or loaded.log.level,
                      getattr(args, "log_format", None) or loaded.log.format)
    try:
        return asyncio.run(serve(loaded, args.address))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130


def log_ignored(loaded: LoadedAgentConfig) -> None:
    for key, note in loaded.ignored:
        log.warning("config_key_ignored", key=key, note=note, config=str(loaded.path))


_PATH_RULES = {
    "json": "relative paths in the old agent's JSON are relative to the working directory "
            "the agent started in, as the old agent's were",
    "yaml": "relative paths in edged YAML are relative to the config file's directory",
}


def log_paths(loaded: LoadedAgentConfig) -> None:
    """Where every path of the config leads, once: a file written for the old agent's
    working directory is read from this agent's."""
    paths = loaded.paths()
    log.info("config_paths", config=str(loaded.path), format=loaded.format,
             relative_to=str(loaded.relative_to), rule=_PATH_RULES[loaded.format], **paths)
    for root in loaded.config.model_roots:
        if not root.is_dir():
            log.warning("model_root_missing", path=str(root),
                        note="LoadModel finds nothing under it until it is created")


async def serve(loaded: LoadedAgentConfig, address: str, *,
                stop: asyncio.Event | None = None, notifier: Notifier | None = None,
                capture: CaptureSink | None = None, grace_s: float = 5.0) -> int:
    """Serve until ``stop`` is set (by default: on SIGTERM or SIGINT). Returns the
    exit status."""
    notifier = notifier or Notifier.from_environ()
    loop = asyncio.get_running_loop()
    signals: tuple[signal.Signals, ...] = ()
    if stop is None:  # the default trigger; tests inject an event instead
        stop = asyncio.Event()
        signals = (signal.SIGTERM, signal.SIGINT)
        for signum in signals:
            loop.add_signal_handler(signum, stop.set)
    log_ignored(loaded)
    log_paths(loaded)
    try:
        async with AsyncExitStack() as stack:
            try:
                server = await stack.enter_async_context(
                    AgentServer(loaded.config, address, capture=capture, grace_s=grace_s))
            except EdgedError as exc:
                log.error("agent_start_failed", error=str(exc))
                return EX_FAILURE
            notifier.ready(f"serving {server.path} ({loaded.path})")
            log.info("agent_ready", socket=str(server.path), config=str(loaded.path),
                     format=loaded.format)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(_watchdog(notifier, stop), name="edged[agent].watchdog")
                await stop.wait()
            notifier.stopping("stopping")
            log.info("agent_stopping", grace_s=grace_s)
        log.info("agent_stopped")
        return EX_OK
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def _watchdog(notifier: Notifier, stop: asyncio.Event) -> None:
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    while not stop.is_set():
        notifier.watchdog()
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval / 2)
