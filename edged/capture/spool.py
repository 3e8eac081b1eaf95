"""Spool primitives: the lock that makes one writer per spool and the agent's status
log. Everything here is blocking file I/O; callers run
it through ``asyncio.to_thread``.

The spool itself (segments, upload intents, ``failed/``) is :mod:`edged.capture.segments`.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections import OrderedDict
from pathlib import Path

import orjson

from edged.base.durable import fsync_dir, write_durably
from edged.base.errors import EdgedError

__all__ = ["SpoolLocked", "StatusLog", "lock_spool"]


class SpoolLocked(EdgedError):
    """Another process (or another capture in this one) holds this spool."""


def lock_spool(root: Path, holder: str = "another process") -> int:
    """Take ``root/lock`` (flock, released by the kernel if the process dies): one
    writer per spool. Returns the descriptor to close; SpoolLocked if it is taken."""
    fd = os.open(root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(f"capture spool {root} is in use by {holder}") from None
    return fd


#: The terminal statuses a status log holds.
STATUSES = frozenset({"SUCCESS", "FAILURE"})


def parse_status(line: bytes) -> tuple[str, str] | None:
    """(capture id, status) of one status-log line; None for a line that is not one
    (torn by a crash, or anything else a disk can hold)."""
    try:
        item = orjson.loads(line)  # nesting is bounded: deeper is a JSONDecodeError
    except orjson.JSONDecodeError:
        return None
    if not isinstance(item, dict):
        return None
    capture_id, status = item.get("id"), item.get("status")
    if not isinstance(capture_id, str) or status not in STATUSES:
        return None
    return capture_id, status


class StatusLog:
    """Terminal statuses (SUCCESS / FAILURE) of the last ``keep`` capture ids, kept in an
    append-only JSON-lines file that is rewritten when it grows past twice that."""

    def __init__(self, path: Path, keep: int, *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.keep = keep
        self.fsync = fsync
        self._lines = 0
        self._torn_tail = False

    def load(self) -> OrderedDict[str, str]:
        statuses: OrderedDict[str, str] = OrderedDict()
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return statuses
        self._torn_tail = bool(text) and not text.endswith(b"\n")
        for line in text.splitlines():
            status = parse_status(line)
            if status is None:
                continue  # a line torn by a crash mid-append
            capture_id, status = status
            statuses.pop(capture_id, None)
            statuses[capture_id] = status
            self._lines += 1
        while len(statuses) > self.keep:
            statuses.popitem(last=False)
        return statuses

    def append(self, items: list[tuple[str, str]], current: OrderedDict[str, str]) -> None:
        """Append ``items``; ``current`` (every status to keep, items included) is what a
        compaction writes."""
        if self._lines + len(items) > 2 * self.keep:
            lines = [json.dumps({"id": k, "status": v}) + "\n" for k, v in current.items()]
            write_durably(self.path, [("".join(lines)).encode()], self.fsync)
            self._lines = len(lines)
            self._torn_tail = False
            return
        created = not self.path.exists()
        with open(self.path, "a", encoding="utf-8") as f:
            if self._torn_tail:
                f.write("\n")  # end the line a crash cut short instead of extending it
                self._torn_tail = False
            f.writelines(json.dumps({"id": k, "status": v}) + "\n" for k, v in items)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        if created and self.fsync:
            fsync_dir(self.path.parent)
        self._lines += len(items)
