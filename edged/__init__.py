"""edged: run, monitor and update ML models on fleets of edge devices."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edged")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
