"""The ``edged`` command line: run, check-config, plugins, demo, and plugin commands."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Sequence

import structlog

from edged import __version__
from edged.app.assembly import build_graph
from edged.app.loading import (
    EX_FAILURE,
    EX_OK,
    blocked_plugins,
    configure_logs,
    load,
    report_config_error,
)
from edged.base.errors import ComponentStartError, ConfigError, PluginError
from edged.base.log import configure_logging
from edged.config.locate import CONFIG_ENV, DEFAULT_CONFIG, config_path
from edged.plugin.manager import make_plugin_manager
from edged.plugin.registry import how_to_block

log = structlog.get_logger("edged.app.cli")


# -- commands -----------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    status = EX_OK
    for given in args.files or [None]:
        try:
            # None given: $EDGED_CONFIG, else /etc/edged/edged.yaml.
            path = config_path(given, how="edged check-config FILE")
            args.config = str(path)
            _, registry, config = load(args, path)
            build_graph(config, registry)  # factories check what they can without I/O
        except ConfigError as exc:
            status = report_config_error(exc)
            continue
        for warning in config.warnings:
            print(f"warning: {path}: {warning}", file=sys.stderr)
        print(f"{path}: OK ({len(config.sources)} source(s), {len(config.pipelines)} "
              f"pipeline(s), {len(config.actuators)} actuator(s))")
    return status


def cmd_run(args: argparse.Namespace) -> int:
    from edged.runtime.supervisor import Supervisor

    try:
        path = config_path(args.config)  # none given: $EDGED_CONFIG, /etc/edged/edged.yaml
        pm, registry, config = load(args, path)
        configure_logs(args, config)
        supervisor = Supervisor(config, registry, pm, build=build_graph)
    except ConfigError as exc:
        return report_config_error(exc)
    for warning in config.warnings:
        log.warning("config_warning", detail=warning)
    try:
        asyncio.run(supervisor.run())
    except ComponentStartError as exc:
        log.error("start_failed", error=str(exc))
        return EX_FAILURE
    return EX_OK


def cmd_plugins(args: argparse.Namespace) -> int:
    """Every plugin, broken ones too (listed, not logged): exit 1 if one is broken, so
    that a plugin's CI or an install script notices."""
    _, registry = make_plugin_manager(blocked=blocked_plugins(args), warn_broken=False)
    rows = [{"name": p.name, "version": p.version, "distribution": p.distribution,
             "module": p.module, "registers": list(p.registers)} for p in registry.plugins]
    broken = [{"name": p.name, "version": p.version, "distribution": p.distribution,
               "module": p.module, "error": p.error} for p in registry.broken]
    status = EX_FAILURE if broken else EX_OK
    if args.json:
        print(json.dumps({"plugins": rows, "broken": broken,
                          "blocked": list(registry.blocked)}, indent=2))
        return status
    headers = ("NAME", "VERSION", "DISTRIBUTION", "REGISTERS")
    table = sorted([(r["name"], r["version"], r["distribution"],
                     ", ".join(r["registers"]) or "-") for r in rows]
                   + [(b["name"], b["version"], b["distribution"], "BROKEN") for b in broken])
    widths = [max(len(str(row[i])) for row in [headers, *table]) for i in range(3)]
    for row in [headers, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                         strict=False))
              + "  " + row[3])
    for info in registry.broken:
        print(f"\nbroken: {info.describe()}, left out: {info.error}\n  {how_to_block(info.name)}")
    if registry.blocked:
        print(f"\nblocked: {', '.join(registry.blocked)}")
    return status


def cmd_demo(args: argparse.Namespace) -> int:
    from edged.app.demo import run_demo

    return run_demo(args)


# -- parser -------------------------------------------------------------------------------


def build_parser(commands: Sequence = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edged", description="Run ML models on edge devices and act on what they see.")
    parser.add_argument("--version", action="version", version=f"edged {__version__}")
    parser.add_argument("-p", dest="plugin_blocks", action="append", default=[],
                        metavar="no:NAME", help="block a plugin by name (repeatable)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-format", choices=["auto", "json", "console"])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    where = (f"default: ${CONFIG_ENV} if set, else {DEFAULT_CONFIG}")
    run = sub.add_parser("run", help="run the daemon with a config file")
    run.add_argument("-c", "--config", help=f"YAML config file ({where})")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate config files (exit 0, or 78)")
    check.add_argument("files", nargs="*", metavar="FILE", help=f"config files ({where})")
    check.set_defaults(func=cmd_check_config, config=None)

    plugins = sub.add_parser("plugins", help="list installed plugins and what they register")
    plugins.add_argument("--json", action="store_true", help="machine-readable output")
    plugins.set_defaults(func=cmd_plugins, config=None)

    demo = sub.add_parser("demo", help="a simulated wind farm watched by edged")
    demo.add_argument("-c", "--config", default=None,
                      help="demo config (default: configs/demo.yaml, or the built-in copy)")
    demo.add_argument("--duration", type=float, default=None,
                      help="seconds to run (default: 60; with --dashboard, until Ctrl-C)")
    demo.add_argument("--turbines", type=int, default=None, help="override turbine count")
    demo.add_argument("--dashboard", metavar="[HOST:]PORT", default=None,
                      help="serve the dashboard there (needs 'edged[dashboard]'; HOST "
                      "defaults to 127.0.0.1) and print its address")
    demo.add_argument("--json", action="store_true",
                      help="end by printing one JSON summary on stdout")
    demo.set_defaults(func=cmd_demo)

    for command in commands:
        child = sub.add_parser(command.name, help=command.help)
        command.add_arguments(child)
        child.set_defaults(func=command.run, config=getattr(child, "config", None))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    try:
        status = _main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()  # buffered output meets a closed pipe here, if not before
    except (BrokenPipeError, BaseExceptionGroup) as exc:
        # An asyncio command (the demo) raises it inside a group.
        if isinstance(exc, BaseExceptionGroup) and exc.split(BrokenPipeError)[1] is not None:
            raise
        return _stdout_closed()
    return status


def _main(argv: list[str]) -> int:
    configure_logging("info", "auto")
    try:
        # Plugin commands must be known before parsing; blocks given with -p apply. A
        # broken plugin is left out silently here: the commands that read a config report
        # it (after the config's own blocks), `edged plugins` lists it.
        pre = argparse.Namespace(plugin_blocks=_blocks_in(argv), config=None)
        _, registry = make_plugin_manager(blocked=blocked_plugins(pre), warn_broken=False)
    except PluginError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EX_FAILURE
    parser = build_parser(list(registry.commands.values()))
    command = _command_in(argv)
    if registry.broken and command and command not in _commands_of(parser):
        # Maybe the command of a broken plugin: say so before argparse's "invalid choice".
        for info in registry.broken:
            print(f"edged: plugin {info.describe()} is broken and was left out, with any "
                  f"command it registers: {info.error}; {how_to_block(info.name)}",
                  file=sys.stderr)
    args = parser.parse_args(argv)
    if args.command not in ("run", "demo"):
        configure_logs(args, None)
    try:
        return args.func(args)
    except PluginError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130


#: Where stdout's reader went away: 128 + SIGPIPE, what a shell reports for a program
#: that SIGPIPE killed (`set -o pipefail` sees the same as for `cat`).
EX_BROKEN_PIPE = 128 + signal.SIGPIPE


def _stdout_closed() -> int:
    """stdout's reader is gone (`edged plugins --json | head -1`): exit quietly, the way
    the Python docs' "Note on SIGPIPE" does. Python ignores SIGPIPE, so writing raises
    BrokenPipeError; stdout pointed at /dev/null keeps the interpreter's last flush from
    raising it again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return EX_BROKEN_PIPE


#: The options before the command that take a value.
_VALUE_OPTIONS = ("-p", "--log-level", "--log-format")


def _blocks_in(argv: list[str]) -> list[str]:
    """The plugins ``-p no:NAME`` (or ``-pno:NAME``) blocks, before argparse runs: only
    before the command, whose own options are its own."""
    before = argv[:_command_at(argv)]
    blocks = [before[i + 1] for i, arg in enumerate(before[:-1]) if arg == "-p"]
    blocks += [arg[2:] for arg in before if arg.startswith("-p") and len(arg) > 2]
    return [spec.removeprefix("no:") for spec in blocks]


def _command_at(argv: list[str]) -> int:
    """The index of the command word: the first argument that is no option or value."""
    skip = False
    for index, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in _VALUE_OPTIONS:
            skip = True
        elif not arg.startswith("-"):
            return index
    return len(argv)


def _command_in(argv: list[str]) -> str | None:
    at = _command_at(argv)
    return argv[at] if at < len(argv) else None


def _commands_of(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions
            if isinstance(action, argparse._SubParsersAction) for name in action.choices}


if __name__ == "__main__":
    sys.exit(main())
