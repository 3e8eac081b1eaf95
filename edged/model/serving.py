"""``<state_dir>/serving.json``: what a running daemon serves, for ``edged model`` to
confirm an install or a rollback.

The daemon (``edged.runtime.store_watch``) writes it, durably and by rename, when its
graph starts and whenever a pipeline's model changes or a change is refused::

    {"pid": 812, "started": 4711, "updated_at": 1767000000.0,
     "pipelines": {"turbines": {"store": "windturbine", "model": "windturbine",
                                "version": 2, "slot": "2-1a2b3c4d",
                                "refused": null}}}

``refused``, when a swap was refused: ``{"slot", "version", "reason", "at"}``. ``pid``
and ``started`` (the process's start time in clock ticks since boot, /proc/PID/stat)
tell a live daemon from a file left by one that stopped, even once its pid is reused.
The reader trusts nothing in the file: it is read under a bound and anything
malformed is treated as no record.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from edged.base.durable import makedirs_durably, read_at_most, write_durably
from edged.base.strict_json import JsonError, loads

SERVING = "serving.json"
#: Largest serving.json read; one pipeline takes ~300 bytes.
MAX_SERVING_BYTES = 256 * 1024


def process_started(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), None if it is not there
    or /proc cannot tell."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read(4096)
        # Field 22; the command name (field 2) is in parentheses and may hold anything.
        return int(text[text.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def write_serving(state_dir: Path, pipelines: dict[str, dict[str, Any]]) -> None:
    """Record what this process serves, per pipeline. Blocking (fsync)."""
    record = {"pid": os.getpid(), "started": process_started(os.getpid()),
              "updated_at": time.time(), "pipelines": pipelines}
    makedirs_durably(Path(state_dir), fsync=True)
    write_durably(Path(state_dir) / SERVING,
                  [json.dumps(record, indent=2).encode() + b"\n"], fsync=True)


def read_serving(state_dir: Path) -> dict[str, Any] | None:
    """The last record written under ``state_dir``, or None if there is none or it is
    not one (unreadable, too large, not JSON, not the shape above)."""
    try:
        data = read_at_most(Path(state_dir) / SERVING, MAX_SERVING_BYTES)
        if len(data) > MAX_SERVING_BYTES:
            return None
        record = loads(data, max_bytes=MAX_SERVING_BYTES)
    except (OSError, JsonError, ValueError):
        return None
    if not (isinstance(record, dict) and isinstance(record.get("pid"), int)
            and isinstance(record.get("pipelines"), dict)
            and all(isinstance(p, dict) for p in record["pipelines"].values())):
        return None
    return record


def daemon_alive(record: dict[str, Any]) -> bool:
    """Whether the process that wrote ``record`` still runs."""
    pid, started = record.get("pid"), record.get("started")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if isinstance(started, int):
        return process_started(pid) == started
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: there all the same
    return True
