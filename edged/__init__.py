"""edged: run, monitor and update ML models on fleets of edge devices."""

from importlib.metadata import PackageNotFoundError, version

import pluggy

try:
    __version__ = version("edged")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

#: Decorator for plugin hook implementations (see :mod:`edged.plugin.hookspecs`).
hookimpl = pluggy.HookimplMarker("edged")

__all__ = ["__version__", "hookimpl"]
