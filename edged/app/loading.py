"""What every command does first: read a config once for the plugins it blocks and its
validation, report a bad one (exit 78), configure the logs; and the exit codes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edged.base.errors import ConfigError
from edged.base.log import configure_logging
from edged.config import EdgedConfig, block_list, validate_config
from edged.config.yamlfile import read_yaml
from edged.plugin.manager import make_plugin_manager

EX_OK = 0
EX_FAILURE = 1
EX_USAGE = 64
EX_CONFIG = 78  # sysexits.h EX_CONFIG: systemd and operators know it as "bad config"



def blocked_plugins(args: argparse.Namespace, data: Any = None) -> list[str]:
    """Plugins blocked with -p, and by the config's ``plugins.block`` given its data."""
    return [spec.removeprefix("no:") for spec in args.plugin_blocks] + block_list(data)


def load(args: argparse.Namespace, path: Path):
    # One bounded read and parse gives both the plugins to block and the config.
    loaded = read_yaml(path)
    pm, registry = make_plugin_manager(blocked=blocked_plugins(args, loaded[0]))
    return pm, registry, validate_config(loaded, str(path), registry)


def report_config_error(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    print(f"{len(exc.problems)} error(s); nothing was started.", file=sys.stderr)
    return EX_CONFIG


def configure_logs(args: argparse.Namespace, config: EdgedConfig | None) -> None:
    level = args.log_level or (config.raw.log.level if config else "info")
    fmt = args.log_format or (config.raw.log.format if config else "auto")
    configure_logging(level, fmt)
