"""Model directories for the store's tests: copies of the built-in model with another
version (same files, so the same hashes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edged.model.package import resolve_model_path

BUILTIN = resolve_model_path("builtin:windturbine-v1")


@pytest.fixture
def make_model(tmp_path):
    """``make_model(version, **preprocessing)``: a copy of windturbine-v1 whose manifest
    says ``version`` and, optionally, other preprocessing parameters."""

    made: list[int] = []

    def make(version: int, **preprocessing: object) -> Path:
        made.append(version)
        target = tmp_path / "incoming" / f"windturbine-v{version}-{len(made)}"
        shutil.copytree(BUILTIN, target)
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["version"] = version
        manifest["preprocessing"].update(preprocessing)
        (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return target

    return make
