"""``edged model`` as an operator runs it, and the signed bundles it installs: the
built-in model relabelled with another version (same weights, so the same golden
pairs), signed by a key made on first use."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from edged.model.bundle import build_bundle, generate_keypair, load_private_key
from edged.model.package import resolve_model_path

BUILTIN = resolve_model_path("builtin:windturbine-v1")
EX_CONFIG = 78


def edged_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None,
              timeout: float = 120, **popen: object) -> subprocess.CompletedProcess[str]:
    """``python -m edged ARGS``; ``env`` adds to (a None value removes from) this
    process's environment, without $EDGED_CONFIG unless it names one."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("EDGED_CONFIG", "EDGED_BLOCK_PLUGINS", "STATE_DIRECTORY")}
    for key, value in (env or {}).items():
        if value is None:
            environ.pop(key, None)
        else:
            environ[key] = value
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, env=environ, cwd=cwd,
                          **popen)  # type: ignore[call-overload]


def signed_bundle(directory: Path, version: int, keys: Path, name: str = "bundle",
                  **preprocessing: object) -> Path:
    """A bundle of windturbine-v1 relabelled ``version`` (and ``preprocessing`` keys
    changed), signed by the key in ``keys`` (made there on first use; the folder is
    also a trust directory)."""
    if not (keys / "signing.key.pem").exists():
        generate_keypair(keys)
    model_dir = relabelled_model(directory / f"{name}-model", version, **preprocessing)
    return build_bundle(model_dir, directory / f"{name}.tar.gz",
                        load_private_key(keys / "signing.key.pem"))


def relabelled_model(target: Path, version: int, **preprocessing: object) -> Path:
    """windturbine-v1 copied to ``target``, its manifest saying ``version`` (and
    ``preprocessing`` keys changed): a model directory, not signed."""
    shutil.copytree(BUILTIN, target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = version
    manifest["preprocessing"].update(preprocessing)
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def store_config(state_dir: Path, *, turbines: int = 2, extra: str = "") -> str:
    """A device config serving ``store:windturbine`` from ``state_dir`` to a simulated
    farm."""
    return f"""\
state_dir: {state_dir}
log: {{stats_interval_s: 0}}
sources:
  farm: {{type: simulator, turbines: {turbines}}}
pipelines:
  turbines:
    inputs: [farm]
    preprocessor: {{type: windturbine}}
    inference: {{type: onnx, model: "store:windturbine"}}
{extra}"""
