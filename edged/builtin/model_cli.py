"""Plugin ``model``: registers the ``edged model`` command (list slots, install a signed
bundle, roll back).

All act on the model store on disk. A running daemon serves the store's current slot
from its next reload on: ``systemctl reload edged`` (SIGHUP) after an install or a
rollback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from edged import hookimpl
from edged.config.locate import CONFIG_ENV, DEFAULT_CONFIG, config_path, state_dir_of
from edged.plugin.registry import CliCommand

EX_OK, EX_FAILURE, EX_CONFIG = 0, 1, 78


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


def _rollback(state_dir: Path, name: str) -> int:
    from edged.model.store import ModelStore

    store = ModelStore.for_model(state_dir, name)
    if store.current() is None:
        _say(f"edged: no model {name!r} in {state_dir / 'models'}", error=True)
        return EX_FAILURE
    slot = store.rollback()
    _say(f"{name}: current slot is now {slot.name} (version {slot.version}); a running "
          "daemon serves it after its next reload (SIGHUP, `systemctl reload edged`)")
    return EX_OK


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
        store.activate(slot, action="install")
    finally:
        shutil.rmtree(incoming, ignore_errors=True)
    previous = f"; previous (last-known-good): {current.name}" if current else ""
    _say(f"installed {slot.model} version {slot.version} (slot {slot.name}){previous}")
    _say("a running daemon serves it after its next reload (SIGHUP, "
         "`systemctl reload edged`); undo with `edged model rollback "
         f"{slot.model}`")
    return EX_OK


def _run(args: argparse.Namespace) -> int:
    from edged.base.errors import ConfigError, ModelError

    try:
        state_dir = _state_dir(args)
        if args.action == "list":
            return _list(state_dir, args.json)
        if args.action == "install":
            return _install(state_dir, args)
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
    return [CliCommand("model", "list model store slots, install a signed bundle, roll a "
                       "model back", _arguments, _run)]
