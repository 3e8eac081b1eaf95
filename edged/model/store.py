"""One model's store on disk: complete slots, and ``state.json`` naming the current and
the previous (last-known-good) one.

Layout, under ``<state_dir>/models/<model name>/``::

    state.json              {"current": SLOT, "previous": SLOT | null, "history": [...]}
    .lock                   flock(2) of every change (released by the kernel on kill -9)
    slots/<version>-<id>/   a model directory (manifest.json + files) and .slot.json
    slots/.tmp-*            a slot being written (removed on the next open)
    slots/.trash-*          a slot being removed (removed on the next open)

Ownership: ``edged model`` run as root (sudo) creates files in a store that the
service's user (``edged``) must be able to replace and remove. Every file and directory
a store creates is given the owner of the state directory when the process runs as
root and that owner is another user (:func:`state_owner`), before it is renamed into
place, so a slot or a state file appears with its final owner or not at all.

Crash safety rests on two renames. A slot is written under ``.tmp-*``, fsynced, marked
complete by ``.slot.json`` and only then renamed to its final name, so a slot name that
exists is complete. ``state.json`` is replaced by rename after its new text is fsynced:
that rename is the only commit point of activate and rollback, so after a crash the
store's current slot is the old one or the new one, never none.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from edged.base.durable import fsync_dir, makedirs_durably
from edged.base.errors import ModelError
from edged.model.errors import StoreError
from edged.model.package import (
    MANIFEST,
    ModelManifest,
    builtin_root,
    parse_manifest,
    read_manifest,
)

log = structlog.get_logger("edged.model")

STORE_PREFIX = "store:"
STATE = "state.json"
SLOT_META = ".slot.json"
HISTORY_KEPT = 100
_TMP, _TRASH = ".tmp-", ".trash-"


@dataclass(frozen=True)
class Slot:
    """One complete slot: a verified model directory with its install record."""

    name: str  # the directory name, "<version>-<id>"
    path: Path
    model: str  # the manifest's model name
    version: int
    id: str  # the first 8 hex digits of the manifest's SHA-256
    installed_at: float  # Unix time

    def manifest(self) -> ModelManifest:
        return parse_manifest(self.path / MANIFEST)


#: (uid, gid) that files created in a store are given (see :func:`state_owner`).
Owner = tuple[int, int]


def _fsync_tree(path: Path) -> None:
    for directory, _, names in os.walk(path):
        for name in names:
            with open(os.path.join(directory, name), "rb") as handle:
                os.fsync(handle.fileno())
        fsync_dir(Path(directory))


def _write_synced(path: Path, text: str, owner: Owner | None = None) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        if owner is not None:
            os.fchown(handle.fileno(), *owner)
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def state_owner(state_dir: Path) -> Owner | None:
    """The owner to give what this process creates under ``state_dir``: the state
    directory's own, when this process runs as root and the directory belongs to
    another user (the service's); None (leave files as created) otherwise, or when
    ``state_dir`` does not exist yet."""
    if os.geteuid() != 0:
        return None
    try:
        info = os.stat(state_dir)
    except OSError:
        return None
    owner = (info.st_uid, info.st_gid)
    return None if owner == (os.geteuid(), os.getegid()) else owner


def give(path: Path, owner: Owner | None) -> None:
    """Give ``path`` (not a link's target) to ``owner``; nothing if None."""
    if owner is not None:
        os.chown(path, *owner, follow_symlinks=False)


def give_tree(path: Path, owner: Owner | None) -> None:
    """Give ``path`` and everything under it to ``owner``; nothing if None."""
    if owner is None:
        return
    give(path, owner)
    for directory, names, files in os.walk(path):
        for name in (*names, *files):
            give(Path(directory) / name, owner)


def make_dirs(path: Path, owner: Owner | None) -> None:
    """``mkdir -p`` whose new directories are given to ``owner``."""
    missing = [p for p in (path, *path.parents) if not p.is_dir()]
    makedirs_durably(path, fsync=False)
    for directory in missing:
        give(directory, owner)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ModelStore:
    """The slots of one model under ``root`` (``<state_dir>/models/<name>``).

    Methods block (copying, hashing, fsync): async callers run them in a thread. Every
    change holds an exclusive flock on ``root/.lock``, so ``edged model rollback`` and a
    running daemon never interleave. ``fault`` is a test hook called with the name of
    each crash point (``copied``, ``marked``, ``renamed``, ``state_written``,
    ``state_renamed``, ``trashed``); raising there simulates a crash. ``owner``: the
    (uid, gid) given to everything the store creates (see :func:`state_owner`; None
    leaves files to the process's own user)."""

    def __init__(self, root: Path, *, fault: Callable[[str], None] | None = None,
                 owner: Owner | None = None) -> None:
        self.root = Path(root)
        self.name = self.root.name
        self.slots_dir = self.root / "slots"
        self.owner = owner
        self._fault = fault or (lambda point: None)
        self.recover()

    @classmethod
    def for_model(cls, state_dir: Path, name: str, **kwargs: Any) -> ModelStore:
        """The store of model ``name`` under ``state_dir``; what it creates is given to
        the state directory's owner when run as root (``owner=`` overrides)."""
        if not name or Path(name).name != name or name.startswith("."):
            raise StoreError(f"not a model name: {name!r}")
        kwargs.setdefault("owner", state_owner(Path(state_dir)))
        return cls(Path(state_dir) / "models" / name, **kwargs)

    # -- reading ------------------------------------------------------------------------

    def slots(self) -> list[Slot]:
        """Every complete slot, oldest version first."""
        if not self.slots_dir.is_dir():
            return []
        found = [s for p in self.slots_dir.iterdir() if (s := self._slot_at(p)) is not None]
        return sorted(found, key=lambda s: (s.version, s.installed_at, s.name))

    def slot(self, name: str) -> Slot:
        slot = self._slot_at(self.slots_dir / name) if Path(name).name == name else None
        if slot is None:
            raise StoreError(f"{self.root}: no complete slot {name!r}")
        return slot

    def current(self) -> Slot | None:
        return self._effective()[0]

    def previous(self) -> Slot | None:
        return self._effective()[1]

    def state(self) -> dict[str, Any]:
        """``state.json`` as written (an empty state if there is none)."""
        try:
            data = json.loads((self.root / STATE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"current": None, "previous": None, "history": []}
        except (OSError, ValueError) as exc:
            # Cannot happen through this class (rename is atomic); a damaged disk can.
            log.error("model_store_state_unreadable", store=str(self.root), error=str(exc))
            return {"current": None, "previous": None, "history": []}
        if not isinstance(data, dict):
            data = {}
        history = data.get("history")
        return {"current": data.get("current"), "previous": data.get("previous"),
                "history": history if isinstance(history, list) else []}

    def _slot_at(self, path: Path) -> Slot | None:
        if path.name.startswith(".") or not path.is_dir():
            return None
        try:
            meta = json.loads((path / SLOT_META).read_text(encoding="utf-8"))
            return Slot(path.name, path, str(meta["model"]), int(meta["version"]),
                        str(meta["id"]), float(meta["installed_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _named(self, name: object) -> Slot | None:
        if not isinstance(name, str) or Path(name).name != name:
            return None
        return self._slot_at(self.slots_dir / name)

    def _effective(self) -> tuple[Slot | None, Slot | None]:
        state = self.state()
        current, previous = self._named(state["current"]), self._named(state["previous"])
        if current is None and state["current"] is not None:
            # The state names a slot that is gone (removed by hand, a damaged disk): serve
            # the last-known-good one, or the newest that is complete, rather than none.
            fallback = previous or next(reversed(self.slots()), None)
            log.error("model_store_current_missing", store=str(self.root),
                      slot=state["current"], serving=fallback and fallback.name)
            return fallback, None
        return current, previous

    # -- changing -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, wait: bool = True) -> Iterator[bool]:
        make_dirs(self.root, self.owner)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the lock

    def recover(self) -> list[str]:
        """Remove what a crash left: half-written and half-removed slots, a temporary
        state file. Skipped while another process holds the store (it may be writing
        them). Returns the names removed."""
        if not self.root.is_dir():
            return []
        removed: list[str] = []
        with self._locked(wait=False) as held:
            if not held:
                return []
            (self.root / f"{STATE}.tmp").unlink(missing_ok=True)
            if not self.slots_dir.is_dir():
                return []
            referenced = {self.state()[k] for k in ("current", "previous")}
            for path in self.slots_dir.iterdir():
                if path.name in referenced or self._slot_at(path) is not None:
                    continue
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
                removed.append(path.name)
            if removed:
                fsync_dir(self.slots_dir)
                log.warning("model_store_cleaned", store=str(self.root), removed=removed)
        return removed

    def install(self, model_dir: Path, *, move: bool = False) -> Slot:
        """Copy (or with ``move``, rename) a verified model directory into a new complete
        slot; installing the same manifest again returns the existing slot. Does not
        activate it."""
        model_dir = Path(model_dir)
        manifest = read_manifest(model_dir, verify=True)
        if manifest.name != self.name:
            raise StoreError(f"{model_dir}: model {manifest.name!r} does not belong in the "
                             f"store of {self.name!r}")
        digest = slot_id(model_dir)
        final = self.slots_dir / f"{manifest.version}-{digest}"
        with self._locked():
            make_dirs(self.slots_dir, self.owner)
            existing = self._slot_at(final)
            if existing is not None:
                return existing
            if final.exists():  # an incomplete directory under a final name: not ours
                shutil.rmtree(final)
            tmp = self.slots_dir / f"{_TMP}{uuid.uuid4().hex}"
            try:
                self._fill(model_dir, tmp, move)
                self._fault("copied")
                read_manifest(tmp, verify=True)  # what landed on disk, not what was read
                meta = {"model": manifest.name, "version": manifest.version, "id": digest,
                        "installed_at": time.time(), "source": str(model_dir)}
                _write_synced(tmp / SLOT_META, json.dumps(meta, indent=2) + "\n")
                give_tree(tmp, self.owner)  # before the rename: it appears as it stays
                _fsync_tree(tmp)
                self._fault("marked")
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            self._fault("renamed")
            fsync_dir(self.slots_dir)
        log.info("model_installed", model=self.name, slot=final.name,
                 version=manifest.version)
        return self.slot(final.name)

    @staticmethod
    def _fill(source: Path, tmp: Path, move: bool) -> None:
        if move:
            try:
                os.rename(source, tmp)
                return
            except OSError:  # another file system: copy instead
                pass
        shutil.copytree(source, tmp, symlinks=False)
        (tmp / SLOT_META).unlink(missing_ok=True)  # a slot copied from a slot

    def activate(self, slot: Slot | str, *, action: str = "activate") -> Slot:
        """Make ``slot`` current; the current one becomes previous (last-known-good)."""
        with self._locked():
            slot = self.slot(slot if isinstance(slot, str) else slot.name)
            current, previous = self._effective()
            if current is not None and current.name == slot.name:
                return slot
            self._commit(slot.name, current.name if current else None, action)
        log.info("model_activated", model=self.name, slot=slot.name, version=slot.version,
                 previous=current and current.name)
        return slot

    def rollback(self) -> Slot:
        """Make the previous slot current again. The new previous is the slot that was
        current before it (if still there), so a second rollback goes further back,
        never to the slot just rolled away from."""
        with self._locked():
            current, previous = self._effective()
            if previous is None:
                raise StoreError(f"{self.root}: no previous slot to roll back to")
            before = self._before(previous.name, current.name if current else None)
            self._commit(previous.name, before, "rollback")
        log.warning("model_rolled_back", model=self.name, slot=previous.name,
                    version=previous.version, rolled_back=current and current.name)
        return previous

    def _before(self, target: str, excluded: str | None) -> str | None:
        for entry in reversed(self.state()["history"]):
            if isinstance(entry, dict) and entry.get("current") == target:
                name = entry.get("previous")
                if name not in (None, target, excluded) and self._named(name) is not None:
                    return name
                return None
        return None

    def _commit(self, current: str, previous: str | None, action: str) -> None:
        history = self.state()["history"]
        history.append({"at": _now_iso(), "action": action, "current": current,
                        "previous": previous})
        state = {"current": current, "previous": previous,
                 "history": history[-HISTORY_KEPT:]}
        tmp = self.root / f"{STATE}.tmp"
        _write_synced(tmp, json.dumps(state, indent=2) + "\n", self.owner)
        self._fault("state_written")
        os.replace(tmp, self.root / STATE)  # the commit point
        self._fault("state_renamed")
        fsync_dir(self.root)

    def remove_unused(self, keep: int = 2) -> list[str]:
        """Delete slots that are neither current nor previous, keeping the newest so that
        ``keep`` slots remain in all. Returns the names removed."""
        removed: list[str] = []
        with self._locked():
            current, previous = self._effective()
            state = self.state()
            protected = {s.name for s in (current, previous) if s is not None}
            protected |= {state["current"], state["previous"]} - {None}
            others = [s for s in reversed(self.slots()) if s.name not in protected]
            for slot in others[max(0, keep - len(protected)):]:
                trash = self.slots_dir / f"{_TRASH}{slot.name}-{uuid.uuid4().hex[:8]}"
                os.rename(slot.path, trash)  # atomic: gone from slots() at once
                self._fault("trashed")
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(slot.name)
            if removed:
                fsync_dir(self.slots_dir)
                log.info("model_slots_removed", model=self.name, removed=removed)
        return removed

    def seed(self, builtin_dir: Path) -> Slot:
        """First start: install and activate ``builtin_dir`` if the store has no current
        slot. Returns the current slot."""
        current = self.current()
        if current is not None:
            return current
        slot = self.install(builtin_dir)
        with self._locked():
            current = self.current()  # another process may have seeded meanwhile
            if current is None:
                self._commit(slot.name, None, "seed")
                log.info("model_store_seeded", model=self.name, slot=slot.name)
                return slot
        return current


def slot_id(model_dir: Path) -> str:
    """The id of the slot a model directory is (or would be) installed as: the first 8
    hex digits of its manifest's SHA-256. The slot's name is ``<version>-<id>``, so a
    backend's model directory, a slot or its built-in original, names the slot it
    serves."""
    return hashlib.sha256((Path(model_dir) / MANIFEST).read_bytes()).hexdigest()[:8]


def stores(state_dir: Path) -> list[ModelStore]:
    """The store of every model under ``<state_dir>/models``."""
    root = Path(state_dir) / "models"
    if not root.is_dir():
        return []
    owner = state_owner(Path(state_dir))
    return [ModelStore(p, owner=owner) for p in sorted(root.iterdir())
            if p.is_dir() and ((p / STATE).is_file() or (p / "slots").is_dir())]


def builtin_model(name: str) -> Path | None:
    """The newest model shipped with edged whose manifest is named ``name``."""
    root = builtin_root()
    best: tuple[int, Path] | None = None
    for path in sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()):
        try:
            manifest = parse_manifest(path / MANIFEST)
        except ModelError:
            continue
        if manifest.name == name and (best is None or manifest.version > best[0]):
            best = (manifest.version, path)
    return best and best[1]


def resolve_store_model(spec: str, state_dir: Path) -> tuple[Path, ModelStore, Path | None]:
    """``store:NAME`` -> (the directory to load, the store, the built-in model to seed
    the store with when it starts, or None if the store has a current slot). Writes
    nothing: building a graph (``edged check-config``) must not change the disk."""
    name = spec.removeprefix(STORE_PREFIX)
    store = ModelStore.for_model(state_dir, name)
    current = store.current()
    if current is not None:
        return current.path, store, None
    builtin = builtin_model(name)
    if builtin is None:
        raise StoreError(f"model store {store.root} is empty and no built-in model is "
                         f"named {name!r} to seed it with")
    return builtin, store, builtin
