"""Writes that survive a crash or a power cut: the few primitives every store uses."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, parts: list[bytes], fsync: bool) -> None:
    """Write ``parts`` to ``path`` through a temporary name; fsync file and directory.
    A write that fails (a full disk) removes its temporary file: a half-written file
    left behind would hold on to the very space that ran out."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            for part in parts:
                f.write(part)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def makedirs_durably(path: Path, fsync: bool) -> None:
    """``mkdir -p`` that fsyncs the parent of every directory it creates."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        if fsync:
            fsync_dir(directory.parent)


def read_at_most(path: Path, limit: int) -> bytes:
    """The file's bytes, or its first ``limit`` + 1 (enough to refuse it as too big)
    without reading a file of any size into memory."""
    with open(path, "rb") as f:
        return f.read(limit + 1)


def disk_bytes(stat: os.stat_result) -> int:
    """What a file takes on disk: its allocated blocks (a 100-byte file holds a whole
    4 KiB block), never less than its length (a filesystem that compresses, or reports
    no blocks yet, is counted by length)."""
    return max(stat.st_blocks * 512, stat.st_size)


def free_space(path: Path) -> tuple[int, int, int]:
    """(bytes an unprivileged writer may still use, allocation unit, size) of the
    filesystem holding ``path``."""
    vfs = os.statvfs(path)
    unit = vfs.f_frsize or vfs.f_bsize or 4096
    return vfs.f_bavail * unit, unit, vfs.f_blocks * unit
