"""Plugin ``model``: registers the ``edged model`` command (list slots, roll back).

Both act on the model store on disk. A running daemon serves the store's current slot
from its next reload on: ``systemctl reload edged`` (SIGHUP) after a rollback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from edged import hookimpl
from edged.registry import CliCommand

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78


def _say(text: str, *, error: bool = False) -> None:
    # A command's output for the operator, not a log line.
    (sys.stderr if error else sys.stdout).write(text + "\n")


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every model's slots, current and previous")
    rollback = actions.add_parser("rollback", help="make a model's previous slot current")
    rollback.add_argument("name", metavar="NAME", help="the model's name (see `list`)")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for sub in (listing, rollback):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", metavar="FILE",
                           help="the daemon's config (its state_dir holds the store)")
        where.add_argument("--state-dir", metavar="DIR", type=Path,
                           help="the state directory (default: $STATE_DIRECTORY, or ./state)")


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return args.state_dir
    if args.config:
        from edged.config import blocked_plugins, load_config
        from edged.plugin_manager import make_plugin_manager

        _, registry = make_plugin_manager(blocked=blocked_plugins(args.config))
        return load_config(args.config, registry).state_dir
    return Path(os.environ.get("STATE_DIRECTORY", "state"))


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _list(state_dir: Path, as_json: bool) -> int:
    from edged.modelstore import stores

    rows = []
    for store in stores(state_dir):
        current, previous = store.current(), store.previous()
        for slot in reversed(store.slots()):
            role = ("current" if current and slot.name == current.name else
                    "previous" if previous and slot.name == previous.name else "")
            rows.append({"model": store.name, "slot": slot.name, "version": slot.version,
                         "state": role, "installed_at": _when(slot.installed_at)})
    if as_json:
        _say(json.dumps({"state_dir": str(state_dir), "slots": rows}, indent=2))
        return EX_OK
    if not rows:
        _say(f"no models in {state_dir / 'models'}")
        return EX_OK
    headers = {"model": "MODEL", "slot": "SLOT", "version": "VERSION", "state": "STATE",
               "installed_at": "INSTALLED"}
    table = [headers, *rows]
    widths = {k: max(len(str(r[k])) for r in table) for k in headers}
    for row in table:
        _say("  ".join(str(row[k]).ljust(widths[k]) for k in headers).rstrip())
    return EX_OK


def _rollback(state_dir: Path, name: str) -> int:
    from edged.modelstore import ModelStore

    store = ModelStore.for_model(state_dir, name)
    if store.current() is None:
        _say(f"edged: no model {name!r} in {state_dir / 'models'}", error=True)
        return EX_FAILURE
    slot = store.rollback()
    _say(f"{name}: current slot is now {slot.name} (version {slot.version}); a running "
          "daemon serves it after its next reload (SIGHUP, `systemctl reload edged`)")
    return EX_OK


def _run(args: argparse.Namespace) -> int:
    from edged.errors import ConfigError, ModelError

    try:
        state_dir = _state_dir(args)
        if args.action == "list":
            return _list(state_dir, args.json)
        return _rollback(state_dir, args.name)
    except ConfigError as exc:
        for problem in exc.problems:
            _say(problem, error=True)
        return EX_CONFIG
    except (ModelError, OSError) as exc:
        _say(f"edged: {exc}", error=True)
        return EX_FAILURE


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("model", "list model store slots, roll a model back", _arguments,
                       _run)]
