"""The ``edged`` command line: run, check-config, plugins, demo, and plugin commands."""

from __future__ import annotations

import argparse
import asyncio
import json
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
    _, registry = make_plugin_manager(blocked=blocked_plugins(args))
    rows = [{"name": p.name, "version": p.version, "distribution": p.distribution,
             "module": p.module, "registers": list(p.registers)} for p in registry.plugins]
    if args.json:
        print(json.dumps({"plugins": rows, "blocked": list(registry.blocked)}, indent=2))
        return EX_OK
    headers = ("NAME", "VERSION", "DISTRIBUTION", "REGISTERS")
    table = [(r["name"], r["version"], r["distribution"], ", ".join(r["registers"]) or "-")
             for r in rows]
    widths = [max(len(str(row[i])) for row in [headers, *table]) for i in range(3)]
    for row in [headers, *table]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths,
                                                                         strict=False))
              + "  " + row[3])
    if registry.blocked:
        print(f"\nblocked: {', '.join(registry.blocked)}")
    return EX_OK


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
    demo.add_argument("--duration", type=float, default=60.0, help="seconds to run")
    demo.add_argument("--turbines", type=int, default=None, help="override turbine count")
    demo.add_argument("--json", action="store_true",
                      help="end by printing one JSON summary on stdout")
    demo.set_defaults(func=cmd_demo)

    for command in commands:
        child = sub.add_parser(command.name, help=command.help)
        command.add_arguments(child)
        child.set_defaults(func=command.run, config=getattr(child, "config", None))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging("info", "auto")
    try:
        # Plugin commands must be known before parsing; blocks given with -p apply.
        pre = argparse.Namespace(plugin_blocks=[a.removeprefix("no:") for a in
                                                _values_of(argv, "-p")], config=None)
        _, registry = make_plugin_manager(blocked=blocked_plugins(pre))
    except PluginError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EX_FAILURE
    args = build_parser(list(registry.commands.values())).parse_args(argv)
    if args.command not in ("run", "demo"):
        configure_logs(args, None)
    try:
        return args.func(args)
    except PluginError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130


def _values_of(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


if __name__ == "__main__":
    sys.exit(main())
