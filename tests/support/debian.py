"""Debian programs the tests need (mosquitto, chromium), installed with apt when they
are missing and this process may install them (root, apt-get present), as CI does."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence


def program(name: str, packages: Sequence[str], paths: Sequence[str] = (),
            install: bool = True) -> str:
    """The path of executable ``name`` (found on PATH or at one of ``paths``),
    installing Debian's ``packages`` first if it is missing and may be installed."""
    found = shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)
    if found:
        return found
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                        *packages], check=True, env=env, stdout=subprocess.DEVNULL)
        return program(name, packages, paths, install=False)
    raise RuntimeError(f"{name} is not installed (apt-get install {' '.join(packages)})")
