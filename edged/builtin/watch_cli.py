"""Plugin ``watch``: registers the ``edged watch`` command, which follows a running
daemon's decisions and alarms live, from its watch socket (docs/watch.md).

It reads only what it needs of the daemon's config (``state_dir``, ``watch``), without
validating the rest, so it works in an operator's shell where the service's secrets are
not set. When the daemon ends the watch (a reload, a restart) it connects again.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from edged import hookimpl
from edged.plugin.registry import CliCommand

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78
#: Wait between two attempts to connect again after the daemon ended a watch.
RECONNECT_S = 1.0


def _arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("-c", "--config", metavar="FILE",
                       help="the daemon's config (default: $EDGED_CONFIG, else "
                       "/etc/edged/edged.yaml); its watch.socket, else "
                       "<state_dir>/watch.sock, is where it serves")
    where.add_argument("--socket", metavar="PATH", type=Path,
                       help="the watch socket itself")
    parser.add_argument("--decisions", choices=["none", "anomalies", "all"],
                        default="anomalies",
                        help="decisions to show besides alarms, clears and sensor events "
                        "(default: anomalies)")
    parser.add_argument("--turbine", metavar="ID", help="only this turbine")
    parser.add_argument("--json", action="store_true",
                        help="print every line as the daemon sends it (JSON Lines)")


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def socket_of(args: argparse.Namespace) -> Path:
    """The watch socket: ``--socket``, else that of the config's daemon."""
    if args.socket is not None:
        return args.socket
    from edged.config.locate import config_path, state_dir_of
    from edged.config.yamlfile import read_yaml
    from edged.watch.protocol import socket_path_of

    path = config_path(args.config, how="-c FILE or --socket PATH")
    state_dir, _ = state_dir_of(path)
    data, _ = read_yaml(path)
    watch = data.get("watch") if isinstance(data, dict) else None
    given = watch.get("socket") if isinstance(watch, dict) else None
    return socket_path_of(state_dir, Path(given) if isinstance(given, str) and given
                          else None)


def _clock(record: dict[str, Any]) -> str:
    stamp = record.get("timestamp")
    if not isinstance(stamp, int | float):
        return " " * 12
    return datetime.fromtimestamp(stamp).strftime("%H:%M:%S.%f")[:12]


def _over(record: dict[str, Any], names: list[str]) -> str:
    values, thresholds = record.get("values") or {}, record.get("thresholds") or {}
    return " ".join(f"{name}={_g(values.get(name))}>{_g(thresholds.get(name))}"
                    for name in names)


def _g(number: Any) -> str:
    return f"{number:.3g}" if isinstance(number, int | float) else "?"


def readable(record: dict[str, Any]) -> str | None:
    """One record as a line for a terminal; None for one that is not shown there."""
    event = record.get("event")
    where = f"{record.get('pipeline')}/{record.get('turbine')}"
    detail = record.get("detail") or {}
    groups = ",".join(record.get("groups") or [])
    primary = f" (primary {record['primary']})" if record.get("primary") else ""
    if event == "decision":
        if not record.get("anomalous"):
            return f"{_clock(record)}  {where}  ok"
        return (f"{_clock(record)}  {where}  anomalous  {groups}{primary}  "
                f"{_over(record, record.get('flagged') or [])}")
    if event == "alarm":
        flagged = [k for k, v in (record.get("values") or {}).items()
                   if isinstance(v, int | float)
                   and v > (record.get("thresholds") or {}).get(k, float("inf"))]
        return (f"{_clock(record)}  {where}  ALARM  {groups}{primary}  "
                f"after {detail.get('consecutive', '?')} anomalous decisions  "
                f"{_over(record, flagged)}")
    if event == "clear":
        return f"{_clock(record)}  {where}  CLEAR"
    if event == "sensor_stale":
        if "turbines" in detail:
            return f"{_clock(record)}  {where}  STALE  {detail['turbines']} more turbines"
        return f"{_clock(record)}  {where}  STALE  silent {detail.get('silent_s', '?')} s"
    if event == "sensor_recovered":
        if "turbines" in detail:
            return f"{_clock(record)}  {where}  RECOVERED  {detail['turbines']} more turbines"
        gap = f" after {detail['gap_s']} s" if "gap_s" in detail else ""
        return f"{_clock(record)}  {where}  RECOVERED{gap}"
    if event == "command":
        return f"{_clock(record)}  {where}  COMMAND  {record.get('command')}"
    return None


class Refused(Exception):
    """The daemon refused or ended the watch with an ``error`` line."""


class _StdoutGone(Exception):
    """stdout's reader went away: not a lost connection to wait out."""


class Watcher:
    """Follows the watch socket at ``path``, printing what comes, until interrupted."""

    def __init__(self, path: Path, request: bytes, as_json: bool) -> None:
        self.path = path
        self.request = request
        self.as_json = as_json
        self.connected = False  # once: later losses are waited out

    def follow(self) -> None:
        """One watch: connect, ask, print until the daemon hangs up."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(self.path))
            first, self.connected = not self.connected, True
            sock.sendall(self.request)
            with sock.makefile("rb") as lines:
                for line in lines:
                    self.show(line, first)

    def show(self, line: bytes, first: bool) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return  # not ours to judge; the next line is
        if not isinstance(record, dict):
            return
        if record.get("event") == "error":
            raise Refused(f"{record.get('reason')}: {record.get('error')}")
        if self.as_json:
            self.write(line.decode("utf-8", "replace"))
        elif record.get("event") == "hello":
            if first:
                _say(f"watching {record.get('device')} (edged {record.get('edged')}) on "
                     f"{self.path}: decisions {record.get('decisions')}, turbine "
                     f"{record.get('turbine') or 'any'}")
        elif (text := readable(record)) is not None:
            self.write(text + "\n")

    @staticmethod
    def write(text: str) -> None:
        try:
            sys.stdout.write(text)
            sys.stdout.flush()
        except BrokenPipeError as exc:
            raise _StdoutGone from exc


def _run(args: argparse.Namespace) -> int:
    from edged.base.errors import ConfigError
    from edged.watch.protocol import WatchRequest

    try:
        path = socket_of(args)
    except ConfigError as exc:
        for problem in exc.problems:
            _say(problem)
        return EX_CONFIG
    watcher = Watcher(path, WatchRequest(args.decisions, args.turbine).line(), args.json)
    while True:
        try:
            watcher.follow()
        except Refused as exc:
            _say(f"edged watch: the daemon refused the watch: {exc}")
            return EX_FAILURE
        except _StdoutGone as exc:
            raise exc.__cause__ from None  # edged's main exits quietly (141)
        except OSError as exc:
            if not watcher.connected:
                _say(f"edged watch: no daemon serves on {path} ({exc.strerror or exc}): is "
                     "edged running with this config, and watch.enabled?")
                return EX_FAILURE
            time.sleep(RECONNECT_S)
            continue
        _say(f"edged watch: the daemon ended the watch (a reload or a stop); connecting "
             f"again to {path}")
        time.sleep(RECONNECT_S)


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("watch", "follow a running daemon's decisions and alarms live",
                       _arguments, _run)]
