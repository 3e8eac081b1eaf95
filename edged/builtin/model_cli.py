"""Plugin ``model``: registers the ``edged model`` command (list slots, install a signed
bundle, roll back).

All act on the model store on disk. A running daemon follows the store's current slot
within a second or two (``edged.runtime.store_watch``); install and rollback wait for it
to say so in ``<state_dir>/serving.json`` and report what it serves, or that it refused
the swap and kept its model, or that no running daemon confirmed the change.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from edged import hookimpl
from edged.config.locate import CONFIG_ENV, DEFAULT_CONFIG, config_path, state_dir_of
from edged.plugin.registry import CliCommand

if TYPE_CHECKING:
    from edged.model.store import Slot

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78
#: How long install and rollback wait for a running daemon to serve the new slot: it
#: looks every second, then loads the model and runs its golden pairs.
DEFAULT_WAIT_S = 10.0


def _say(text: str, *, error: bool = False) -> None:
    # A command's output for the operator, not a log line.
    (sys.stderr if error else sys.stdout).write(text + "\n")


def _arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every model's slots, current and previous")
    rollback = actions.add_parser("rollback", help="make a model's previous slot current")
    rollback.add_argument("name", metavar="NAME", help="the model's name (see `list`)")
    install = actions.add_parser("install", help="verify a signed bundle, install it "
                                 "into a new slot and make it current")
    install.add_argument("bundle", metavar="BUNDLE", type=Path, help="the .tar.gz to install")
    install.add_argument("--trust", metavar="DIR", type=Path, required=True,
                         help="directory of trusted public keys (*.pem, *.pub)")
    install.add_argument("--revoked", action="append", default=[], metavar="KEY_ID",
                         help="a key id no longer trusted (repeatable)")
    install.add_argument("--activate", action=argparse.BooleanOptionalAction, default=True,
                         help="make the new slot current (default); --no-activate only "
                         "stages it")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    for sub in (install, rollback):
        sub.add_argument("--wait", metavar="SECONDS", type=float, default=DEFAULT_WAIT_S,
                         help="how long to wait for a running daemon to confirm that it "
                         f"serves the new slot (default: {DEFAULT_WAIT_S:g}; 0: do not "
                         "wait)")
    for sub in (listing, install, rollback):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("-c", "--config", metavar="FILE",
                           help="the daemon's config, whose state_dir holds the store "
                           f"(default: ${CONFIG_ENV} if set, else {DEFAULT_CONFIG})")
        where.add_argument("--state-dir", metavar="DIR", type=Path,
                           help="the state directory itself, instead of a config's")


def _state_dir(args: argparse.Namespace) -> Path:
    """``--state-dir``, else the ``state_dir`` of the config (``-c``, ``$EDGED_CONFIG``,
    ``/etc/edged/edged.yaml``): the directory the daemon serves its models from."""
    if args.state_dir is not None:
        return args.state_dir
    config = config_path(args.config, how="-c FILE or --state-dir DIR")
    state_dir, named = state_dir_of(config)
    if not named and not os.environ.get("STATE_DIRECTORY"):
        # The daemon under systemd gets $STATE_DIRECTORY; this shell has none.
        _say(f"edged: warning: {config} sets no state_dir, so this command uses "
             f"{state_dir} and the service its $STATE_DIRECTORY (/var/lib/edged under "
             "systemd/edged.service): set state_dir in the config", error=True)
    return state_dir


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def _list(state_dir: Path, as_json: bool) -> int:
    from edged.model.store import stores

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


def _rollback(state_dir: Path, name: str, wait_s: float) -> int:
    from edged.model.store import ModelStore

    store = ModelStore.for_model(state_dir, name)
    if store.current() is None:
        _say(f"edged: no model {name!r} in {state_dir / 'models'}", error=True)
        return EX_FAILURE
    since = time.time()
    slot = store.rollback()
    _say(f"{name}: current slot is now {slot.name} (version {slot.version})")
    return _confirm(state_dir, slot, since, wait_s)


def _confirm(state_dir: Path, slot: Slot, since: float, wait_s: float) -> int:
    """Wait up to ``wait_s`` for the daemon serving ``state_dir`` to serve ``slot`` (a
    Slot made current at ``since``) in every pipeline of its store, and say what came
    of it: EX_FAILURE if it refused the swap, EX_OK otherwise."""
    from edged.model.serving import daemon_alive, read_serving

    model, deadline = slot.model, time.monotonic() + wait_s
    if wait_s <= 0:
        _say(f"a running daemon serves {model} slot {slot.name} within a few seconds "
             "(not waited for)")
        return EX_OK
    while True:
        record = read_serving(state_dir)
        if record is None or not daemon_alive(record):
            _say(f"no running daemon serves {state_dir}: edged serves {model} slot "
                 f"{slot.name} from its next start")
            return EX_OK
        pid = record["pid"]
        mine = {n: p for n, p in record["pipelines"].items() if p.get("store") == model}
        if not mine:
            _say(f"the running daemon (pid {pid}) serves no pipeline from the store of "
                 f"{model}: its config does not name store:{model}")
            return EX_OK
        serving = {n for n, p in mine.items() if p.get("slot") == slot.name}
        refused = {n: p for n, p in mine.items() if n not in serving
                   and isinstance(p.get("refused"), dict)
                   and p["refused"].get("slot") == slot.name
                   and isinstance(p["refused"].get("at"), int | float)
                   and p["refused"]["at"] >= since}
        where = f" (pipelines {', '.join(sorted(mine))})" if len(mine) > 1 else ""
        if serving == set(mine):
            _say(f"the running daemon (pid {pid}) now serves {model} slot {slot.name} "
                 f"(version {slot.version}){where}")
            return EX_OK
        if refused and len(serving) + len(refused) == len(mine):
            for name, pipeline in sorted(refused.items()):
                _say(f"edged: the running daemon (pid {pid}) refused to swap {model} slot "
                     f"{slot.name} into pipeline {name}: {pipeline['refused'].get('reason')}"
                     f"; it keeps serving slot {pipeline.get('slot')} (version "
                     f"{pipeline.get('version')})", error=True)
            _say(f"edged: the store's current slot is {slot.name} all the same: the daemon "
                 "serves it after a reload (`systemctl reload edged`) or its next start; "
                 f"`edged model rollback {model}` makes the store agree with what serves",
                 error=True)
            return EX_FAILURE
        if time.monotonic() >= deadline:
            now = ", ".join(f"{n}: slot {p.get('slot')}" for n, p in sorted(mine.items()))
            _say(f"edged: no running daemon confirmed {model} slot {slot.name} within "
                 f"{wait_s:g} s (pid {pid} serves {now}); it serves it after a reload or "
                 "its next start", error=True)
            return EX_OK
        time.sleep(0.1)


def _peek_name(directory: Path) -> str | None:
    """The model name an extracted, not yet verified manifest claims, to find the store
    whose version and schema it must meet; None if there is none to read (then
    ``verify_bundle`` refuses the manifest itself)."""
    from edged.base.durable import read_at_most
    from edged.base.strict_json import loads
    from edged.model.package import MANIFEST, MAX_MANIFEST_BYTES

    try:
        data = read_at_most(directory / MANIFEST, MAX_MANIFEST_BYTES)
        name = loads(data, max_bytes=MAX_MANIFEST_BYTES).get("name")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not name or Path(name).name != name \
            or name.startswith("."):
        return None
    return name


def _install(state_dir: Path, args: argparse.Namespace) -> int:
    from edged.model.bundle import (
        BundleError,
        ModelExpectation,
        TrustConfig,
        TrustStore,
        extract_bundle,
        verify_bundle,
    )
    from edged.model.store import ModelStore, make_dirs, state_owner

    trust = TrustStore.from_config(TrustConfig(keys_dir=args.trust, revoked=args.revoked))
    models = state_dir / "models"
    make_dirs(models, state_owner(state_dir))  # root's (sudo's) for the service's user
    # Unpacked beside the stores (same file system), so the slot is a rename, not a copy.
    # A hidden name is never a store (ModelStore.for_model refuses it).
    incoming = Path(tempfile.mkdtemp(prefix=".incoming-", dir=models))
    try:
        staged = incoming / "bundle"
        try:
            extract_bundle(args.bundle, staged)
            name = _peek_name(staged)
            current = (ModelStore.for_model(state_dir, name).current()
                       if name is not None else None)
            manifest = verify_bundle(
                staged, trust, installed_version=current.version if current else None,
                expect=ModelExpectation.from_manifest(current.manifest()) if current else None)
        except BundleError as exc:
            _say(f"REJECTED {exc.reason}: {exc.detail}", error=True)
            return EX_FAILURE
        if manifest.name != name:  # the same bytes: cannot happen
            raise RuntimeError(f"the manifest names {manifest.name!r}, not {name!r}")
        store = ModelStore.for_model(state_dir, manifest.name)
        slot = store.install(staged, move=True)
        if not args.activate:
            _say(f"installed {slot.model} version {slot.version} (slot {slot.name}), not "
                 "current: the store still serves "
                 f"{current.name if current else 'nothing'}")
            return EX_OK
        since = time.time()
        store.activate(slot, action="install")
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    previous = f"; previous (last-known-good): {current.name}" if current else ""
    _say(f"installed {slot.model} version {slot.version} (slot {slot.name}){previous}; "
         f"undo with `edged model rollback {slot.model}`")
    return _confirm(state_dir, slot, since, args.wait)


def _run(args: argparse.Namespace) -> int:
    from edged.base.errors import ConfigError, ModelError

    try:
        state_dir = _state_dir(args)
        if args.action == "list":
            return _list(state_dir, args.json)
        if args.action == "install":
            return _install(state_dir, args)
        return _rollback(state_dir, args.name, args.wait)
    except ConfigError as exc:
        for problem in exc.problems:
            _say(problem, error=True)
        return EX_CONFIG
    except (ModelError, OSError) as exc:
        _say(f"edged: {exc}", error=True)
        return EX_FAILURE


@hookimpl
def edged_cli_commands() -> list[CliCommand]:
    return [CliCommand("model", "list model store slots, install a signed bundle, roll a "
                       "model back", _arguments, _run)]
