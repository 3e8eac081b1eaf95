"""The loaded models, remembered across restarts (``restore_models: true``).

A client of the old agent loads its model once and remembers that it did; after the
agent restarts it calls Predict on a model the agent no longer has, and gets NOT_FOUND
for as long as it runs. The old agent kept nothing across a restart, so edged keeps
nothing by default either; with ``restore_models`` on, the loaded set is written to
``<capture disk_path>/.loaded-models.json`` (beside the capture spool, whose lock keeps a
second agent off both) after every LoadModel and UnLoadModel, durably (a temporary name,
fsync, rename), and loaded again at start before the socket accepts a call::

    {"version": 1, "models": [{"name": "turbine", "url": "agent/model/0/turbine/1.0",
                               "directory": "/home/pi/agent/model/0/turbine/1.0"}]}

``url`` is the url as the client sent it (ListModels gives it back), ``directory`` where
it led. A model is restored from its directory, which must still lie under a model root:
the file is never trusted to widen what LoadModel may load.

The file is read as untrusted input: at most :data:`MAX_BYTES`, strict JSON (no repeated
key, :data:`MAX_DEPTH` levels), at most :data:`MAX_MODELS` entries, each name a valid
model name and each path at most :data:`MAX_PATH` characters. A file that is not that is
logged (``loaded_models_file_rejected``), counted, renamed ``.loaded-models.json.corrupt``
and the agent starts with nothing restored; it never stops the agent. A model that fails
to load again is logged (``model_restore_failed``) and counted, and forgotten: the file
always holds the set that is loaded.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from edged.agent.errors import AgentError, InvalidArgument
from edged.agent.models import MAX_URL, ModelRegistry, check_name
from edged.base.durable import makedirs_durably, read_at_most, write_durably
from edged.base.metrics import Counters
from edged.base.strict_json import JsonError
from edged.base.strict_json import loads as strict_loads

log = structlog.get_logger("edged.agent")

VERSION = 1
#: Entries at most: max_loaded_models' own bound.
MAX_MODELS = 1024
#: Characters of a url or directory at most (PATH_MAX; LoadModel refuses longer urls).
MAX_PATH = MAX_URL
#: The largest file read: MAX_MODELS entries of the longest names and paths fit.
MAX_BYTES = 10 * 1024 * 1024
#: {"models": [{...}]} nests 3 deep.
MAX_DEPTH = 4


class LoadedModelsFileError(ValueError):
    """The file is not a loaded-models file; the message says what is wrong and where."""


@dataclass(frozen=True)
class SavedModel:
    """One loaded model as remembered: its name, the url its client sent, where it led."""

    name: str
    url: str
    directory: str


def encode(models: Sequence[SavedModel]) -> bytes:
    return orjson.dumps({"version": VERSION, "models": [
        {"name": m.name, "url": m.url, "directory": m.directory} for m in models]},
        option=orjson.OPT_INDENT_2)


def decode(data: bytes) -> list[SavedModel]:
    """The models a file holds; :class:`LoadedModelsFileError` for anything else."""
    try:
        document = strict_loads(data, max_bytes=MAX_BYTES, max_depth=MAX_DEPTH)
    except JsonError as exc:
        raise LoadedModelsFileError(str(exc)) from None
    if not isinstance(document, dict) or set(document) != {"version", "models"}:
        raise LoadedModelsFileError("not an object of exactly 'version' and 'models'")
    version = document["version"]
    if isinstance(version, bool) or version != VERSION:
        raise LoadedModelsFileError(f"version {repr(version)[:20]} is not {VERSION}")
    entries = document["models"]
    if not isinstance(entries, list):
        raise LoadedModelsFileError("'models' is not a list")
    if len(entries) > MAX_MODELS:
        raise LoadedModelsFileError(f"{len(entries)} models, more than {MAX_MODELS}")
    models = [_entry(index, entry) for index, entry in enumerate(entries)]
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise LoadedModelsFileError("a model name appears twice")
    return models


def _entry(index: int, entry: Any) -> SavedModel:
    where = f"models[{index}]"
    if not isinstance(entry, dict) or set(entry) != {"name", "url", "directory"}:
        raise LoadedModelsFileError(f"{where} is not an object of exactly 'name', 'url' "
                                    "and 'directory'")
    name, url, directory = entry["name"], entry["url"], entry["directory"]
    if not isinstance(name, str):
        raise LoadedModelsFileError(f"{where}.name is not a string")
    try:
        check_name(name)
    except InvalidArgument as exc:
        raise LoadedModelsFileError(f"{where}.name: {exc}") from None
    for key, value in (("url", url), ("directory", directory)):
        if not isinstance(value, str) or not 0 < len(value) <= MAX_PATH or "\0" in value:
            raise LoadedModelsFileError(f"{where}.{key} is not a path of 1 to {MAX_PATH} "
                                        "characters")
    if not directory.startswith("/"):
        raise LoadedModelsFileError(f"{where}.directory is not an absolute path")
    return SavedModel(name, url, directory)


class LoadedModelsFile:
    """The file, read once at start and written after every change of the loaded set.
    Thread-safe: LoadModel and UnLoadModel write from worker threads."""

    def __init__(self, path: Path, *, fsync: bool = True,
                 counters: Counters | None = None) -> None:
        self.path = path
        self.fsync = fsync
        self.counters = counters if counters is not None else Counters()
        self._lock = threading.Lock()

    def read(self) -> list[SavedModel]:
        """The models to restore: none when there is no file, or when it is unreadable
        or corrupt (reported, and a corrupt one set aside)."""
        try:
            data = read_at_most(self.path, MAX_BYTES)
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._rejected("unreadable", f"cannot read it: {exc.strerror or exc}")
            return []
        try:
            if len(data) > MAX_BYTES:
                raise LoadedModelsFileError(f"over the limit of {MAX_BYTES:,} bytes")
            return decode(data)
        except LoadedModelsFileError as exc:
            aside = self.path.with_name(self.path.name + ".corrupt")
            try:
                os.replace(self.path, aside)
            except OSError as move:
                aside = None
                log.error("loaded_models_file_not_set_aside", path=str(self.path),
                          error=move.strerror or str(move))
            self._rejected("corrupt", str(exc), set_aside=str(aside) if aside else None)
            return []

    def _rejected(self, reason: str, error: str, **fields: Any) -> None:
        self.counters.inc("agent_loaded_models_file_rejected", reason=reason)
        log.error("loaded_models_file_rejected", path=str(self.path), reason=reason,
                  error=error, note="no model restored", **fields)

    def save(self, registry: ModelRegistry) -> None:
        """Write the set ``registry`` holds now (blocking: call from a worker thread). A
        write that fails is logged and counted: the loaded models stay loaded."""
        with self._lock:  # the set read under the lock: the last writer writes the latest
            models = [SavedModel(m.name, m.url, str(m.directory)) for m in registry.list()]
            data = encode(models)
            try:
                if len(data) > MAX_BYTES:
                    raise OSError(f"{len(data):,} bytes, over the limit of {MAX_BYTES:,}")
                makedirs_durably(self.path.parent, self.fsync)
                write_durably(self.path, [data], self.fsync)
            except OSError as exc:
                self.counters.inc("agent_loaded_models_file_write_failed")
                log.error("loaded_models_file_write_failed", path=str(self.path),
                          error=exc.strerror or str(exc), models=[m.name for m in models],
                          note="a restart will not restore these")

    def discard(self) -> None:
        """``restore_models`` is off: a file left from when it was on is stale, and would
        restore old models the day it is turned on again."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            log.info("loaded_models_file_removed", path=str(self.path),
                     note="restore_models is off")


def restore(registry: ModelRegistry, file: LoadedModelsFile) -> int:
    """Load again every model ``file`` remembers (blocking); returns how many loaded. One
    that fails is logged and counted and does not stop the others; the file is rewritten
    to what is loaded."""
    saved = file.read()
    restored = 0
    for model in saved:
        try:
            registry.load(model.directory, model.name, shown_url=model.url)
        except AgentError as exc:
            file.counters.inc("agent_models_restore_failed", reason=exc.reason)
            log.error("model_restore_failed", model=model.name, url=model.url,
                      directory=model.directory, code=exc.code, error=str(exc))
        except Exception as exc:  # a model must never stop the agent from starting
            file.counters.inc("agent_models_restore_failed", reason="internal")
            log.exception("model_restore_failed", model=model.name, url=model.url,
                          directory=model.directory, error=str(exc))
        else:
            restored += 1
            file.counters.inc("agent_models_restored")
            log.info("model_restored", model=model.name, url=model.url,
                     directory=model.directory)
    if saved:
        file.save(registry)
    return restored
