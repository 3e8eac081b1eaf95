"""Claiming the path of a Unix socket a daemon serves on.

A socket file outlives a crash; the next start must remove it, but never one that
another process still serves on, nor a file that is not a socket at all.
"""

from __future__ import annotations

import socket
import stat
from pathlib import Path

#: The longest path a Unix socket may have on Linux (sun_path, 108 bytes with its NUL).
MAX_PATH_BYTES = 107


def claim_socket_path(path: Path) -> bool:
    """Make ``path`` free to bind: create its directory and remove a socket left by a
    crash. True if one was removed; FileExistsError if a process still serves on it or
    the path is not a socket; ValueError if the path is too long for a Unix socket."""
    if len(str(path).encode()) > MAX_PATH_BYTES:
        raise ValueError(f"{path} is longer than the {MAX_PATH_BYTES} bytes a Unix socket "
                         "path may have")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)  # nobody listens: left by a crash
        return True
    finally:
        probe.close()
    raise FileExistsError(f"another process is serving on {path}")
