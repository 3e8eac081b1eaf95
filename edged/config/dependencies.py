"""The Python packages a config's features need, checked in one place before anything
starts.

edged imports what a configured feature needs only when it builds or starts that feature
(a device without ``metrics:`` never loads prometheus_client), and a feature that fails
to start may be disabled while the daemon runs on: S3 capture without boto3 would pass
``check-config``, then run without capture while systemd shows the unit active. So
``edged check-config``, ``edged run`` and a reload import each package the config needs
first, and a missing one is a config error naming the key that asks for it and the
command that installs it (exit 78; a reload is refused).

The table below is every import made for a configured feature that an install can lack:
an optional extra (boto3), or a dependency a platform may not have a wheel of
(onnxruntime on 32-bit ARM, docs/install.md) or that was left out of an install made
with ``--no-deps``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from edged.config import EdgedConfig, located
from edged.config.yamlfile import Location


@dataclass(frozen=True)
class Needed:
    """A package a feature imports: its import name, its distribution, what installs it."""

    module: str
    distribution: str
    install: str  # the argument to pip install
    note: str = ""


BOTO3 = Needed("boto3", "boto3", "'edged[s3]'")
ONNXRUNTIME = Needed("onnxruntime", "onnxruntime", "onnxruntime",
                     " (no wheel for 32-bit ARM: see docs/install.md)")
PROMETHEUS = Needed("prometheus_client", "prometheus-client", "prometheus-client")
GRPC = Needed("grpc", "grpcio", "grpcio")
AIOMQTT = Needed("aiomqtt", "aiomqtt", "aiomqtt")
CRYPTOGRAPHY = Needed("cryptography", "cryptography", "cryptography")
AIOHTTP = Needed("aiohttp", "aiohttp", "'edged[dashboard]'")

#: Inference backends of edged's own that import a package when they load.
_BACKENDS = {"onnx": ("ONNX inference", ONNXRUNTIME),
             "edge_agent": ("inference through the Edge Agent", GRPC)}


def needs(config: EdgedConfig) -> Iterator[tuple[Location, str, Needed]]:
    """(the key that asks for it, the feature, the package) for every package the
    config's features import."""
    for name, pipeline in config.pipelines.items():
        backend = _BACKENDS.get(pipeline.inference.type)
        if backend is not None:
            yield ("pipelines", name, "inference", "type"), *backend
        capture = pipeline.spec.capture
        if capture is not None and capture.destination.type == "s3":
            yield (("pipelines", name, "capture", "destination", "type"), "S3 capture",
                   BOTO3)
    if config.raw.metrics is not None:
        yield ("metrics",), "the /metrics endpoint", PROMETHEUS
    if config.raw.dashboard is not None:
        yield ("dashboard",), "the dashboard", AIOHTTP
    if config.cloud is not None:
        yield ("cloud",), "the cloud link", AIOMQTT
        if config.cloud.jobs is not None and config.cloud.jobs.enabled:
            yield ("cloud", "jobs"), "signed model updates", CRYPTOGRAPHY


def missing_dependencies(config: EdgedConfig) -> list[str]:
    """One located problem per feature whose package cannot be imported here."""
    importlib.invalidate_caches()  # a package installed since the last look (a reload)
    errors: dict[str, str | None] = {}
    problems = []
    for loc, feature, needed in needs(config):
        if needed.module not in errors:
            errors[needed.module] = _import_error(needed.module)
        error = errors[needed.module]
        if error is not None:
            problems.append(located(config, loc, _message(feature, needed, error)))
    return problems


def missing(feature: str, needed: Needed) -> str | None:
    """What to tell the user when ``feature``'s package cannot be imported, or None."""
    error = _import_error(needed.module)
    return None if error is None else _message(feature, needed, error)


def _message(feature: str, needed: Needed, error: str) -> str:
    return (f"{feature} needs the Python package {needed.distribution}, which cannot be "
            f"imported ({error}): install it with `{sys.executable} -m pip install "
            f"{needed.install}`{needed.note}")


def _import_error(module: str) -> str | None:
    """Why ``module`` cannot be imported, or None. A real import: a package that is
    there but broken (a missing shared library, a wrong platform's wheel) fails too."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - ImportError, OSError from a native library...
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None
