"""Where a command finds the device config and the state directory when it is told
neither: ``-c FILE`` first, then ``$EDGED_CONFIG``, then ``/etc/edged/edged.yaml``
(where ``systemd/install.sh`` puts it and ``systemd/edged.service`` reads it), so that
``edged run``, ``edged check-config`` and ``edged model`` act on the same device as the
service without being told.

The state directory is read from the config's own ``state_dir`` key without validating
the rest: ``edged model`` must work in an operator's shell, where the secrets the
service gets (``${NAME}`` from ``edged.env`` or systemd credentials) are not set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edged.base.errors import ConfigError
from edged.config.yamlfile import ConfigFileError, line_of, read_yaml

#: The device config when none is named (systemd/install.sh, systemd/edged.service).
DEFAULT_CONFIG = Path("/etc/edged/edged.yaml")
#: Names the config when ``-c FILE`` is not given.
CONFIG_ENV = "EDGED_CONFIG"
#: Where state lives without a ``state_dir`` key outside systemd (which sets
#: ``$STATE_DIRECTORY`` from the unit's ``StateDirectory=``).
FALLBACK_STATE_DIR = Path("state")


def config_path(given: str | Path | None, how: str = "-c FILE") -> Path:
    """The config file to read: ``given``, else ``$EDGED_CONFIG``, else
    :data:`DEFAULT_CONFIG`. A file taken by default that does not exist is a
    :class:`ConfigFileError` naming the path tried and how to choose another (``how``:
    the command's own way to name a file)."""
    if given:
        return Path(given)
    named = os.environ.get(CONFIG_ENV)
    path, source = (Path(named), f"from ${CONFIG_ENV}") if named else (DEFAULT_CONFIG,
                                                                        "the default")
    if not path.is_file():
        raise ConfigFileError("unreadable", [
            f"No config file at {path} ({source}): name one with {how}, or set "
            f"{CONFIG_ENV}=FILE"])
    return path


def default_state_dir() -> Path:
    """The state directory of a config without ``state_dir``: systemd's
    ``$STATE_DIRECTORY``, else ``./state``."""
    return Path(os.environ.get("STATE_DIRECTORY") or FALLBACK_STATE_DIR)


def state_dir_of(path: Path) -> tuple[Path, bool]:
    """(the state directory ``path`` names, whether it names one) read from its
    ``state_dir`` key alone, under the config file's bounds; ConfigError if the file
    cannot be read or the key is not a path."""
    data, lines = read_yaml(path)
    value: Any = data.get("state_dir") if isinstance(data, dict) else None
    if value is None:
        return default_state_dir(), False
    if not isinstance(value, str) or not value:
        line = line_of(lines, ("state_dir",))
        where = f"{path}, line {line}" if line else str(path)
        raise ConfigError([f"Invalid config for 'state_dir' at {where}: must be a "
                           f"directory path (got {value!r:.60})"])
    return Path(value), True
