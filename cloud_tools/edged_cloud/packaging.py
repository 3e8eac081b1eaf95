"""A signed model bundle from a training or optimise output, checked as a device checks it.

The manifest, the golden pairs (held-out windows run through the model by the device's own
session factory, so the pairs are what the bundle's model computes, optimised or not), the
preprocessing with its statistics and thresholds and the optional shadow limits are staged
as a model directory; ``edged.model.bundle.build_bundle`` signs and packs it, and
``extract_bundle`` + ``verify_bundle`` (the device's verifier) must accept the result before
the command succeeds. docs/bundle.md is the format.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edged_cloud.errors import BadInput, CloudToolError
from edged_cloud.model_source import ModelSource, predict, read_source

#: Golden pairs per bundle unless asked otherwise: enough to catch a wrong model or a
#: corrupted file on every kind of window, small enough to check in milliseconds.
DEFAULT_GOLDEN = 16


def pick_golden(windows: np.ndarray, labels: np.ndarray | None, count: int) -> np.ndarray:
    """Indices of ``count`` windows spread over the held-out set, every label (healthy,
    each fault kind) represented when labels are known."""
    count = min(count, len(windows))
    if labels is None:
        return np.unique(np.linspace(0, len(windows) - 1, count).round().astype(int))
    kinds = sorted(set(labels.tolist()))
    chosen: list[int] = []
    for k, kind in enumerate(kinds):
        where = np.flatnonzero(labels == kind)
        share = count // len(kinds) + (1 if k < count % len(kinds) else 0)
        if share:
            chosen += where[np.linspace(0, len(where) - 1, min(share, len(where)))
                            .round().astype(int)].tolist()
    return np.array(sorted(set(chosen)), dtype=int)


def write_golden(path: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    """golden.npz with fixed zip timestamps (np.savez stamps the time of writing), so the
    same model and windows give the same bytes and the same bundle hash."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, array in (("inputs", inputs), ("outputs", outputs)):
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def check_preprocessing(source: ModelSource) -> None:
    """The device's own parser must take the statistics and thresholds."""
    pre = source.preprocessing
    if pre.get("type") == "windturbine":
        from edged.windturbine.features import WindTurbineParams

        try:
            WindTurbineParams.from_manifest(pre)
        except ValueError as exc:
            raise BadInput(f"{source.directory}: preprocessing: {exc}") from None


def shadow_limits(source: ModelSource, overrides: dict[str, float]) -> dict[str, float] | None:
    """The manifest's ``shadow``: the source's, with ``overrides`` on top, checked by the
    device's parser."""
    from edged.model.bundle.errors import BundleError
    from edged.model.shadow import ShadowLimits

    shadow = dict(source.extra.get("shadow") or {})
    shadow.update(overrides)
    if not shadow:
        return None
    try:
        ShadowLimits.from_manifest({"shadow": shadow})
    except BundleError as exc:
        raise BadInput(str(exc).removeprefix("malformed: ")) from None
    return shadow


def build(source_dir: Path, out: Path, private_key: Any, kid: str, version: int, *,
          name: str | None = None, golden: int = DEFAULT_GOLDEN,
          shadow: dict[str, float] | None = None, installed: Path | None = None) -> dict:
    """Build, sign and verify the bundle; return what was made (the ``--json`` object)."""
    from edged.base.errors import ModelError
    from edged.model.bundle import (
        BundleError,
        ModelExpectation,
        TrustStore,
        build_bundle,
        extract_bundle,
        verify_bundle,
    )
    from edged.model.package import MANIFEST, read_manifest, resolve_model_path, sha256_file

    source = read_source(source_dir)
    check_preprocessing(source)
    if version < 1:
        raise BadInput(f"--version {version}: a version is an integer >= 1")
    if out.exists():
        raise CloudToolError(f"{out} exists already; not overwriting it")
    expect, installed_version = None, None
    if installed is not None:
        try:
            current = read_manifest(resolve_model_path(str(installed)), verify=False)
        except ModelError as exc:
            raise BadInput(str(exc)) from None
        expect, installed_version = ModelExpectation.from_manifest(current), current.version
    windows, labels = source.held_out()
    chosen = pick_golden(windows, labels, golden)
    dtype = source.inputs[0]["dtype"]
    inputs = np.ascontiguousarray(windows[chosen], dtype=np.dtype(dtype))
    try:
        outputs = predict(source.model, inputs, dtype=dtype)
    except Exception as exc:  # onnxruntime's errors are untyped
        raise BadInput(f"{source.model}: ONNX Runtime cannot run it: {exc}") from None
    manifest: dict[str, Any] = {
        **{k: v for k, v in source.extra.items() if k != "shadow"},
        "name": name or source.name, "version": version, "format": "onnx",
        "model": source.model.name, "inputs": source.inputs, "outputs": source.outputs,
        "preprocessing": source.preprocessing, "golden": "golden.npz",
    }
    if source.validation is not None and source.validation.ndim == 4 and (
            source.labels is None or np.any(np.asarray(source.labels) == "healthy")):
        # What edged-cloud monitor compares the fleet's input sketches against
        # (docs/cloud.md, "monitor"): the healthy held-out windows' newest rows.
        from edged_cloud.monitor.baseline import monitoring_section

        manifest["monitoring"] = monitoring_section(source.validation, source.labels)
    limits = shadow_limits(source, shadow or {})
    if limits is not None:
        manifest["shadow"] = limits
    with tempfile.TemporaryDirectory(prefix="edged-package-") as tmp:
        stage = Path(tmp) / "model"
        stage.mkdir()
        shutil.copyfile(source.model, stage / source.model.name)
        write_golden(stage / "golden.npz", inputs, outputs)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        try:
            build_bundle(stage, out, private_key, kid)
        except ModelError as exc:
            raise BadInput(str(exc)) from None
        try:
            slot = extract_bundle(out, Path(tmp) / "slot")
            checked = verify_bundle(slot, TrustStore.from_keys(private_key.public_key()),
                                    installed_version=installed_version, expect=expect)
        except BundleError as exc:
            out.unlink(missing_ok=True)
            raise CloudToolError(f"the device's verifier refuses the bundle (removed): "
                                 f"{exc}") from None
    return {"bundle": str(out), "sha256": sha256_file(out), "bytes": out.stat().st_size,
            "name": checked.name, "version": checked.version, "key_id": kid,
            "golden_pairs": int(len(inputs)), "files": dict(checked.files),
            "shadow": limits, "verified": True,
            "installed_version": installed_version}

